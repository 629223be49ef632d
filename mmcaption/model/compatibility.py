"""Whether the backbones and the model settings fit together, said before anything loads.

Another language model than Phi-2 (a Llama, a GPT-2), another vision tower than CLIP, a tokenizer grown past the
model's embeddings or settings beyond the backbones' layers all failed late: after the data was preprocessed (hours at
COCO's scale), in a traceback, or not at all (LoRA silently left out of a target that matches nothing). Read from the
backbones' config files and a model built on the meta device (no weights, nothing downloaded: a backbone that is not
on this machine is not checked here).
"""

from __future__ import annotations

from contextlib import suppress

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.pytorch_utils import Conv1D
from transformers.utils import is_torchvision_available

from mmcaption.errors import ConfigError
from mmcaption.model.backbone_checks import check_backbone_folders, naming_backbone
from mmcaption.model.config import MultimodalConfig

CLIP_TYPES = ("clip", "clip_vision_model")  # a full CLIP checkpoint's config.json, a vision-only one's
LAYOUTS = "Phi, Llama, Mistral, Qwen2, Phi-3, Gemma, ..."  # decoder layers at model.layers, where cross-attention goes


def structure_problem(config: MultimodalConfig, prefix: str = "model.config.", trained: bool = False) -> str | None:
    """Why ``config``'s backbones and settings cannot make a model (one line naming the setting, what is wrong and what
    to write instead), or ``None``. ``prefix``: how the settings are named to the user. ``trained``: the settings of
    weights trained already (a resume, a checkpoint or an export loaded), whose LoRA targets some of which matched
    nothing are what they were trained with: kept loadable."""
    # a rank of 0 was PEFT's traceback after preprocessing; an alpha of 0 or a dropout of 1 trained no adapter, unsaid
    if config.lora_r < 1 or config.lora_alpha <= 0 or not 0 <= config.lora_dropout < 1:
        return (f"{prefix}lora_r {config.lora_r}, lora_alpha {config.lora_alpha}, lora_dropout {config.lora_dropout}: "
                "LoRA's rank is at least 1, its alpha above 0 and its dropout from 0 to below 1 (an alpha of 0 or a "
                "dropout of 1 leaves the adapters untrained); the configs: 32, 64, 0.05")
    # one string (the Python API) is PEFT's pattern of whole module paths: a name in it matched none (weights trained so load)
    if isinstance(config.lora_target_modules, str) and not trained:
        return (f"{prefix}lora_target_modules is one string, {config.lora_target_modules!r}: give a list of module "
                "names, e.g. ['q_proj', 'k_proj', 'v_proj', 'dense'] (Phi-2's attention; with 'fc1', 'fc2' too, all its "
                "linear layers, what PEFT's 'all-linear' adapts)")
    if not config.cross_attention_layers:
        return (f"{prefix}cross_attention_layers is empty: the language model would never see the image. Name the decoder "
                "layers that read it, e.g. [-4, -3, -2, -1] (the last four)")
    if not isinstance(config.vision_feature_layer, int) and not config.vision_feature_layer:
        return f"{prefix}vision_feature_layer is empty: name the vision tower's hidden state to read, e.g. -2 (the penultimate)"
    try:
        language_model = meta_language_model(config.language_model)
    except ConfigError as error:  # a CLIP given as the language model: the two the other way round
        return str(error)
    if language_model is None:
        return vision_problem(config, prefix)
    return (language_problem(config, language_model, prefix, trained) or vision_problem(config, prefix)
            or tokenizer_problem(config, language_model, prefix))


def meta_language_model(name: str) -> PreTrainedModel | None:
    """The language model built from its config.json alone, on the meta device; ``None`` when its config is not on
    this machine (a hub id not downloaded yet) or transformers cannot build it (loading will say why)."""
    try:
        language_config = AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=False)
        with torch.device("meta"), naming_backbone(name, "language model"):  # a CLIP: ConfigError, naming it
            return AutoModelForCausalLM.from_config(language_config)
    except ConfigError:
        raise
    except (OSError, ValueError, ImportError):  # not here, or a model this transformers cannot build: loading says why
        return None


