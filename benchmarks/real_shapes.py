"""Random-weight backbones at Phi-2's and CLIP ViT-B/32's shapes (or tiny ones), written in Hugging Face
format so that the benchmarks load them through mmcaption's own ``from_pretrained`` path."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, PhiConfig, PhiForCausalLM

# microsoft/phi-2's config.json: its residual dropout (0.1, applied twice a layer) is part of what training keeps
PHI2 = dict(vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32,
            partial_rotary_factor=0.4, max_position_embeddings=2048, resid_pdrop=0.1, embd_pdrop=0.0, attention_dropout=0.0,
            bos_token_id=50256, eos_token_id=50256)
CLIP_B32 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=32)
TINY_PHI = dict(vocab_size=512, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                partial_rotary_factor=0.5, max_position_embeddings=1024)
TINY_CLIP = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=16)


def write_backbones(folder: Path, tiny: bool, device: str = "cpu") -> tuple[Path, Path]:
    """The language model (saved in bfloat16, as Phi-2 is published) and the vision tower under ``folder``."""
    torch.manual_seed(0)
    language, vision = folder / "language_model", folder / "vision_model"
    with torch.device(device):
        PhiForCausalLM(PhiConfig(**(TINY_PHI if tiny else PHI2))).to(torch.bfloat16).save_pretrained(language)
        CLIPVisionModel(CLIPVisionConfig(**(TINY_CLIP if tiny else CLIP_B32))).save_pretrained(vision)
    return language, vision
