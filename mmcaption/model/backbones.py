"""The one factory of pretrained pieces: the (quantized) language model with LoRA, the vision tower,
the tokenizer and the image processor, all by ``from_pretrained`` (a hub id or a local folder).

The data side gets the tokenizer and image processor from here too (the CLI hands it the names), so a
model and its data can never disagree on them.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable

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
from transformers.activations import GELUTanh, NewGELUActivation
from transformers.utils import is_torchvision_available

from mmcaption.errors import ConfigError
from mmcaption.model.backbone_checks import BackboneNotFoundError, naming_backbone
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

    Without quantization the whole model loads in ``compute_dtype``. In 4-bit with bfloat16 compute, the
    weights that stay unquantized (embeddings, norms, output head, biases) are bfloat16 too, as without
    quantization (:func:`unquantized_weights_to`); with other compute dtypes, and in int8, float32.
    """
    config = quantization_config(quantization, compute_dtype)
    device_map = None if device is None else {"": torch.device(device)}
    with naming_backbone(name_or_path, "language model"):
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, trust_remote_code=False,  # a folder's own code is not run (transformers asked, on stdin)
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
            module.register_forward_pre_hook(input_in_autocast_dtype)
    if quantization in ("nf4", "fp4") and torch_dtype(compute_dtype) == torch.bfloat16:  # int8 keeps float32
        unquantized_weights_to(model, torch.bfloat16)
    return fuse_gelu(model)


def input_in_autocast_dtype(module: bnb.nn.Linear4bit, args: tuple) -> tuple | None:
    """A 4-bit layer's forward pre-hook: under autocast to its compute dtype, a float32 input is cast to it first, as
    autocast casts a ``torch.nn.Linear``'s input, so that the output is in that dtype too.

    bitsandbytes casts its output back to the input's dtype. On a GPU, autocast computes layer norms in float32, so
    the 4-bit q/k/v and fc1 layers after them returned float32 under bf16-mixed: the GELU then kept its float32 input
    for backward (4 x the width a token) and the MLP's float32 output made the residual stream float32 from the first
    layer on, where ``quantization: none`` keeps both in bfloat16. The matmul is unchanged: bitsandbytes casts the
    input to its compute dtype and computes in it either way."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        return None
    device = x.device.type
    if not torch.is_autocast_enabled(device) or torch.get_autocast_dtype(device) != module.compute_dtype:
        return None
    return (x.to(module.compute_dtype), *args[1:])


def unquantized_weights_to(model: PreTrainedModel, dtype: torch.dtype) -> None:
    """Cast a quantized model's unquantized weights to ``dtype`` (bfloat16); the 4-bit ones stay as they are.

    In float32 (as they load, and as ``prepare_model_for_kbit_training`` casts them), the embeddings
    make the residual stream float32, and with it every tensor the decoder keeps for backward that the
    4-bit matmuls do not compute, even under bf16-mixed. In bfloat16 the residual stream is bfloat16, and
    the embeddings and output head take half the memory (Phi-2: 0.5 GiB less). The norms follow too: on a
    GPU under bf16-mixed autocast computes them in float32 anyway, and a norm's float32 weights on a
    bfloat16 input outside autocast (generation) is a dtype mismatch for CUDA's LayerNorm; the whole
    model is then as ``quantization: none`` loads it. Not for float16, whose range a residual stream can
    overflow. The 4-bit weights were quantized from float32 before this.
    """
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype and not isinstance(param, bnb.nn.Params4bit):
            param.data = param.data.to(dtype)


def refuse_casting_packed_weights(model: torch.nn.Module, convert: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Refuse a cast (``model.half()``, ``.float()``, ``.to(dtype)``: :func:`~mmcaption.model.config.precision_problem` is
    the Trainer's ``*-true`` precisions, said before a run) that would
    change the dtype of ``model``'s 4-bit weights. bitsandbytes packs two of them a byte into a tensor of the compute
    dtype, and a cast converts those bytes as numbers: ``.half()`` of bfloat16 storage silently changes the model,
    ``.float()`` breaks it. transformers refuses this for its own models; a model that holds one bypasses that.
    ``convert``: what ``nn.Module._apply`` does to each tensor, tried on an empty one first."""
    packed = next((p for p in model.parameters() if isinstance(p, bnb.nn.Params4bit)), None)
    if packed is None:
        return
    try:
        cast = convert(torch.empty(0, dtype=packed.dtype)).dtype
    except Exception:  # noqa: BLE001 - a move to a device this machine lacks: refused as it is without the cast
        return
    if cast != packed.dtype:
        raise TypeError(f"this model's language model is quantized to 4 bits and computes in {packed.dtype}: a cast to {cast} "
                        "would convert its packed weights as numbers and ruin them. For another dtype, load it without "
                        "quantization: Captioner.from_pretrained(..., quantization='none'), or model.config.quantization none")


