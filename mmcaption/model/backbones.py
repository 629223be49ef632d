"""The one factory of pretrained pieces: the (quantized) language model with LoRA, the vision tower,
the tokenizer and the image processor, all by ``from_pretrained`` (a hub id or a local folder).

The data side gets the tokenizer and image processor from here too (the CLI hands it the names), so a
model and its data can never disagree on them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PureWindowsPath

import bitsandbytes as bnb
import torch
from huggingface_hub import is_offline_mode, try_to_load_from_cache
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

from mmcaption.errors import ConfigError, unexpanded_variable
from mmcaption.model.card import HUB_ID, mistyped_folder
from mmcaption.model.config import DType, Quantization
from mmcaption.resources import permission_message


class BackboneNotFoundError(ConfigError):
    """A backbone that is neither a local folder nor in the Hugging Face cache, and cannot be downloaded."""


def download_hint(name: str) -> str:
    return (f"download it first (`hf download {name}`, or `huggingface-cli download {name}` with an older "
            "huggingface_hub), or set it to a local folder")


def check_device(device: str | torch.device | None) -> None:
    """Refuse a device this machine does not have, or a name that is none, before anything loads."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"device {device!r} is not a device name: cpu, cuda, cuda:1, mps ({error})") from None
    kind, index = parsed.type, parsed.index
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available,
                 "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available()}.get(kind, lambda: True)
    if not available():
        raise ConfigError(f"device {device!r}: PyTorch sees no {kind} device on this machine (torch {torch.__version__}); "
                          "use cpu, or run it where there is one")
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to "
                          f"cuda:{torch.cuda.device_count() - 1}")


