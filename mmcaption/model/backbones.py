"""The one factory of pretrained pieces: the (quantized) language model with LoRA, the vision tower,
the tokenizer and the image processor, all by ``from_pretrained`` (a hub id or a local folder).

The data side gets the tokenizer and image processor from here too (the CLI hands it the names), so a
model and its data can never disagree on them.
"""

from __future__ import annotations

import bitsandbytes as bnb
import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    BaseImageProcessor,
    BitsAndBytesConfig,
    CLIPVisionModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mmcaption.errors import ConfigError
from mmcaption.model.config import DType, Quantization


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``, refusing names that are not floating dtypes."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"unknown floating dtype {name!r}; use bfloat16, float16 or float32")
    return dtype


def quantization_config(quantization: Quantization, compute_dtype: DType) -> BitsAndBytesConfig | None:
    """The bitsandbytes config for a quantization choice (``None`` for ``"none"``)."""
    if quantization == "none":
        return None
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization in ("nf4", "fp4"):
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization,
            bnb_4bit_compute_dtype=torch_dtype(compute_dtype),
            bnb_4bit_use_double_quant=True,
            # FSDP needs the packed 4-bit storage in the dtype it shards; harmless otherwise.
            bnb_4bit_quant_storage=torch_dtype(compute_dtype),
        )
    raise ConfigError(f"unknown quantization {quantization!r}; use nf4, fp4, int8 or none")


def load_language_model(
    name_or_path: str,
    quantization: Quantization = "nf4",
    compute_dtype: DType = "bfloat16",
    device: torch.device | str | None = None,
) -> PreTrainedModel:
    """Load a causal language model, quantized with bitsandbytes unless ``quantization="none"``.

    The weights that stay unquantized (embeddings, norms, the output head) are kept in float32, as
    ``prepare_model_for_kbit_training`` would leave them anyway; without quantization the whole
    model loads in ``compute_dtype``.
    """
    config = quantization_config(quantization, compute_dtype)
    device_map = None if device is None else {"": torch.device(device)}
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path,
        quantization_config=config,
        dtype=torch.float32 if config is not None else torch_dtype(compute_dtype),
        device_map=device_map,
    )
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            # On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights for an inference-only
            # kernel at the first no-grad eval pass and keeps them so: training after a validation
            # epoch then fails (or loses gradients) and evaluation gives other numbers. One kernel
            # for training and evaluation; GPUs are unaffected.
            module.support_avx512bf16_for_cpu = False
    return model


def add_lora(
    language_model: PreTrainedModel,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str],
    gradient_checkpointing: bool = False,
) -> PeftModel:
    """Freeze the language model and add LoRA adapters, in the order that PEFT requires.

    Quantized models go through ``prepare_model_for_kbit_training`` first; new modules must be
    added only after ``get_peft_model``, which would otherwise freeze them.
    """
    gc_kwargs = {"use_reentrant": False}
    if getattr(language_model, "is_loaded_in_4bit", False) or getattr(language_model, "is_loaded_in_8bit", False):
        language_model = prepare_model_for_kbit_training(
            language_model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=gc_kwargs,
        )
    else:
        language_model.requires_grad_(False)
        if gradient_checkpointing:
            language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
            language_model.enable_input_require_grads()
    lora = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(language_model, lora)


def load_vision_model(name_or_path: str, device: torch.device | str | None = None) -> CLIPVisionModel:
    """Load a frozen CLIP vision tower (from a full CLIP checkpoint or a vision-only one)."""
    vision = CLIPVisionModel.from_pretrained(name_or_path, dtype=torch.float32)
    if device is not None:
        vision = vision.to(device)
    vision.requires_grad_(False)
    return vision.eval()


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The language model's tokenizer; like Phi-2's, it may have no pad token (padding is masked)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_image_processor(name_or_path: str) -> BaseImageProcessor:
    """The vision tower's image processor (resize, crop, normalise), as it was trained with."""
    return AutoImageProcessor.from_pretrained(name_or_path)
