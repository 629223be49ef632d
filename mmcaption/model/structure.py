"""The model's structure without its pretrained weights: what writing a checkpoint's tensors needs.

A Lightning checkpoint of ``mmcaption fit`` already holds every trained tensor (LoRA, projection,
cross-attention). Exporting it needs the model's module names and shapes, not Phi-2's 2.7B weights
quantized to 4 bits nor the vision tower's: :func:`model_structure` builds the same model from the
backbones' configs alone, on the meta device (no memory, nothing read but two ``config.json`` files),
and the checkpoint's tensors are then assigned into it.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel

from mmcaption.model.backbone_checks import check_backbone_folders, naming_backbone
from mmcaption.model.backbones import add_lora
from mmcaption.model.config import MultimodalConfig
from mmcaption.model.multimodal import MultimodalCausalLM


def model_structure(config: MultimodalConfig) -> MultimodalCausalLM:
    """``MultimodalCausalLM.from_config(config)`` with every tensor on the meta device: the same module
    names and shapes (the LoRA adapters are those of the quantized model), no weights loaded."""
    check_backbone_folders(config.language_model, config.vision_model)
    with naming_backbone(config.language_model, "language model config of"):
        language_config = AutoConfig.from_pretrained(config.language_model, trust_remote_code=False)
    with naming_backbone(config.vision_model, "vision model config of"):
        vision_config = CLIPVisionConfig.from_pretrained(config.vision_model)  # a full CLIP config gives its vision part
    with torch.device("meta"):
        language_model = AutoModelForCausalLM.from_config(language_config)
        # PEFT records the base model's name in the adapter's config from here, as from_pretrained sets it
        language_model.config._name_or_path = language_model.name_or_path = config.language_model
        language_model = add_lora(language_model, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                                  target_modules=config.lora_target_modules)
        return MultimodalCausalLM(language_model, CLIPVisionModel(vision_config).requires_grad_(False), config)


def assign_trainable_tensors(model: MultimodalCausalLM, state: dict[str, torch.Tensor]) -> None:
    """Put ``state`` (the trained tensors, keyed as ``model.state_dict()``) into a :func:`model_structure`;
    refuses one that leaves any trained tensor of the model without a value."""
    model.load_state_dict(state, strict=False, assign=True)
    empty = [name for name, parameter in model.named_parameters() if parameter.requires_grad and parameter.is_meta]
    if empty:
        raise ValueError(f"{len(empty)} trained tensors of the model have no value, e.g. {empty[:3]}")
