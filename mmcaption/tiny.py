"""Tiny backbones in Hugging Face format, for the offline demo and the tests.

They are saved to disk and loaded back through the same ``from_pretrained`` path (and the same
4-bit quantization) as ``microsoft/phi-2`` and ``openai/clip-vit-base-patch32``: a Phi causal LM,
a CLIP vision tower with its image processor, and a byte-level BPE tokenizer trained on the text it
will see, with Phi-2's ``<|endoftext|>`` as its only special token.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    PhiConfig,
    PhiForCausalLM,
    PreTrainedTokenizerFast,
)

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


def save_tiny_backbones(
    directory: str | Path, corpus: Iterable[str], seed: int = 0, lm_hidden_size: int = 128, lm_layers: int = 4
) -> tuple[Path, Path]:
    """Write a tiny language model (with its tokenizer) and a tiny CLIP vision tower (with its image
    processor) under ``directory``; returns their two folders."""
    directory = Path(directory)
    language_dir, vision_dir = directory / "language_model", directory / "vision_model"
    tokenizer = build_tokenizer(corpus)
    language_model = build_language_model(
        len(tokenizer), tokenizer.eos_token_id, hidden_size=lm_hidden_size, num_layers=lm_layers, seed=seed
    )
    language_model.save_pretrained(language_dir)
    tokenizer.save_pretrained(language_dir)
    vision_model, processor = build_vision_model(seed=seed)
    vision_model.save_pretrained(vision_dir)
    processor.save_pretrained(vision_dir)
    return language_dir, vision_dir
