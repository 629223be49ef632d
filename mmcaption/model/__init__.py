"""Pure torch / Hugging Face components: backbones, gated cross-attention, the multimodal model."""

from mmcaption.model.cross_attention import CrossAttentionDecoderLayer, GatedCrossAttentionBlock
from mmcaption.model.multimodal import MultimodalCausalLM, MultimodalConfig

__all__ = ["CrossAttentionDecoderLayer", "GatedCrossAttentionBlock", "MultimodalCausalLM", "MultimodalConfig"]
