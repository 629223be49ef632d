"""`mmcaption fit` on two CPU processes (DDP over gloo): each process trains on a disjoint share of
every global batch, the losses match a single process running the same global batch, and one set of
checkpoints is written."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from mmcaption.demo import prepare_demo_assets

from .conftest import REPO, run_in_process

DEMO_CONFIG = str(REPO / "configs" / "demo" / "caption.yaml")
GLOBAL_BATCH = 8
STEPS = 6


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_together(commands: list[list[str]], cwd: Path, timeout: float = 600) -> list[str]:
    """Runs ``commands`` at once (a run's processes, or one run), each in a session of its own with its output in
    files (pipes read one after another can fill and stall a process the others wait for), and returns each one's
    stdout + stderr. One still running after ``timeout`` seconds is stopped with SIGABRT, on which Python's fault
    handler prints where every thread of every process of it stood, and the test fails with that (a hang said no
    more than "timed out")."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), PYTHONFAULTHANDLER="1")
    logs = [cwd / f"run-{time.monotonic_ns()}-{i}.log" for i in range(len(commands))]
    runs = []
    for command, log in zip(commands, logs):
        with open(log, "w") as out:
            runs.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + timeout
    while any(run.poll() is None for run in runs) and time.monotonic() < deadline:
        time.sleep(0.5)
    hung = [run for run in runs if run.poll() is None]
    for run in hung:
        os.killpg(run.pid, signal.SIGABRT)
    for run in hung:
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    outputs = [log.read_text(errors="replace") for log in logs]
    for log in logs:
        log.unlink()
    if hung:
        pytest.fail(f"{' '.join(commands[0][2:6])}... still running after {timeout:.0f} s; where it stood:\n"
                    + "\n".join(output[-6000:] for output in outputs))
    for run, output in zip(runs, outputs):
        assert run.returncode == 0, output[-3000:]
    return outputs


def fit(workdir: Path, name: str, devices: int, nodes: int = 1, max_steps: int = STEPS, resume: tuple[str, ...] = ()) -> str:
    """``mmcaption fit`` on ``devices`` processes, or with ``nodes`` > 1 as that many one-process
    "nodes" on this machine, each started by torchrun as on a cluster (its own node rank, one master); ``resume``:
    ``--ckpt_path`` and its checkpoint. Returns the output of its first process. One process is this one."""
    processes = devices * nodes
    overrides = {
        "trainer": {
            "accelerator": "cpu", "devices": devices, "num_nodes": nodes, "strategy": "ddp" if processes > 1 else "auto",
            "max_steps": max_steps, "val_check_interval": 3, "limit_val_batches": 1, "check_val_every_n_epoch": None,
            "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(workdir / f"checkpoints-{name}"), "monitor": "val/loss", "save_last": True}},
                {"class_path": "tests.recording.RecordSteps",
                 "init_args": {"path": str(workdir / f"{name}-rank{{rank}}.jsonl")}},
            ],
        },
        "model": {"config": {"lora_dropout": 0.0}},  # no random masks: the two runs must compute the same thing
        "data": {"init_args": {"batch_size": GLOBAL_BATCH // processes, "num_workers": 1, "val_caption_images": 4}},
    }
    config = workdir / f"{name}.yaml"
    config.write_text(yaml.safe_dump(overrides))
    fit_command = ["-m", "mmcaption", "fit", "--config", DEMO_CONFIG, "--config", str(config), *resume]
    if processes == 1:  # in this process: its imports are done
        status, said = run_in_process(fit_command[2:], workdir)
        assert status == 0, said[-3000:]
        return said
    if nodes == 1:
        commands = [[sys.executable, *fit_command]]
    else:
        port = free_port()
        commands = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--node_rank", str(node),
                     "--nproc_per_node", str(devices), "--master_addr", "127.0.0.1", "--master_port", str(port),
                     *fit_command] for node in range(nodes)]
    return run_together(commands, workdir)[0]


