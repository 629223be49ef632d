"""The multimodal model: frozen vision tower -> projection -> gated cross-attention in the LM.

The model also owns its folder format (nanoVLM's ``save_pretrained`` / ``from_pretrained``)::

    adapter/                  the LoRA adapter as a PEFT folder (PeftModel.from_pretrained on the plain LM)
    multimodal.safetensors    projection and gated cross-attention weights
    mmcaption.json            the model config that rebuilds it, prompt and generation settings, provenance
    tokenizer/, image_processor/   so the folder works offline
    language_model/           merged folders only: the language model with LoRA merged in (compute dtype)
    README.md                 a short model card
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, CLIPVisionModel, GenerationConfig, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from mmcaption.errors import ConfigError
from mmcaption.model.backbone_weights import backbone_weights
from mmcaption.model.backbones import (
    add_lora,
    load_image_processor,
    load_language_model,
    load_vision_model,
    refuse_casting_packed_weights,
    torch_dtype,
)
from mmcaption.model.card import CONFIG_FILE, FOLDER_FORMAT, model_card, read_manifest, save_adapter
from mmcaption.model.compatibility import check_structure
from mmcaption.model.config import MultimodalConfig, settings_diff
from mmcaption.model.cross_attention import CrossAttentionDecoderLayer, GatedCrossAttentionBlock
from mmcaption.model.loss import final_logits


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
        # transformers may place a quantized language model on a GPU by itself: everything follows it
        device = language_model.get_input_embeddings().weight.device
        self.vision_model.to(device)
        self.projection.to(device)
        for block in self.cross_attention_blocks:
            block.to(device)

    @classmethod
    def from_config(cls, config: MultimodalConfig, device: torch.device | str | None = None, trained: bool = False) -> MultimodalCausalLM:
        """Load the backbones named in ``config`` and add LoRA, projection and cross-attention (``trained``: for weights
        trained with these settings, loaded next: LoRA targets some of which match nothing are as they were trained)."""
        check_structure(config, trained=trained)  # backbones and settings that do not fit, said before they load
        language_model = load_language_model(
            config.language_model, config.quantization, config.compute_dtype, device=device
        )
        language_model = add_lora(language_model, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                                  target_modules=config.lora_target_modules, gradient_checkpointing=config.gradient_checkpointing)
        vision_model = load_vision_model(config.vision_model, device=device)
        model = cls(language_model, vision_model, config)
        model.backbone_weights = backbone_weights(config)  # what checkpoints keep of which weights they were fitted to
        return model

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

    def _apply(self, fn, *args, **kwargs):  # half(), float(), to(dtype), ...: refused where they would ruin 4-bit weights
        refuse_casting_packed_weights(self, fn)
        return super()._apply(fn, *args, **kwargs)

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
        image_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for ``input_ids`` given images: ``pixel_values``, cached ``vision_features``, or
        already projected ``image_embeds``; ``image_mask`` (``(batch,)`` bool) marks the rows that have
        one - the others are text-only and read no image, whatever their pixels hold.

        Without any image, the model is the language model with its LoRA adapters.
        """
        images = self.image_inputs(input_ids, pixel_values, image_embeds, vision_features, image_mask)
        return self.language_model(input_ids=input_ids, attention_mask=attention_mask, **images, **kwargs)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What :meth:`forward` computes before the output head: the decoder's last hidden state
        ``(batch, seq, hidden_size)``, for a loss that applies :attr:`output_head` itself."""
        images = self.image_inputs(input_ids, pixel_values, image_embeds, vision_features, image_mask)
        decoder = self.language_model.get_base_model().model
        return decoder(input_ids=input_ids, attention_mask=attention_mask, **images).last_hidden_state

    def image_inputs(self, input_ids, pixel_values, image_embeds, vision_features, image_mask) -> dict[str, Any]:
        """The image arguments the decoder layers take, from whichever form the images come in."""
        if image_embeds is None and (pixel_values is not None or vision_features is not None):
            image_embeds = self.encode_images(pixel_values, vision_features)
        mask = {} if image_mask is None else {"image_mask": image_mask.to(input_ids.device)}
        return {"image_embeds": image_embeds, **mask}

    def training_flops_per_token(self) -> int:
        """Approximate FLOPs to train on one token: forward and activation gradients through every
        language-model weight (2 + 2 a parameter; 4-bit weights counted whole), weight gradients of
        the trainable ones (2 more); attention's sequence-length terms and the frozen vision tower
        (often cached) are left out. For the MFU that ``TrainingThroughput`` logs on a GPU."""
        base = self.language_model.get_base_model()  # its count holds the LoRA and cross-attention inside it
        frozen = base.num_parameters(exclude_embeddings=True) - sum(p.numel() for p in base.parameters() if p.requires_grad)
        return 4 * frozen + 6 * sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def output_head(self) -> nn.Module:  # with what the model's forward does after it (Gemma 2's soft-capping: final_logits)
        base = self.language_model.get_base_model()
        return final_logits(base.get_output_embeddings(), base.config)

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
            raise ConfigError(f"multimodal weights do not fit the model: unexpected {unexpected[:3]}, missing {missing[:3]}")
        with torch.no_grad():
            for key, value in state.items():
                if expected[key].shape != value.shape:
                    raise ConfigError(f"{key}: saved {tuple(value.shape)} vs model {tuple(expected[key].shape)}")
                expected[key].copy_(value)

    @contextmanager
    def generation_images(
        self, image_embeds: torch.Tensor, cache_key_values: bool = True, image_mask: torch.Tensor | None = None
    ) -> Iterator[None]:
        """Make the images visible to every cross-attention layer for one ``generate`` call.

        With ``cache_key_values`` each block computes its image keys and values once here and
        reuses them at every decoding step (they depend on the image only); without, they are
        recomputed from ``image_embeds`` at every step. Cleared on exit, errors included.
        """
        layers = [self.decoder_layers[i] for i in self.cross_attention_layer_indices]
        try:
            for layer in layers:
                key_values = layer.cross_attention.image_key_values(image_embeds) if cache_key_values else None
                layer.generation_images = (None if cache_key_values else image_embeds, key_values, image_mask)
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
        image_mask: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """New tokens after left-padded prompts, one image per prompt, by Hugging Face ``generate``.

        Greedy, beam search and sampling follow ``generation_config`` and ``generate_kwargs`` as in
        ``transformers``; the language model's KV cache is used unless ``use_cache=False``. Rows whose
        ``image_mask`` is False are text-only.
        Returns ``(batch * num_return_sequences, new_tokens)``, padded with the pad token.
        """
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("generate needs pixel_values or image_embeds")
            image_embeds = self.encode_images(pixel_values)
        config = copy.deepcopy(generation_config or self.language_model.generation_config)
        extra = config.update(**generate_kwargs)  # what a GenerationConfig does not hold (a streamer) goes to generate
        if config.pad_token_id is None:
            config.pad_token_id = config.eos_token_id if isinstance(config.eos_token_id, int) else None
        # generate() expands each prompt to its beams / returned samples; the images must follow.
        expand = max(config.num_beams or 1, config.num_return_sequences or 1)
        image_embeds = image_embeds.repeat_interleave(expand, dim=0)
        if image_mask is not None:
            image_mask = image_mask.to(image_embeds.device).repeat_interleave(expand, dim=0)
        with self.generation_images(image_embeds, cache_key_values=cache_image_key_values, image_mask=image_mask):
            sequences = self.language_model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=config, **extra
            )
        return sequences[:, input_ids.shape[1]:]

    # -- its folder format --------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        """The config as checkpoints and folders record it, with the injected layers resolved."""
        return {**asdict(self.config), "cross_attention_layers": list(self.cross_attention_layer_indices)}

    def save_pretrained(
        self,
        folder: str | Path,
        tokenizer: PreTrainedTokenizerBase,
        prompts: dict[str, Any] | None = None,
        generation: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
        merge: bool = False,
    ) -> Path:
        """Write the trained parts (and, with ``merge``, the language model with LoRA merged in) to ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self.plain_decoder_layers():
            save_adapter(self.language_model, folder / "adapter")
        weights = {k: v.detach().contiguous().cpu() for k, v in self.multimodal_state_dict().items()}
        save_file(weights, folder / "multimodal.safetensors")
        tokenizer.save_pretrained(folder / "tokenizer")
        load_image_processor(self.config.vision_model).save_pretrained(folder / "image_processor")
        if merge:
            base = AutoModelForCausalLM.from_pretrained(
                self.config.language_model, dtype=torch_dtype(self.config.compute_dtype), trust_remote_code=False
            )
            PeftModel.from_pretrained(base, folder / "adapter").merge_and_unload().save_pretrained(folder / "language_model")
            tokenizer.save_pretrained(folder / "language_model")
        manifest = {
            "format": FOLDER_FORMAT,
            "model": self.config_dict(),
            "merged": merge,
            "base_language_model": self.config.language_model,
            "prompts": prompts or {},
            "generation": generation or {},
            "source": source or {},
            "backbone_weights": getattr(self, "backbone_weights", {}),  # mmcaption-export writes its checkpoint's
        }
        (folder / CONFIG_FILE).write_text(json.dumps(manifest, indent=2))
        (folder / "README.md").write_text(model_card(manifest), encoding="utf-8")  # a path with accents, whatever the locale
        return folder

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: torch.device | str | None = None, **overrides: Any
    ) -> MultimodalCausalLM:
        """Rebuild a saved model: backbones from their own names (or the merged language model in the
        folder), trained parts from the folder. ``overrides`` replace config settings (``quantization``)."""
        model = cls.from_config(pretrained_config(folder, **overrides), device=device, trained=True)
        model.load_pretrained_weights(folder)
        return model

    def load_pretrained_weights(self, folder: str | Path) -> None:
        """Put a saved folder's trained weights into this model, refusing one of another structure.

        When this model's language model is the folder's merged one, the LoRA is already inside it and
        this model's fresh LoRA adapters (zero-initialised, so without effect) stay as they are.
        """
        folder = Path(folder)
        manifest = read_manifest(folder)
        differences = settings_diff(manifest["model"], self.config_dict(), saved_name="saved")
        if differences:
            raise ConfigError(f"the saved model {folder} does not match this model: " + "; ".join(differences))
        # A merged folder's LoRA is inside its language_model/; a model built on the base language model
        # (init_from a merged export) still needs the adapter, which every folder keeps.
        merged_in = manifest["merged"] and Path(self.config.language_model).resolve() == (folder / "language_model").resolve()
        if not merged_in:
            adapter = load_file(folder / "adapter" / "adapter_model.safetensors")
            with self.plain_decoder_layers():
                try:
                    result = set_peft_model_state_dict(self.language_model, adapter)
                except RuntimeError as error:  # another language model than it was trained on: 32 lines of shapes
                    first = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error))
                    raise ConfigError(f"the language model {self.config.language_model} is not the one {folder} was trained "
                                      f"on, whose LoRA weights do not fit it ({first}): give the language model it "
                                      f"was trained with, {manifest.get('base_language_model')}") from None
            if result.unexpected_keys:
                raise ConfigError(f"{folder / 'adapter'} has weights this model lacks: {result.unexpected_keys[:3]}")
        self.load_multimodal_state_dict(load_file(folder / "multimodal.safetensors"))

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
            raise ConfigError(
                f"cross_attention_layers has {index}, but the language model has {num_layers} decoder layers"
            )
        resolved.append(index % num_layers)
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"cross_attention_layers {indices} names a layer twice")
    return sorted(resolved)


