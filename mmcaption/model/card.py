"""The model card (``README.md``) written into every saved model folder."""

from __future__ import annotations

from typing import Any


def model_card(manifest: dict[str, Any]) -> str:
    """A short card from a saved folder's manifest: what it is made of and how to use it."""
    model = manifest["model"]
    adapter = "The LoRA adapter is in `adapter/` (a PEFT folder)."
    if manifest["merged"]:
        adapter = "The LoRA adapter is merged into `language_model/`"
        if model["quantization"] != "none":
            adapter += (
                f", folded into the base model's original {model['compute_dtype']} weights although it was trained"
                f" against their {model['quantization']} quantization: the merged model computes with the"
                " unquantized weights, so its outputs differ slightly from the trained model's"
                " (`adapter/` with the quantized base reproduces them exactly)"
            )
        adapter += "."
    return f"""# mmcaption model

A captioning and visual question answering model trained with mmcaption: the language model
`{manifest['base_language_model']}` ({model['quantization']} during training), the frozen vision tower
`{model['vision_model']}`, gated cross-attention after decoder layers {model['cross_attention_layers']},
and LoRA (r={model['lora_r']}, alpha={model['lora_alpha']}) on {', '.join(model['lora_target_modules'])}.
{adapter}

```python
from mmcaption import Captioner
captioner = Captioner.from_pretrained("path/to/this/folder")
print(captioner.caption("photo.jpg"))
```

Exported from `{manifest['source'].get('checkpoint')}` (step {manifest['source'].get('global_step')}).
"""
