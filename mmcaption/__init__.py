"""mmcaption: teach a language model to see - Phi-2 (4-bit) + CLIP + gated cross-attention + LoRA,
trained with PyTorch Lightning."""

__version__ = "0.1.0"

__all__ = ["Captioner"]


def __getattr__(name: str):
    # Imported on first use: `mmcaption --help` should not pay for loading the model stack twice.
    if name == "Captioner":
        from mmcaption.inference import Captioner

        return Captioner
    raise AttributeError(name)