def steps(path: Path) -> dict[int, dict]:
    return {row["step"]: row for row in map(json.loads, path.read_text().splitlines())}


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_or_two_nodes_matches_one_process_with_the_same_global_batch(tmp_path):
    prepare_demo_assets(tmp_path / "demo_data", train_images=16, val_images=4, pretrain_steps=0, clip_steps=0)
    fit(tmp_path, "single", devices=1)
    fit(tmp_path, "ddp", devices=2)
    check_two_processes_match_one(tmp_path, "ddp")
    # resumed mid-epoch on one process with the same 8 samples a step (a machine with fewer GPUs): it was refused, "trained
    # on other data or batches". The rest of the epoch's 80 samples (16 images, 5 captions each) follow, none again
    said = fit(tmp_path, "one", devices=1, max_steps=10, resume=("--ckpt_path", "checkpoints-ddp/last.ckpt"))
    assert ("resumes with other batch settings (batch_size 4 -> 8, devices 2 -> 1): the rest of its epoch 1 is the same 8 "
            "samples an optimizer step, in the same order, from sample 48 of 80") in said, said[-3000:]
    resumed = steps(tmp_path / "one-rank0.jsonl")
    assert sorted(resumed) == [7, 8, 9, 10]
    epoch = [sample for rank in (0, 1) for row in steps(tmp_path / f"ddp-rank{rank}.jsonl").values() for sample in row["samples"]]
    epoch += [sample for row in resumed.values() for sample in row["samples"]]
    assert len(epoch) == len(set(epoch)) == 80
    # validate on two processes writes the results of both processes' images (it crashed at the end: a rank-0-only
    # call of trainer.log_dir, which every process must make), each image once: 3 images do not divide between 2
    # processes, and Lightning's sampler gave one of them twice (4 images scored, an image id twice in the predictions)
    def validate(images: int) -> None:
        run_together([[sys.executable, "-m", "mmcaption", "validate", "--config", DEMO_CONFIG, "--ckpt_path", "checkpoints-ddp/last.ckpt",
             "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.limit_val_batches", "1",
             "--trainer.enable_progress_bar", "false", "--data.init_args.val_caption_images", str(images),
             "--data.init_args.num_workers", "0"]], tmp_path)

    validate(3)
    (results,) = tmp_path.glob("val-*.results.json")
    results = json.loads(results.read_text())
    assert results["images"] == 3 and results["references"] == 15
    predictions = [json.loads(line)["image_id"] for line in (tmp_path / results["predictions"]).read_text().splitlines()]
    assert sorted(predictions) == sorted(set(predictions)) and len(predictions) == 3
    assert predictions == sorted(predictions)  # in the split's order (by process, it was 1st, 3rd, 2nd)
    # limit_val_batches 1 is each process's whole share here (it was said to cut the split): the first 3 images are what is
    # left out of the 4 (the wording of a limit per process that cuts: tests/test_evaluation.py)
    assert results["limited_by"] == "data.val_caption_images 3 (of the split's 4 images; CIDEr's document frequencies come from those scored)"
    # fewer images than processes: Lightning's sampler repeats one for the idle process; it is scored once (was twice)
    validate(1)
    (results,) = [json.loads(p.read_text()) for p in tmp_path.glob("val-*.results.json") if json.loads(p.read_text())["images"] != 3]
    assert results["images"] == 1 and results["references"] == 5
    # predict on two processes: their shares put together in the output asked for, in the input's order, summed up as
    # one process's (it wrote captions.rank0.jsonl and captions.rank1.jsonl, and no captions.jsonl)
    (predict,) = run_together([[sys.executable, "-m", "mmcaption", "predict", "--config", DEMO_CONFIG, "--config", str(REPO / "configs/predict/captions.yaml"),
         "--ckpt_path", "checkpoints-ddp/last.ckpt", "--data.images", "demo_data/coco/val2017", "--data.output", "captions.jsonl",
         "--data.num_workers", "0", "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false"]], tmp_path)
    assert "4 rows -> captions.jsonl (the shares of 2 processes, put together)" in predict
    rows = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    images = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "demo_data/coco/val2017").iterdir())
    assert [Path(row["image"]).name for row in rows] == [Path(image).name for image in images] and all(r["caption"] for r in rows)
    summary = json.loads((tmp_path / "captions.jsonl.summary.json").read_text())
    assert summary["rows"] == 4 and summary["processes"] == 2 and "interrupted" not in summary
    assert sorted(p.name for p in tmp_path.glob("captions*")) == ["captions.jsonl", "captions.jsonl.summary.json"]
    # CircularEval on two processes: a question's rotations are answered by both, and judged once put together (it was
    # refused: "one process must answer")
    run_together([[sys.executable, "-m", "mmcaption", "predict", "--config", DEMO_CONFIG, "--config", str(REPO / "configs/predict/multiple_choice.yaml"),
         "--ckpt_path", "checkpoints-ddp/last.ckpt", "--data.csv_file", "demo_data/choice_val2017.csv", "--data.circular", "true",
         "--data.output", "choices.csv", "--data.num_workers", "0", "--trainer.devices", "2", "--trainer.strategy", "ddp",
         "--trainer.enable_progress_bar", "false"]], tmp_path)
    with open(tmp_path / "choices.csv", newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    with open(tmp_path / "demo_data/choice_val2017.csv", newline="", encoding="utf-8-sig") as handle:
        questions = list(csv.DictReader(handle))
    assert len(rows) == 4 * len(questions) and [r["Question"] for r in rows[::4]] == [q["Question"] for q in questions]
    right = [all(r["correct"] == "True" for r in rows[i:i + 4]) for i in range(0, len(rows), 4)]
    summary = json.loads((tmp_path / "choices.csv.summary.json").read_text())
    assert (summary["circular_questions"], summary["circular_correct"]) == (len(questions), sum(right))
    # --trainer.num_nodes 2: two one-process "nodes" started by torchrun, as a cluster would
    fit(tmp_path, "nodes", devices=1, nodes=2)
    check_two_processes_match_one(tmp_path, "nodes")


def check_two_processes_match_one(tmp_path: Path, name: str) -> None:
    single = steps(tmp_path / "single-rank0.jsonl")
    ranks = [steps(tmp_path / f"{name}-rank{rank}.jsonl") for rank in (0, 1)]
    assert sorted(single) == sorted(ranks[0]) == sorted(ranks[1]) == list(range(1, STEPS + 1))
    seen = [Counter(), Counter()]
    for step in range(1, STEPS + 1):
        shares = [Counter(ranks[rank][step]["samples"]) for rank in (0, 1)]
        assert all(sum(share.values()) == GLOBAL_BATCH // 2 for share in shares)
        # the two processes split the single process's global batch between them
        assert shares[0] + shares[1] == Counter(single[step]["samples"]), step
        for rank in (0, 1):
            seen[rank] += shares[rank]
        # both report the global batch's loss, equal to the single process's
        assert ranks[0][step]["loss"] == pytest.approx(ranks[1][step]["loss"], rel=1e-6)
        assert ranks[0][step]["loss"] == pytest.approx(single[step]["loss"], rel=2e-3), step
    assert not set(seen[0]) & set(seen[1])  # disjoint shards over the whole run

    # one set of checkpoints, written once (by rank 0), identical in name to the single process's
    names = sorted(p.name for p in (tmp_path / f"checkpoints-{name}").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "checkpoints-single").iterdir())
    assert "last.ckpt" in names and len(names) == 2
    ddp, one = (torch.load(tmp_path / f"checkpoints-{n}" / "last.ckpt", weights_only=True) for n in (name, "single"))
    assert ddp["global_step"] == one["global_step"] == STEPS
    assert len(ddp["random_states"]) == 2  # each process's generators, for an exact resume
    # The trained tensors agree. AdamW divides each gradient by its own running magnitude, so an element
    # whose gradient is ~0 (where bf16 rounding of the 4-bit matmuls decides its sign) can step
    # differently in the two runs: checked per tensor as a whole and for 99.5% of its elements.
    for key, value in one["state_dict"].items():
        other = ddp["state_dict"][key]
        assert (other - value).norm() <= 1e-2 * value.norm(), key
        assert torch.isclose(other, value, rtol=2e-2, atol=2e-4).float().mean() >= 0.995, key


RACE = """
import sys, os, time
from mmcaption.data import CaptionDataModule
original = CaptionDataModule.write_split
def write_split(self, split, folder):
    with open(sys.argv[4], "a") as log:
        log.write(f"{os.getpid()} {split}\\n")
    time.sleep(1)  # long enough for the other process to arrive while this one builds
    return original(self, split, folder)
CaptionDataModule.write_split = write_split
ready = f"{sys.argv[4]}.ready"
open(f"{ready}.{os.getpid()}", "w").close()  # both processes imported everything: start together
while len(__import__("glob").glob(f"{ready}.*")) < 2:
    time.sleep(0.05)
dm = CaptionDataModule(data_dir=sys.argv[1], tokenizer=sys.argv[2], image_processor=sys.argv[3], cache_image_features=True,
                       vision_feature_layer=-2, batch_size=4, num_workers=0)
dm.prepare_data()
dm.setup("fit")
print(len(dm.datasets[dm.stage_splits()["train"]]))
"""


def test_two_ranks_starting_together_preprocess_once_and_both_use_it(backbones, coco_root, tmp_path):
    """Two nodes of a run on one shared disk (or two runs started together) both call prepare_data:
    one builds each split and its feature cache, the other waits and reuses them."""
    coco = Path(shutil.copytree(coco_root, tmp_path / "coco"))
    log = tmp_path / "builds.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-c", RACE, str(coco), str(backbones[0]), str(backbones[1]), str(log)]
    ranks = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], [err[-2000:] for _, err in outputs]
    builds = log.read_text().split()
    assert sorted(builds[1::2]) == ["train2017", "val2017"], builds  # each split built once, not once per rank
    assert outputs[0][0] == outputs[1][0] and int(outputs[0][0]) > 0  # both read the same training set
    assert any("waiting for another process to finish preprocessing split" in err for _, err in outputs)
    assert not list((coco / "preprocessed").glob(".*.partial"))  # no second, abandoned build


