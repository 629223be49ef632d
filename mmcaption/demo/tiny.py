"""Tiny backbones in Hugging Face format, for the offline demo and the tests.

They are saved to disk and loaded back through the same ``from_pretrained`` path (and the same
4-bit quantization) as ``microsoft/phi-2`` and ``openai/clip-vit-base-patch32``: a Phi causal LM,
a CLIP vision tower with its image processor, and a byte-level BPE tokenizer trained on the text it
will see, with Phi-2's ``<|endoftext|>`` as its only special token.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    DataCollatorWithFlattening,
    PhiConfig,
    PhiForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers import (
    CLIPImageProcessorPil as CLIPImageProcessor,
)

from mmcaption.collate import collate
from mmcaption.demo.synthetic import SHAPES, Scene, captions_for, draw_scene, language_sequences, random_scene
from mmcaption.folders import as_umask_allows
from mmcaption.model.backbones import fuse_gelu
from mmcaption.model.optim import adamw
from mmcaption.terminal import draws_bars

END_OF_TEXT = "<|endoftext|>"


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE tokenizer (as Phi-2's) trained on ``corpus``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=END_OF_TEXT
    )


def build_language_model(
    vocab_size: int, eos_token_id: int, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4, seed: int = 0
) -> PhiForCausalLM:
    torch.manual_seed(seed)
    config = PhiConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=256,
        partial_rotary_factor=0.4,  # as Phi-2
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )
    return PhiForCausalLM(config)


def build_vision_model(
    image_size: int = 64, patch_size: int = 16, hidden_size: int = 64, num_layers: int = 2, seed: int = 0
) -> tuple[CLIPVisionModel, CLIPImageProcessor]:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPVisionModel(config), processor


def steps_bar(steps: int, name: str, every_seconds: float = 60.0) -> Iterable[int]:
    """``range(steps)`` with a progress bar on a terminal; in a log file, a line every ``every_seconds`` (the
    backbones' pretraining sat silent in a logged demo for 18 minutes on a busy machine)."""
    if draws_bars():  # a terminal that says its width (Colab's ! says 0 columns: lines there, as in a log)
        yield from tqdm(range(steps), desc=name, unit="step", leave=False)
        return
    last = time.monotonic()
    for step in range(steps):
        yield step
        if time.monotonic() - last >= every_seconds:
            last = time.monotonic()
            print(f"  {name}: step {step + 1}/{steps}", flush=True)


def warmup_share(steps: int, share: float) -> float:
    """The warm-up share of a one-cycle schedule, at least two steps long (OneCycleLR divides by the
    length of each phase: a share below two steps, as 5% of 20 steps, is a division by zero)."""
    if steps < 4:
        raise ValueError(f"pretraining needs at least 4 steps (or 0 to skip it), not {steps}")
    return max(share, 2 / steps)


def packed_batch(sequences: list[list[int]]) -> dict[str, torch.Tensor]:
    """``sequences`` as one row without padding (transformers' ``DataCollatorWithFlattening``): positions
    restart at each sequence and its first token is not predicted from the previous one. With the cache
    off, the model's attention mask keeps each sequence to itself, so a sequence learns as if alone."""
    return {**DataCollatorWithFlattening(return_tensors="pt")([{"input_ids": ids} for ids in sequences]), "use_cache": False}


def pretrain_language_model(
    model: PhiForCausalLM, sequences: list[list[int]], steps: int = 1000,
    batch_size: int = 32, learning_rate: float = 3e-3, seed: int = 0,
) -> list[float]:
    """Text-only next-token training of a tiny LM on ``sequences``; returns the loss per step.

    Phi-2 knows English before the caption stage; this gives the tiny LM the same head start on the
    demo's language, so the multimodal stages, which keep it frozen, only have to learn to see.
    """
    generator = torch.Generator().manual_seed(seed)
    fuse_gelu(model)  # the same function as one op; the saved config still says gelu_new, as Phi-2's does
    optimizer = adamw(model.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=warmup_share(steps, 0.05))
    model.train()
    losses = []
    # Random batches, not length-grouped ones: grouped batches (each all captions or all conversations)
    # cut the padding but left the instruct stage slower to start (exact match at its step 50: 0.54-0.59, not 0.68).
    # Packed into one row instead of padded to the longest: short captions beside long conversations
    # left two thirds of a padded batch padding, and a step took twice as long.
    for _ in steps_bar(steps, "tiny language model: text-only pretraining"):
        picks = torch.randint(len(sequences), (batch_size,), generator=generator).tolist()
        loss = model(**packed_batch([sequences[i] for i in picks])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def train_clip_contrastively(
    tokenizer: PreTrainedTokenizerFast, processor: CLIPImageProcessor, steps: int = 300, batch_size: int = 64,
    learning_rate: float = 2e-3, seed: int = 0, image_size: int = 64, patch_size: int = 16, hidden_size: int = 64,
    hard_negatives: bool = False,
) -> tuple[CLIPModel, list[float]]:
    """A tiny CLIP trained as CLIP was - image-text contrastive loss - on freshly drawn synthetic
    scenes and one caption each (never the demo's train or val images); returns it and its losses.

    Like CLIP ViT-B/32 for COCO, its image tokens then carry what captions talk about (colour,
    shape, position, count), learnt without the captioner; the captioner keeps it frozen.

    With ``hard_negatives``, half of each batch are twins of the other half with one shape changed (or
    the two shapes of a relation swapped), as in NegCLIP: contrastive training with random batches
    alone barely needs exact shapes (colour and layout already tell most captions apart), and the
    demo's captioner then confused triangles, diamonds and circles.
    """
    torch.manual_seed(seed)
    rng = random.Random(f"{seed}-clip")
    vision = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=2,
                              num_attention_heads=4, image_size=image_size, patch_size=patch_size)
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=hidden_size))
    optimizer = adamw(model.parameters(), lr=learning_rate, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=warmup_share(steps, 0.1))
    losses = []
    model.train()
    for _ in steps_bar(steps, "tiny CLIP: contrastive pretraining"):
        if hard_negatives:  # half the batch: each scene's twin with one shape changed
            scenes = [random_scene(rng) for _ in range(batch_size // 2)]
            scenes += [shape_twin(scene, rng) for scene in scenes]
        else:
            scenes = [random_scene(rng) for _ in range(batch_size)]
        images = [draw_scene(scene, image_size, rng) for scene in scenes]
        captions = [captions_for(scene, rng, n=1)[0] for scene in scenes]
        ids = [torch.tensor([*i, tokenizer.eos_token_id]) for i in tokenizer(captions, add_special_tokens=False)["input_ids"]]
        batch = collate([{"input_ids": i} for i in ids], tokenizer.eos_token_id)
        pixel_values = drawn_pixel_values(images, processor)
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixel_values,
                     return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return model.eval(), losses


def drawn_pixel_values(images: list, processor: CLIPImageProcessor) -> torch.Tensor:
    """What ``processor(images)`` gives for images drawn at the tower's size (its resize and crop
    change nothing there): rescaled and normalised as one batch, 5x faster than the processor's
    image-by-image path, which took a quarter of the tiny CLIP's training time."""
    pixels = torch.from_numpy(np.stack([np.asarray(image, dtype=np.float32) for image in images])).permute(0, 3, 1, 2)
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    return (pixels * processor.rescale_factor - mean) / std


def shape_twin(scene: Scene, rng: random.Random) -> Scene:
    """The same scene with one object's shape changed (for a relation, the two shapes swapped when they
    differ): a hard negative that only the shapes tell apart."""
    if scene.relation is not None and scene.shape != scene.other_shape and rng.random() < 0.5:
        return replace(scene, shape=scene.other_shape, other_shape=scene.shape)
    if scene.relation is not None and rng.random() < 0.5:
        return replace(scene, other_shape=rng.choice([s for s in SHAPES if s != scene.other_shape]))
    return replace(scene, shape=rng.choice([s for s in SHAPES if s != scene.shape]))


def save_tiny_backbones(
    directory: str | Path,
    corpus: Iterable[str],
    seed: int = 0,
    lm_hidden_size: int = 128,
    lm_layers: int = 4,
    pretrain_steps: int = 0,
    clip_steps: int = 0,
) -> tuple[Path, Path]:
    """Write a tiny language model (with its tokenizer) and a tiny CLIP vision tower (with its image
    processor) under ``directory``; returns their two folders. With ``pretrain_steps``, the language
    model is first taught the demo's language (:func:`pretrain_language_model`); with ``clip_steps``,
    the vision tower comes from a tiny CLIP trained contrastively (:func:`train_clip_contrastively`),
    else it is random."""
    directory = Path(directory)
    language_dir, vision_dir = directory / "language_model", directory / "vision_model"
    tokenizer = build_tokenizer(corpus)
    language_model = build_language_model(
        len(tokenizer), tokenizer.eos_token_id, hidden_size=lm_hidden_size, num_layers=lm_layers, seed=seed
    )
    if pretrain_steps:
        losses = pretrain_language_model(
            language_model, language_sequences(tokenizer, seed), steps=pretrain_steps, seed=seed
        )
        (directory / "language_pretraining.json").parent.mkdir(parents=True, exist_ok=True)
        (directory / "language_pretraining.json").write_text(json.dumps({"steps": pretrain_steps, "losses": losses}))
    language_model.save_pretrained(language_dir)
    tokenizer.save_pretrained(language_dir)
    if clip_steps:
        processor = build_vision_model(seed=seed)[1]
        clip, clip_losses = train_clip_contrastively(tokenizer, processor, steps=clip_steps, seed=seed, hard_negatives=True)
        clip.save_pretrained(vision_dir)  # a full CLIP checkpoint, as openai/clip-vit-base-patch32 is
        (directory / "clip_pretraining.json").write_text(json.dumps({"steps": clip_steps, "losses": clip_losses}))
    else:
        vision_model, processor = build_vision_model(seed=seed)
        vision_model.save_pretrained(vision_dir)
    processor.save_pretrained(vision_dir)
    for folder in (language_dir, vision_dir):  # safetensors writes its files private: a teammate could not load them
        as_umask_allows(folder)
    return language_dir, vision_dir
