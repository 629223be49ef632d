"""Pure torch / Hugging Face components: the config, the backbone factory, gated cross-attention and
the multimodal model with its folder format. Imports nothing else of mmcaption."""

from mmcaption.model.card import is_pretrained_folder, read_manifest
from mmcaption.model.config import MultimodalConfig
from mmcaption.model.cross_attention import CrossAttentionDecoderLayer, GatedCrossAttentionBlock
from mmcaption.model.multimodal import MultimodalCausalLM

__all__ = [
    "CrossAttentionDecoderLayer",
    "GatedCrossAttentionBlock",
    "MultimodalCausalLM",
    "MultimodalConfig",
    "is_pretrained_folder",
    "read_manifest",
]