def language_problem(config: MultimodalConfig, model: PreTrainedModel, prefix: str, trained: bool = False) -> str | None:
    name, kind = config.language_model, type(model).__name__
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        found = next((f"at {n}" for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 1), "elsewhere")
        return (f"{prefix}language_model {name} is a {kind}, whose decoder layers are {found}, not at model.layers where "
                f"mmcaption injects cross-attention: use a language model with its decoder layers there ({LAYOUTS})")
    count = len(layers)
    outside = [i for i in config.cross_attention_layers if not -count <= i < count]
    if outside:
        return (f"{prefix}cross_attention_layers has {', '.join(map(str, outside))}, but {name} has {count} decoder layers: "
                f"give indices from {-count} to {count - 1} (negative from the end: [-4, -3, -2, -1] for the last four)")
    asked, resolved = config.cross_attention_layers, [i % count for i in config.cross_attention_layers]
    for position, layer in enumerate(resolved):
        if layer in resolved[:position]:
            return (f"{prefix}cross_attention_layers {asked} names layer {layer} twice ({asked[resolved.index(layer)]} and "
                    f"{asked[position]}, of {count} decoder layers): name each layer once")
    hidden, heads = model.config.hidden_size, config.cross_attention_heads
    if heads is not None and (heads < 1 or hidden % heads):
        return (f"{prefix}cross_attention_heads {heads} does not divide {name}'s hidden_size {hidden}: give a divisor "
                f"of it, or null for the model's own ({model.config.num_attention_heads})")
    return lora_problem(config, model, prefix, trained)


ADAPTED = (nn.Linear, Conv1D, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)  # what PEFT's LoRA adapts


def lora_problem(config: MultimodalConfig, model: PreTrainedModel, prefix: str, trained: bool = False) -> str | None:
    """A LoRA target that matches no module: PEFT matches a name by its last parts (``dense``: ``*.dense``), leaves one
    that matches nothing out without a word while the adapter's config and the model card list it, and raises a
    60-line traceback when none matches."""
    if isinstance(config.lora_target_modules, str):  # weights trained with PEFT's pattern (or "all-linear"): as they were
        return None
    matched = {t: [m for n, m in model.named_modules() if n == t or n.endswith(f".{t}")] for t in config.lora_target_modules}
    missing = [t for t, modules in matched.items() if not modules]
    # a whole block (self_attn, layers): PEFT raised "Target module PhiAttention(...) is not supported" once the data was ready
    other = {t: type(next(m for m in modules if not isinstance(m, ADAPTED))).__name__ for t, modules in matched.items()
             if any(not isinstance(m, ADAPTED) for m in modules)}
    if not other and (not missing or trained and len(missing) < len(matched)):  # trained so: PEFT skipped the others
        return None
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | Conv1D)]
    suffixes = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in linear))
    attention = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in linear if "attn" in n or "attention" in n))
    said = [f"{', '.join(missing)}: no module of {config.language_model} (a {type(model).__name__}) is named so"] if missing else []
    said += [f"{target}: a {kind}, which LoRA does not adapt (it adapts layers)" for target, kind in other.items()]
    return (f"{prefix}lora_target_modules has {'; '.join(said)} (its linear layers: {', '.join(suffixes)}). Write "
            f"[{', '.join(attention or suffixes)}] instead (its attention's; q_proj, k_proj, v_proj, dense are Phi-2's)")