RESUMES = """
import sys
from pathlib import Path
from types import SimpleNamespace
import torch.distributed as dist
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from mmcaption.callbacks import ResumableStop
from mmcaption.errors import ResumeError
from mmcaption.resume_checks import check_same_resume, resuming_from
rank, folder = int(sys.argv[1]), Path(sys.argv[2])
node = folder / f"node{rank}"  # each node's own disk: the first process saved, the other's folder holds nothing
node.mkdir()
saved = node / "last.ckpt"
if rank == 0:
    saved.write_bytes(b"saved at step 8")
trainer = Trainer(accelerator="cpu", strategy="ddp", devices=1, num_nodes=2, max_steps=1, logger=False,
                  enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                  default_root_dir=node, callbacks=[ResumableStop()])
resuming_from(trainer, str(saved) if rank == 0 else None)  # as the command resolves its ckpt_path on each node
try:
    trainer.fit(BoringModel(), ckpt_path=str(saved) if rank == 0 else None)
    print("went on")
except ResumeError as error:
    print(error)
if not dist.is_initialized():
    dist.init_process_group("gloo", rank=rank, world_size=2)
saved.write_bytes(b"saved at step 4" if rank else b"saved at step 8")  # one name and size: two saves
try:
    check_same_resume(SimpleNamespace(world_size=2), str(saved))
    print("went on")
except ResumeError:
    print("refused")
saved.write_bytes(b"saved at step 8")  # copied to each node: the same checkpoint
check_same_resume(SimpleNamespace(world_size=2), str(saved))
print("same")
# a script's own Trainer.fit (no resuming_from): Lightning says its ckpt_path once each process has read its own
own = Trainer(accelerator="cpu", strategy="ddp", devices=1, num_nodes=2, max_steps=2, logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False, default_root_dir=node, callbacks=[ResumableStop()])
try:
    own.fit(BoringModel(), ckpt_path=sys.argv[3] if rank == 0 else None)
    print("went on")
except ResumeError as error:
    print("own fit refused" if str(error).startswith("the processes of this fit would resume from different") else error)
dist.destroy_process_group()
"""