def feature_layers(vision_feature_layer: int | list[int]) -> list[int]:
    return [vision_feature_layer] if isinstance(vision_feature_layer, int) else list(vision_feature_layer)


def select_features(hidden_states: tuple[torch.Tensor, ...], vision_feature_layer: int | list[int]) -> torch.Tensor:
    """The vision tower's hidden state(s) the model reads, concatenated along the width."""
    layers = feature_layers(vision_feature_layer)
    if len(layers) == 1:
        return hidden_states[layers[0]]
    return torch.cat([hidden_states[layer] for layer in layers], dim=-1)


def pretrained_config(folder: str | Path, **overrides: Any) -> MultimodalConfig:
    """The model config a saved folder rebuilds: backbones copied into it (``backbones``) and a merged
    language model are read from the folder."""
    folder, manifest = Path(folder), read_manifest(folder)
    names = {f.name for f in fields(MultimodalConfig)}
    config = MultimodalConfig(**{k: v for k, v in manifest["model"].items() if k in names})
    config = replace(config, **{name: str(folder / path) for name, path in manifest.get("backbones", {}).items()})
    if manifest["merged"]:  # the LoRA folded into the unquantized weights, computed with them as the card says: quantized
        # again, its change was drowned in the rounding (nf4's error on the LoRA layers was 0.79 of the change itself)
        config = replace(config, language_model=str(folder / "language_model"), quantization="none")
    return replace(config, **overrides)