def fuse_gelu(model: torch.nn.Module) -> torch.nn.Module:
    """Swap transformers' ``NewGELUActivation`` (Phi-2's ``gelu_new``: GELU's tanh approximation written
    out as five elementwise ops, each keeping a tensor for backward) for ``GELUTanh``, the same function
    as one fused op (equal to float rounding: 5e-7 apart on inputs up to 10). The saved config still
    says ``gelu_new``. Measured on the demo's backbones: instruct steps 1.39x faster (2.53 -> 3.52/s),
    caption steps 1.15x."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(parent, name, GELUTanh())
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
        loaded = {name: param.dtype for name, param in language_model.named_parameters()}
        language_model = prepare_model_for_kbit_training(
            language_model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=gc_kwargs,
        )
        # It casts every unquantized weight to float32: the ones load_language_model keeps in bfloat16
        # (see unquantized_weights_to) go back, so that the residual stream stays bfloat16.
        for name, param in language_model.named_parameters():
            if param.dtype != loaded[name]:
                param.data = param.data.to(loaded[name])
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
    with warnings.catch_warnings():  # peft asks transformers by a deprecated name, on every load of the Python API
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(language_model, lora)


# What a full CLIP checkpoint holds besides the vision tower: unused here by design.
_CLIP_TEXT_SIDE = re.compile(r"^(text_model\.|text_projection\.|visual_projection\.|logit_scale$)")


class _LoadReportHidden(logging.Filter):
    """Drops transformers' LOAD REPORT (its table lists each of a full CLIP checkpoint's 168 text-tower
    keys at every load); :func:`load_vision_model` checks the loading information itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


class _FirstTimeOnly(logging.Filter):
    """Lets each message through once: bitsandbytes' int8 matmul says that it casts float32 inputs to float16
    at every call (hundreds of lines per generated caption)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        first = str(record.msg) not in self.seen
        self.seen.add(str(record.msg))
        return first


logging.getLogger("bitsandbytes.autograd._functions").addFilter(_FirstTimeOnly())


def load_vision_model(name_or_path: str, device: torch.device | str | None = None) -> CLIPVisionModel:
    """Load a frozen CLIP vision tower (from a full CLIP checkpoint or a vision-only one).

    A tower with weights missing from the checkpoint (or of other shapes) is refused: it would turn
    images into noise without a word. The text side of a full CLIP checkpoint is skipped silently."""
    report_logger = logging.getLogger("transformers.modeling_utils")
    hidden = _LoadReportHidden()
    report_logger.addFilter(hidden)
    try:
        with naming_backbone(name_or_path, "vision model"):
            vision, info = CLIPVisionModel.from_pretrained(name_or_path, dtype=torch.float32, output_loading_info=True)
    finally:
        report_logger.removeFilter(hidden)
    missing, mismatched = sorted(info.get("missing_keys") or []), sorted(map(str, info.get("mismatched_keys") or []))
    if missing or mismatched:
        raise ConfigError(f"vision model {name_or_path}: the checkpoint lacks {len(missing)} of the tower's weights "
                          f"(e.g. {missing[:3]}) and has {len(mismatched)} of other shapes (e.g. {mismatched[:3]}): "
                          "is it a CLIP model?")
    unexpected = sorted(k for k in info.get("unexpected_keys") or [] if not _CLIP_TEXT_SIDE.match(k))
    if unexpected:
        warnings.warn(f"vision model {name_or_path}: {len(unexpected)} weights of the checkpoint are not used, "
                      f"e.g. {unexpected[:3]}", stacklevel=2)
    if device is not None:
        vision = vision.to(device)
    vision.requires_grad_(False)
    return vision.eval()


TOKENIZER_PROBE = "a photo of a cat"


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The language model's tokenizer; like Phi-2's, it may have no pad token (padding is masked)."""
    with naming_backbone(name_or_path, "tokenizer of"):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    # a folder without tokenizer files (a model.save_pretrained() alone, a partial download) still loads:
    # transformers builds a tokenizer of one token that turns every caption into nothing
    if len(tokenizer) < 2 or not tokenizer(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]:
        raise BackboneNotFoundError(
            f"the tokenizer of {name_or_path} has {len(tokenizer)} token(s) and turns {TOKENIZER_PROBE!r} into no tokens: "
            "the model's folder has no tokenizer files (tokenizer.json, or vocab.json and merges.txt). Save the "
            "tokenizer there too (tokenizer.save_pretrained), or copy its files from where the model came from")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_image_processor(name_or_path: str) -> BaseImageProcessor:
    """The vision tower's image processor (resize, crop, normalise), as it was trained with."""
    # without torchvision transformers falls back to the PIL backend, and warns; ask for it instead
    with naming_backbone(name_or_path, "image processor of"):
        return AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=False,
                                                  **({} if is_torchvision_available() else {"backend": "pil"}))