def test_processes_that_would_resume_from_different_checkpoints_are_all_refused(tmp_path):
    """A requeued 2-node SLURM job with its checkpoint folder on each node's own disk: the first node resumed from its
    last save, the other (which saves nothing) started afresh, and both waited on one another for ever."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29400 + os.getpid() % 500), WORLD_SIZE="2",
               LOCAL_RANK="0", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    from lightning.pytorch import Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel

    trained = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, default_root_dir=tmp_path)
    trained.fit(BoringModel())
    trained.save_checkpoint(tmp_path / "own.ckpt")  # a real one: the first process reads it before the fit starts
    ranks = [subprocess.Popen([sys.executable, "-c", RESUMES, str(rank), str(tmp_path), str(tmp_path / "own.ckpt")],
                              env={**env, "NODE_RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    outputs = [rank.communicate(timeout=240) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], [err[-2000:] for _, err in outputs]
    for out, _ in outputs:  # every process refuses as the fit starts (one alone would leave the other waiting)
        refused, other_save, same, own_fit = out.splitlines()[-4:]
        assert refused.startswith("the processes of this fit would resume from different checkpoints (process 0 (") and \
            f"): {tmp_path / 'node0' / 'last.ckpt'}; process 1 (" in refused and "): none, it starts afresh)" in refused
        assert "Put the checkpoint folder (ModelCheckpoint's dirpath, or trainer.default_root_dir) on a disk every " \
               "node shares" in refused
        assert (other_save, same, own_fit) == ("refused", "same", "own fit refused")  # the last: it hung
