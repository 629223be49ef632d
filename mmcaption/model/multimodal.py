"""The multimodal model: frozen vision tower -> projection -> gated cross-attention in the LM."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from peft import PeftModel
from torch import nn
from transformers import CLIPVisionModel, GenerationConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from mmcaption.model.backbones import (
    DType,
    Quantization,
    add_lora,
    load_language_model,
    load_vision_model,
)
from mmcaption.model.cross_attention import CrossAttentionDecoderLayer, GatedCrossAttentionBlock


@dataclass
class MultimodalConfig:
    """Everything needed to rebuild the model around its pretrained backbones.

    Attributes:
        language_model: ``from_pretrained`` name or folder of the causal language model.
        vision_model: ``from_pretrained`` name or folder of the CLIP model.
        quantization: how the language model's weights are stored: nf4, fp4, int8 or none.
        compute_dtype: dtype of the quantized matmuls (and of the whole LM without quantization).
        cross_attention_layers: indices of the decoder layers that get a gated cross-attention block
            (negative counts from the end).
        cross_attention_heads: heads of each block; ``None`` takes the language model's.
        cross_attention_ffn_mult: width multiplier of a gated feed-forward after each block (0: none).
        vision_feature_layer: which hidden state of the vision tower is used (-1: the last, -2: the
            penultimate, as LLaVA); a list concatenates several along the width (as ``transformers``'
            Llava does), e.g. ``[-2, -1]``.
        lora_r, lora_alpha, lora_dropout, lora_target_modules: the LoRA adapters on the LM.
        gradient_checkpointing: recompute the LM's activations in the backward pass.
    """

    language_model: str = "microsoft/phi-2"
    vision_model: str = "openai/clip-vit-base-patch32"
    quantization: Quantization = "nf4"
    compute_dtype: DType = "bfloat16"
    cross_attention_layers: list[int] = field(default_factory=lambda: [-4, -3, -2, -1])
    cross_attention_heads: int | None = None
    cross_attention_ffn_mult: int = 0
    vision_feature_layer: int | list[int] = -1
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "dense"])
    gradient_checkpointing: bool = False


class MultimodalCausalLM(nn.Module):
    """A causal language model that reads images through gated cross-attention.

    Build it with :meth:`from_config`, which follows the construction order that PEFT and
    bitsandbytes need: load (quantized) -> prepare for k-bit training -> LoRA -> new modules.
    """

    def __init__(
        self,
        language_model: PeftModel,
        vision_model: CLIPVisionModel,
        config: MultimodalConfig,
    ) -> None:
        super().__init__()
        self.config = config
        self.language_model = language_model
        self.vision_model = vision_model
        text_config = language_model.get_base_model().config
        hidden_size = text_config.hidden_size
        vision_width = vision_model.config.hidden_size * len(feature_layers(config.vision_feature_layer))
        self.projection = nn.Linear(vision_width, hidden_size)
        heads = config.cross_attention_heads or text_config.num_attention_heads

        layers = self.decoder_layers
        self.cross_attention_layer_indices = _resolve_layer_indices(config.cross_attention_layers, len(layers))
        for index in self.cross_attention_layer_indices:
            block = GatedCrossAttentionBlock(hidden_size, heads, ffn_mult=config.cross_attention_ffn_mult)
            layers[index] = CrossAttentionDecoderLayer(layers[index], block)
        device = language_model.get_input_embeddings().weight.device
        self.projection.to(device)
        for block in self.cross_attention_blocks:
            block.to(device)

    @classmethod
    def from_config(cls, config: MultimodalConfig, device: torch.device | str | None = None) -> MultimodalCausalLM:
        """Load the backbones named in ``config`` and add LoRA, projection and cross-attention."""
        language_model = load_language_model(
            config.language_model, config.quantization, config.compute_dtype, device=device
        )
        language_model = add_lora(
            language_model,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            gradient_checkpointing=config.gradient_checkpointing,
        )
        vision_model = load_vision_model(config.vision_model, device=device)
        return cls(language_model, vision_model, config)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model.get_base_model().model.layers

    @property
    def cross_attention_blocks(self) -> list[GatedCrossAttentionBlock]:
        layers = self.decoder_layers
        return [layers[i].cross_attention for i in self.cross_attention_layer_indices]

    def train(self, mode: bool = True) -> MultimodalCausalLM:
        super().train(mode)
        self.vision_model.eval()  # frozen: never in training mode
        return self

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen vision tower's hidden state at ``vision_feature_layer``: ``(batch, image_tokens,
        vision_width)``. What an image-feature cache stores, so training can skip the tower."""
        with torch.no_grad():
            outputs = self.vision_model(pixel_values=pixel_values.to(self.vision_model.dtype), output_hidden_states=True)
            return select_features(outputs.hidden_states, self.config.vision_feature_layer)

    def encode_images(self, pixel_values: torch.Tensor | None = None, vision_features: torch.Tensor | None = None) -> torch.Tensor:
        """Image tokens in the language model's width: ``(batch, image_tokens, hidden_size)``, from
        pixels or from cached :meth:`vision_features`."""
        if vision_features is None:
            vision_features = self.vision_features(pixel_values)
        return self.projection(vision_features.to(self.projection.weight.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for ``input_ids`` given images: ``pixel_values``, cached ``vision_features``, or
        already projected ``image_embeds``.

        Without any, the model is the language model with its LoRA adapters.
        """
        if image_embeds is None and (pixel_values is not None or vision_features is not None):
            image_embeds = self.encode_images(pixel_values, vision_features)
        return self.language_model(
            input_ids=input_ids, attention_mask=attention_mask, image_embeds=image_embeds, **kwargs
        )

    @contextmanager
    def plain_decoder_layers(self) -> Iterator[None]:
        """Temporarily put the original decoder layers back, so that the language model's module
        names are the plain model's: PEFT adapters saved inside load into a plain Phi-2."""
        layers = self.decoder_layers
        wrappers = {i: layers[i] for i in self.cross_attention_layer_indices}
        try:
            for i, wrapper in wrappers.items():
                layers[i] = wrapper.decoder_layer
            yield
        finally:
            for i, wrapper in wrappers.items():
                layers[i] = wrapper

    def multimodal_state_dict(self) -> dict[str, torch.Tensor]:
        """Projection and cross-attention weights, keyed by injected layer: what LoRA does not hold."""
        state = {f"projection.{k}": v for k, v in self.projection.state_dict().items()}
        for index, block in zip(self.cross_attention_layer_indices, self.cross_attention_blocks):
            state.update({f"cross_attention.{index}.{k}": v for k, v in block.state_dict().items()})
        return state

    def load_multimodal_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.multimodal_state_dict()
        unexpected, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
        if unexpected or missing:
            raise ValueError(f"multimodal weights do not fit the model: unexpected {unexpected[:3]}, missing {missing[:3]}")
        with torch.no_grad():
            for key, value in state.items():
                if expected[key].shape != value.shape:
                    raise ValueError(f"{key}: saved {tuple(value.shape)} vs model {tuple(expected[key].shape)}")
                expected[key].copy_(value)

    @contextmanager
    def generation_images(self, image_embeds: torch.Tensor, cache_key_values: bool = True) -> Iterator[None]:
        """Make the images visible to every cross-attention layer for one ``generate`` call.

        With ``cache_key_values`` each block computes its image keys and values once here and
        reuses them at every decoding step (they depend on the image only); without, they are
        recomputed from ``image_embeds`` at every step. Cleared on exit, errors included.
        """
        layers = [self.decoder_layers[i] for i in self.cross_attention_layer_indices]
        try:
            for layer in layers:
                key_values = layer.cross_attention.image_key_values(image_embeds) if cache_key_values else None
                layer.generation_images = (None if cache_key_values else image_embeds, key_values)
            yield
        finally:
            for layer in layers:
                layer.generation_images = None

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        cache_image_key_values: bool = True,
        **generate_kwargs,
    ) -> torch.Tensor:
        """New tokens after left-padded prompts, one image per prompt, by Hugging Face ``generate``.

        Greedy, beam search and sampling follow ``generation_config`` and ``generate_kwargs`` as in
        ``transformers``; the language model's KV cache is used unless ``use_cache=False``.
        Returns ``(batch * num_return_sequences, new_tokens)``, padded with the pad token.
        """
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("generate needs pixel_values or image_embeds")
            image_embeds = self.encode_images(pixel_values)
        config = copy.deepcopy(generation_config or self.language_model.generation_config)
        config.update(**generate_kwargs)
        if config.pad_token_id is None:
            config.pad_token_id = config.eos_token_id if isinstance(config.eos_token_id, int) else None
        # generate() expands each prompt to its beams / returned samples; the images must follow.
        expand = max(config.num_beams or 1, config.num_return_sequences or 1)
        image_embeds = image_embeds.repeat_interleave(expand, dim=0)
        with self.generation_images(image_embeds, cache_key_values=cache_image_key_values):
            sequences = self.language_model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=config
            )
        return sequences[:, input_ids.shape[1]:]

    def gate_values(self) -> dict[int, dict[str, float]]:
        """``tanh(gate)`` per injected layer index."""
        return {
            index: block.gate_values()
            for index, block in zip(self.cross_attention_layer_indices, self.cross_attention_blocks)
        }


def _resolve_layer_indices(indices: list[int], num_layers: int) -> list[int]:
    resolved = []
    for index in indices:
        if not -num_layers <= index < num_layers:
            raise ValueError(
                f"cross_attention_layers has {index}, but the language model has {num_layers} decoder layers"
            )
        resolved.append(index % num_layers)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"cross_attention_layers {indices} names a layer twice")
    return sorted(resolved)


def feature_layers(vision_feature_layer: int | list[int]) -> list[int]:
    return [vision_feature_layer] if isinstance(vision_feature_layer, int) else list(vision_feature_layer)


def select_features(hidden_states: tuple[torch.Tensor, ...], vision_feature_layer: int | list[int]) -> torch.Tensor:
    """The vision tower's hidden state(s) the model reads, concatenated along the width."""
    layers = feature_layers(vision_feature_layer)
    if len(layers) == 1:
        return hidden_states[layers[0]]
    return torch.cat([hidden_states[layer] for layer in layers], dim=-1)
