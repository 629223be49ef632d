"""Peak memory of the training loss and its backward: the plain loss vs the chunked one.

    python benchmarks/loss_memory.py [--batch_size 16] [--seq_len 512] [--width 2560] [--vocab 51200]

The defaults are an instruct batch at Phi-2's shapes. Each variant runs in a fresh process on the
CPU, in float32, from a random last hidden state (requires grad) and a frozen output head with bias,
as Phi-2's: the *plain* loss applies the head to the whole batch and takes ``F.cross_entropy`` of its
float32 logits (mmcaption's loss before the chunked one); the *chunked* loss is
``mmcaption.model.loss.chunked_cross_entropy``. Prints each one's peak resident memory above what
its inputs take, the ratio, and that both give the same loss and input gradient. ``--tiny`` runs
small shapes (a check on any machine).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_variant(variant: str, batch_size: int, seq_len: int, width: int, vocab: int) -> dict:
    import torch.nn.functional as F

    from mmcaption.model.loss import chunked_cross_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(width, vocab).requires_grad_(False)
    hidden = torch.randn(batch_size, seq_len, width, requires_grad=True)
    labels = torch.randint(vocab, (batch_size, seq_len))
    labels[:, : seq_len // 8] = -100  # a prompt, as the collators mask it
    before = peak_rss_mb()
    start = time.perf_counter()
    if variant == "plain":
        logits = head(hidden)[:, :-1].float()
        loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")
        del logits
    else:
        loss, _ = chunked_cross_entropy(hidden, head, labels)
    loss.backward()
    return {
        "variant": variant, "peak_mb": peak_rss_mb() - before, "seconds": time.perf_counter() - start,
        "loss": loss.item(), "grad_sum": hidden.grad.double().abs().sum().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--width", type=int, default=2560)
    parser.add_argument("--vocab", type=int, default=51200)
    parser.add_argument("--tiny", action="store_true", help="small shapes: a check that runs anywhere")
    parser.add_argument("--variant", choices=["plain", "chunked"], help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args()
    if args.tiny:
        args.batch_size, args.seq_len, args.width, args.vocab = 4, 256, 64, 8192
    shape = (args.batch_size, args.seq_len, args.width, args.vocab)
    if args.variant:
        print(json.dumps(run_variant(args.variant, *shape)))
        return

    results = {}
    for variant in ("plain", "chunked"):
        command = [sys.executable, __file__, "--variant", variant, "--batch_size", str(args.batch_size),
                   "--seq_len", str(args.seq_len), "--width", str(args.width), "--vocab", str(args.vocab)]
        results[variant] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    plain, chunked = results["plain"], results["chunked"]
    print(f"loss + backward at batch {args.batch_size} x {args.seq_len} tokens, width {args.width}, "
          f"vocab {args.vocab:,} (CPU, float32):")
    for result in (plain, chunked):
        print(f"  {result['variant']:<8} peak {result['peak_mb']:8.0f} MB above its inputs, {result['seconds']:6.1f} s")
    print(f"  memory ratio plain / chunked: {plain['peak_mb'] / max(chunked['peak_mb'], 1):.1f}x")
    same = abs(plain["loss"] - chunked["loss"]) <= 1e-5 * abs(plain["loss"]) and \
        abs(plain["grad_sum"] - chunked["grad_sum"]) <= 1e-4 * plain["grad_sum"]
    print(f"  same loss and gradient: {same} (loss {plain['loss']:.6g} vs {chunked['loss']:.6g})")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