def vision_problem(config: MultimodalConfig, prefix: str) -> str | None:
    name = config.vision_model
    try:
        kind = PretrainedConfig.get_config_dict(name, local_files_only=True)[0].get("model_type")
        vision_config = CLIPVisionConfig.from_pretrained(name, local_files_only=True) if kind in CLIP_TYPES else None
    except (OSError, ValueError):  # no config.json on this machine: loading says so
        return None
    if kind is not None and vision_config is None:
        return (f"{prefix}vision_model {name} is not a CLIP model (its config.json's model_type is {kind}): the vision "
                "tower must be a CLIP vision model; give a CLIPVisionModel's folder or a full CLIP checkpoint (as "
                "openai/clip-vit-base-patch32)")
    if vision_config is None:
        return None
    states = vision_config.num_hidden_layers + 1  # the embeddings' and each layer's
    layers = [config.vision_feature_layer] if isinstance(config.vision_feature_layer, int) else config.vision_feature_layer
    outside = [i for i in layers if not -states <= i < states]
    if outside:
        return (f"{prefix}vision_feature_layer {'is' if layers is not config.vision_feature_layer else 'has'} "
                f"{', '.join(map(str, outside))}, but {name} has {states} hidden states "
                f"(the embeddings' and its {states - 1} layers'): give {-states} to {states - 1} (-1: the last, -2: the "
                "penultimate, as LLaVA)")
    return image_size_problem(name, vision_config.image_size, prefix)


def image_size_problem(name: str, image_size: int, prefix: str) -> str | None:
    """An image processor that makes images of another size than the tower takes (its config's ``image_size``)."""
    try:
        processor = AutoImageProcessor.from_pretrained(name, local_files_only=True, trust_remote_code=False,
                                                       **({} if is_torchvision_available() else {"backend": "pil"}))
    except (OSError, ValueError):  # none saved there: loading says so
        return None
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    made, which = (crop, "crop_size") if crop is not None else (getattr(processor, "size", None), "size")
    given = {key: value for key in ("height", "width", "shortest_edge", "longest_edge")
             if (value := getattr(made, key, None) or (made.get(key) if isinstance(made, dict) else None))}
    height, width = given.get("height"), given.get("width")
    if (height, width) == (image_size, image_size):
        return None
    made_as = (f"{height}x{width} images (its {which})" if height and width else
               f"images of no fixed size (its {which} {', '.join(f'{k} {v}' for k, v in given.items()) or made}, no center crop)")
    return (f"{prefix}vision_model {name}: its image processor makes {made_as}, and the tower takes {image_size}x{image_size} "
            f"(its config's image_size): write crop_size {{\"height\": {image_size}, \"width\": {image_size}}}, do_center_crop "
            f"true and size {{\"shortest_edge\": {image_size}}} in its preprocessor_config.json")


def tokenizer_problem(config: MultimodalConfig, model: PreTrainedModel, prefix: str) -> str | None:
    name = f"{prefix}language_model {config.language_model}"
    with suppress(OSError, ValueError, TypeError):  # no tokenizer files: load_tokenizer says so
        tokenizer = AutoTokenizer.from_pretrained(config.language_model, local_files_only=True, trust_remote_code=False)
        embeddings = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > embeddings:
            return (f"{name}: its tokenizer has {len(tokenizer)} tokens, more than the model's {embeddings} input "
                    "embeddings (tokens added to it without resizing the model): save the model resized beside it "
                    "(model.resize_token_embeddings(len(tokenizer)), then model.save_pretrained), or use the tokenizer it "
                    "came with")
        if tokenizer.eos_token_id is None and len(tokenizer) > 1:
            return (f"{name}: its tokenizer has no eos token, which ends every caption and answer: set the model's "
                    "end-of-text token (tokenizer.eos_token = \"<|endoftext|>\" for Phi-2's) and save it there "
                    "(tokenizer.save_pretrained)")
    return None


def check_structure(config: MultimodalConfig, prefix: str = "", trained: bool = False) -> None:
    """Raise :func:`structure_problem`'s message as a :class:`~mmcaption.errors.ConfigError` (both backbones' folders
    gone: said together first)."""
    check_backbone_folders(config.language_model, config.vision_model)
    if problem := structure_problem(config, prefix, trained):
        raise ConfigError(problem)