def check_backbone(name: str, setting: str) -> None:
    """Refuse, before anything loads, a backbone ``from_pretrained`` could not find: a local path that is
    not a model folder, or a hub id that is not in the Hugging Face cache while the hub is offline
    (``HF_HUB_OFFLINE=1``). Online, a hub id that is not cached is downloaded on first use."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "preprocessor_config.json").is_file():
            raise BackboneNotFoundError(f"{setting} {name} is not a saved model folder (no config.json in it)")
        return
    if is_local_path(name) or not (HUB_ID.fullmatch(name) or re.fullmatch(r"[\w.-]+", name)):  # '$HOME/x' (gpt2: one)
        where = "" if path.is_absolute() else f" (relative to the working directory, {Path.cwd()})"
        raise BackboneNotFoundError(f"{setting} {name}: no such folder{where}{unexpanded_variable(name)}")
    if near := mistyped_folder(name, "config.json"):
        raise BackboneNotFoundError(f"{setting} {name}: no such folder; did you mean {near}? (read as a Hub id, it is not "
                                    "in the Hugging Face cache)")
    if isinstance(try_to_load_from_cache(name, "config.json"), str) or not is_offline_mode():
        return
    raise BackboneNotFoundError(f"{setting} {name!r} is neither a local folder nor in the Hugging Face cache, and the hub "
                                f"is offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): {download_hint(name)}")


def check_backbones(language_model: str, vision_model: str, trained_from: str | None) -> None:
    """:func:`check_backbone` for both, refused together (a second run found the second moved backbone), saying that
    the checkpoint ``trained_from`` (``--ckpt_path`` or ``init_from``, when given) records the folders as they were."""
    problems = []
    for name, setting in ((language_model, "model.config.language_model"), (vision_model, "model.config.vision_model")):
        try:
            check_backbone(name, setting)
        except BackboneNotFoundError as error:
            problems.append(str(error))
    if problems and trained_from and any(": no such folder" in problem for problem in problems):
        problems[-1] += (f". Moved since? A checkpoint records its backbones' folders as they were when it trained, and "
                         f"{trained_from} is read with them unless the config gives others: give where they are now, "
                         "--model.config.language_model PATH --model.config.vision_model PATH")
    if problems:
        raise BackboneNotFoundError("; and ".join(problems))


def context_problem(name: str, max_length: object) -> str | None:
    """Why ``data.max_length`` cannot be trained: longer than the language model's context (its config's
    ``max_position_embeddings``), positions it never learned. Read from its config.json; nothing is loaded."""
    path = Path(name).expanduser()
    file = path / "config.json" if path.is_dir() else try_to_load_from_cache(name, "config.json")
    if not isinstance(max_length, int) or not isinstance(file, str | Path) or not Path(file).is_file():
        return None
    context = json.loads(Path(file).read_text(encoding="utf-8")).get("max_position_embeddings")
    if isinstance(context, int) and max_length > context:
        return (f"data.max_length {max_length} is longer than the language model's context ({name}: max_position_embeddings "
                f"{context}); it never learned the positions beyond: give at most {context}")
    return None


@contextmanager
def naming_backbone(name: str, what: str) -> Iterator[None]:
    """A backbone that cannot be found or downloaded fails with one message naming it, not transformers'
    traceback ending in a connection error."""
    try:
        yield
    except ValueError as error:  # transformers' "Unrecognized configuration class ..." and its 3,000 characters of models
        kind = re.search(r"configuration class <class '[\w.]+\.(\w+)Config'>", str(error))
        if kind is None:
            raise
        other = "vision model" if "language" in what else "language model"
        raise ConfigError(f"cannot load the {what} {name}: it is a {kind.group(1)} model. Is it the {other} "
                          "(language_model and vision_model the other way round)?") from None
    except OSError as error:
        if is_local_path(name) and not Path(name).expanduser().exists():  # not a hub id: downloading would not help
            raise BackboneNotFoundError(f"cannot load the {what} {name}: it is no folder (any more). "
                                        f"{moved_advice('it is', name)}") from error
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        folder = Path(name).expanduser()
        private = [p for p in folder.iterdir() if p.is_file() and not os.access(p, os.R_OK)] if folder.is_dir() else []
        if private:  # safetensors says "No such file" of a file it may not read
            raise BackboneNotFoundError(f"cannot load the {what} {name}: " + permission_message(
                private[0], "not readable by this user", "Ask its owner to let the group read it (chmod -R g+rX), or copy "
                "the folder")) from error
        if folder.is_dir():  # a local folder that lacks the files: there is nothing to download
            raise BackboneNotFoundError(
                f"cannot load the {what} {name}: the folder lacks its files ({first.rstrip('.')}). It holds "
                f"{', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'}: save them there too "
                "(processor.save_pretrained / tokenizer.save_pretrained), or copy them from where the model came from") from error
        raise BackboneNotFoundError(f"cannot load the {what} {name!r}: {first}. {download_hint(name).capitalize()}") from error


def moved_advice(where: str, link: str) -> str:
    """How to point a checkpoint or an export at backbones that are no longer where it recorded them."""
    return ("A checkpoint or an export records the folders of its backbones: give where " + where + " now (--language_model "
            "/ --vision_model of mmcaption-export, chat and the app; Captioner.from_pretrained's language_model= / "
            "vision_model=; --model.config.* of the CLI), put the folder back there, or link it (ln -s <where it is now> "
            f"{link})")


def check_backbone_folders(language_model: str, vision_model: str) -> None:
    """Both backbones' folders gone (a project moved, its backbones with it) said at once: the language model's was
    said, and the vision model's only on the next try."""
    gone = [name for name in (language_model, vision_model) if is_local_path(name) and not Path(name).expanduser().exists()]
    if len(gone) == 2:
        raise BackboneNotFoundError(f"cannot load the language model {language_model} nor the vision model {vision_model}: "
                                    f"neither is a folder (any more). {moved_advice('they are', '<where it was>')}")


def is_local_path(name: str) -> bool:
    """A backbone named by a path (``/...``, ``./...``, ``~/...``, ``a/b/c``; Windows' ``C:\\models\\phi-2``,
    ``\\\\nas\\models``, ``models\\phi-2``), not a hub id (``owner/name``): a Windows path was checked as a hub id, a traceback."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or bool(PureWindowsPath(name).drive)


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
    if quantization in ("nf4", "fp4") and torch_dtype(compute_dtype) == torch.bfloat16:  # int8 keeps float32
        unquantized_weights_to(model, torch.bfloat16)
    return fuse_gelu(model)


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
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
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
        return AutoImageProcessor.from_pretrained(name_or_path, **({} if is_torchvision_available() else {"backend": "pil"}))
