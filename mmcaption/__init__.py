"""mmcaption: teach a language model to see - Phi-2 (4-bit) + CLIP + gated cross-attention + LoRA,
trained with PyTorch Lightning."""

import logging

__version__ = "0.1.0"

# bitsandbytes warns at import, on CPUs with AVX512-BF16, that an optional kernel package is missing;
# its CPU path works without it and nothing in the message is for a user of mmcaption. Filtered before
# any part of mmcaption imports bitsandbytes, so that its other messages still show.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda record: "kernels-community" not in record.getMessage())

__all__ = ["Captioner", "MMCaptionError"]


def __getattr__(name: str):
    # Imported on first use: `mmcaption --help` should not pay for loading the model stack twice.
    if name == "Captioner":
        from mmcaption.inference import Captioner

        return Captioner
    if name == "MMCaptionError":  # what a caller's mistake raises (a service's 400)
        from mmcaption.errors import MMCaptionError

        return MMCaptionError
    raise AttributeError(name)
