"""mmcaption: teach a language model to see - Phi-2 (4-bit) + CLIP + gated cross-attention + LoRA,
trained with PyTorch Lightning."""

__version__ = "0.1.0"
