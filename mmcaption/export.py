"""Export a checkpoint to a folder a user can share, and load such a folder back.

    mmcaption-export checkpoints/instruct/last.ckpt exported/mmcaption-phi2 [--merge]

writes::

    adapter/                  the LoRA adapter as a PEFT folder (PeftModel.from_pretrained on plain Phi-2)
    multimodal.safetensors    projection and gated cross-attention weights
    mmcaption.json            the configuration that rebuilds the model, and the prompt settings
    tokenizer/, image_processor/   so the folder works offline
    language_model/           with --merge only: Phi-2 with LoRA merged in (compute dtype)
    README.md                 a short model card
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModelForCausalLM

from mmcaption.data.templates import DEFAULT_SYSTEM
from mmcaption.model.backbones import torch_dtype
from mmcaption.model.multimodal import MultimodalCausalLM, MultimodalConfig

EXPORT_FORMAT = 1
CONFIG_FILE = "mmcaption.json"


def is_export(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def read_export_config(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not is_export(folder):
        raise FileNotFoundError(f"{folder} is not an exported mmcaption folder (no {CONFIG_FILE})")
    return json.loads((folder / CONFIG_FILE).read_text())


def export_model(
    model: MultimodalCausalLM,
    out: str | Path,
    tokenizer,
    prompts: dict[str, Any],
    generation: dict[str, Any],
    source: dict[str, Any],
    merge: bool = False,
) -> Path:
    """Write ``model``'s trained parts (and, with ``merge``, a merged language model) to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with model.plain_decoder_layers():
        model.language_model.save_pretrained(out / "adapter")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.multimodal_state_dict().items()}, out / "multimodal.safetensors")
    tokenizer.save_pretrained(out / "tokenizer")
    AutoImageProcessor.from_pretrained(model.config.vision_model).save_pretrained(out / "image_processor")
    config = asdict(model.config)
    config["cross_attention_layers"] = list(model.cross_attention_layer_indices)
    if merge:
        base = AutoModelForCausalLM.from_pretrained(model.config.language_model, dtype=torch_dtype(model.config.compute_dtype))
        merged = PeftModel.from_pretrained(base, out / "adapter").merge_and_unload()
        merged.save_pretrained(out / "language_model")
        tokenizer.save_pretrained(out / "language_model")
    manifest = {
        "format": EXPORT_FORMAT,
        "model": config,
        "merged": merge,
        "base_language_model": model.config.language_model,
        "prompts": prompts,
        "generation": generation,
        "source": source,
    }
    (out / CONFIG_FILE).write_text(json.dumps(manifest, indent=2))
    (out / "README.md").write_text(_model_card(manifest))
    return out


def config_from_export(folder: str | Path, **overrides) -> MultimodalConfig:
    """The model configuration an exported folder rebuilds (backbones resolved against the folder)."""
    folder = Path(folder)
    manifest = read_export_config(folder)
    values = {f.name: manifest["model"][f.name] for f in fields(MultimodalConfig) if f.name in manifest["model"]}
    if manifest["merged"]:
        values["language_model"] = str(folder / "language_model")
    values.update(overrides)
    return MultimodalConfig(**values)


def load_exported_weights(model: MultimodalCausalLM, folder: str | Path) -> None:
    """Put an exported folder's trained weights into a model built from :func:`config_from_export`.

    For a merged export the LoRA is already inside the language model; the model's fresh LoRA
    adapters (zero-initialised, so without effect) stay as they are.
    """
    folder = Path(folder)
    manifest = read_export_config(folder)
    if not manifest["merged"]:
        adapter = load_file(folder / "adapter" / "adapter_model.safetensors")
        with model.plain_decoder_layers():
            result = set_peft_model_state_dict(model.language_model, adapter)
        if result.unexpected_keys:
            raise ValueError(f"{folder / 'adapter'} has weights this model lacks: {result.unexpected_keys[:3]}")
    model.load_multimodal_state_dict(load_file(folder / "multimodal.safetensors"))


def _model_card(manifest: dict[str, Any]) -> str:
    model = manifest["model"]
    return f"""# mmcaption model

A captioning and visual question answering model trained with mmcaption: the language model
`{manifest['base_language_model']}` ({model['quantization']} during training), the frozen vision tower
`{model['vision_model']}`, gated cross-attention after decoder layers {model['cross_attention_layers']},
and LoRA (r={model['lora_r']}, alpha={model['lora_alpha']}) on {', '.join(model['lora_target_modules'])}.
{'The LoRA adapter is merged into `language_model/`.' if manifest['merged'] else 'The LoRA adapter is in `adapter/` (a PEFT folder).'}

```python
from mmcaption import Captioner
captioner = Captioner.from_pretrained("path/to/this/folder")
print(captioner.caption("photo.jpg"))
```

Exported from `{manifest['source'].get('checkpoint')}` (step {manifest['source'].get('global_step')}).
"""


def main(argv: list[str] | None = None) -> None:
    from mmcaption.checkpoint import load_checkpoint_file
    from mmcaption.module import MultimodalCaptioner

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a Lightning checkpoint of mmcaption fit")
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--merge", action="store_true", help="also write the language model with LoRA merged in")
    args = parser.parse_args(argv)

    checkpoint = load_checkpoint_file(args.checkpoint)
    module = MultimodalCaptioner.load_from_checkpoint(args.checkpoint, map_location="cpu", weights_only=True)
    data = checkpoint.get("datamodule_hyper_parameters", {})
    prompts = {"caption_prompt": data.get("caption_prompt", ""), "system_prompt": data.get("system_prompt", DEFAULT_SYSTEM)}
    source = {"checkpoint": str(Path(args.checkpoint).resolve()), "global_step": checkpoint.get("global_step"),
              "init_from": checkpoint.get("init_from")}
    out = export_model(module.model, args.out, module.tokenizer, prompts, module.hparams.generation or {}, source, args.merge)
    print(f"exported to {out}")


if __name__ == "__main__":
    main()
