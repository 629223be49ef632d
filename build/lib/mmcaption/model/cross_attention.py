"""Gated cross-attention from text tokens to image tokens (Flamingo, OpenFlamingo).

A block is wrapped around an existing decoder layer of the language model. Its output is scaled by
``tanh(gate)`` with the gate initialised to zero, so at initialisation the wrapped layer computes
exactly what the frozen language model computes, and vision is blended in only as training opens
the gate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmcaption.errors import ConfigError


class GatedCrossAttentionBlock(nn.Module):
    """Text queries attend to projected image tokens; the result is added through tanh gates.

    Args:
        hidden_size: width of the language model's hidden states (and of the projected image tokens).
        num_heads: attention heads; ``hidden_size`` must be divisible by it.
        ffn_mult: width multiplier of the optional gated feed-forward after the attention
            (Flamingo has one); 0 leaves it out.
        dropout: attention dropout during training.
    """

    def __init__(self, hidden_size: int, num_heads: int, ffn_mult: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ConfigError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout = dropout
        self.norm = nn.LayerNorm(hidden_size)
        # Names differ from q_proj/k_proj/v_proj/dense on purpose: LoRA targets those by name.
        self.to_q = nn.Linear(hidden_size, hidden_size, bias=False)
        self.to_k = nn.Linear(hidden_size, hidden_size, bias=False)
        self.to_v = nn.Linear(hidden_size, hidden_size, bias=False)
        self.to_out = nn.Linear(hidden_size, hidden_size, bias=False)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        if ffn_mult > 0:
            self.ffn_norm = nn.LayerNorm(hidden_size)
            self.ffn = nn.Sequential(
                nn.Linear(hidden_size, ffn_mult * hidden_size, bias=False),
                nn.GELU(),
                nn.Linear(ffn_mult * hidden_size, hidden_size, bias=False),
            )
            self.ffn_gate = nn.Parameter(torch.zeros(1))
        else:
            self.ffn = None

    def image_key_values(self, image_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the image tokens, ``(batch, heads, image_tokens, head_dim)`` each.

        They depend on the image only, so generation can compute them once per sequence.
        """
        image_embeds = image_embeds.to(self.to_k.weight.dtype)
        return self._split_heads(self.to_k(image_embeds)), self._split_heads(self.to_v(image_embeds))

    def forward(
        self,
        hidden_states: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
        image_key_values: tuple[torch.Tensor, torch.Tensor] | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``hidden_states`` with the gated image information added; rows whose ``image_mask`` is False
        (text-only samples) pass through unchanged, as in the plain language model."""
        if image_key_values is None:
            if image_embeds is None:
                raise ValueError("GatedCrossAttentionBlock needs image_embeds or image_key_values")
            image_key_values = self.image_key_values(image_embeds)
        keys, values = image_key_values
        # The text stream may be in the frozen model's dtype; the block computes in its own.
        text = hidden_states.to(self.norm.weight.dtype)
        queries = self._split_heads(self.to_q(self.norm(text)))
        attended = F.scaled_dot_product_attention(
            queries, keys, values, dropout_p=self.dropout if self.training else 0.0
        )
        attended = attended.transpose(1, 2).flatten(2)
        keep = None if image_mask is None else image_mask.view(-1, 1, 1).to(text.dtype)
        update = torch.tanh(self.attn_gate) * self.to_out(attended)
        text = text + (update if keep is None else update * keep)
        if self.ffn is not None:
            update = torch.tanh(self.ffn_gate) * self.ffn(self.ffn_norm(text))
            text = text + (update if keep is None else update * keep)
        if keep is not None and not bool(image_mask.all()):  # text-only rows: exactly the layer's own output
            return torch.where(keep.bool(), text.to(hidden_states.dtype), hidden_states)
        return text.to(hidden_states.dtype)

    def gate_values(self) -> dict[str, float]:
        """``tanh(gate)`` of each gate: how much of this block reaches the language model."""
        values = {"attn": torch.tanh(self.attn_gate).item()}
        if self.ffn is not None:
            values["ffn"] = torch.tanh(self.ffn_gate).item()
        return values

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)


class CrossAttentionDecoderLayer(nn.Module):
    """A decoder layer of the language model followed by a gated cross-attention block.

    A wrapper, not a forward hook: image tokens arrive as the ``image_embeds`` keyword that the
    Hugging Face model passes down to every decoder layer, so the wrapper composes with PEFT,
    gradient checkpointing and DDP. Hugging Face ``generate`` forwards no such keyword, so during
    generation only, :meth:`MultimodalCausalLM.generate` sets ``generation_images`` for the length
    of the call (the image keys and values, computed once per sequence). Without either it is
    exactly the original layer.
    """

    def __init__(self, decoder_layer: nn.Module, cross_attention: GatedCrossAttentionBlock) -> None:
        super().__init__()
        self.decoder_layer = decoder_layer
        self.cross_attention = cross_attention
        # (image embeddings or None, their cached keys/values or None, image mask or None), set by generate()
        self.generation_images: tuple | None = None

    def forward(
        self,
        hidden_states: torch.Tensor,
        *args,
        image_embeds: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        hidden_states = self.decoder_layer(hidden_states, *args, **kwargs)
        if image_embeds is not None:
            return self.cross_attention(hidden_states, image_embeds=image_embeds, image_mask=image_mask)
        if self.generation_images is not None:
            embeds, key_values, mask = self.generation_images
            return self.cross_attention(hidden_states, image_embeds=embeds, image_key_values=key_values, image_mask=mask)
        return hidden_states
