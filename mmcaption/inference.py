"""A small Python API over an exported model folder (``mmcaption-export``).

    from mmcaption import Captioner
    captioner = Captioner.from_pretrained("exported/mmcaption-phi2")
    print(captioner.caption("photo.jpg"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoImageProcessor, GenerationConfig

from mmcaption.data.collate import caption_prompt_ids, collate
from mmcaption.data.datamodule import load_tokenizer
from mmcaption.data.templates import LETTERS, ConversationTemplate
from mmcaption.evaluation.multiple_choice import option_scores
from mmcaption.export import config_from_export, load_exported_weights, read_export_config
from mmcaption.model.backbones import Quantization
from mmcaption.model.multimodal import MultimodalCausalLM

ImageInput = str | Path | Image.Image


class Captioner:
    """Captions images, answers questions about them and picks multiple-choice options."""

    def __init__(self, model: MultimodalCausalLM, tokenizer, image_processor, manifest: dict[str, Any]) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.caption_prompt = manifest["prompts"].get("caption_prompt", "")
        self.template = ConversationTemplate(system=manifest["prompts"].get("system_prompt", ""))
        generation = {"max_new_tokens": 32, "num_beams": 1, "do_sample": False, **manifest.get("generation", {})}
        self.generation = GenerationConfig(**generation, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | torch.device | None = None, quantization: Quantization | None = None
    ) -> Captioner:
        """Rebuild the model of an exported folder (backbones from their own names, trained parts
        from the folder), optionally with another quantization for inference."""
        folder = Path(folder)
        manifest = read_export_config(folder)
        config = config_from_export(folder, **({"quantization": quantization} if quantization else {}))
        model = MultimodalCausalLM.from_config(config, device=device)
        load_exported_weights(model, folder)
        processor = AutoImageProcessor.from_pretrained(folder / "image_processor")
        return cls(model, load_tokenizer(str(folder / "tokenizer")), processor, manifest)

    def _pixels(self, images: list[ImageInput]) -> torch.Tensor:
        loaded = [image.convert("RGB") if isinstance(image, Image.Image) else Image.open(image).convert("RGB") for image in images]
        pixels = self.image_processor(images=loaded, return_tensors="pt")["pixel_values"]
        return pixels.to(self.model.projection.weight.device)

    def _generate(self, prompts: list[list[int]], images: list[ImageInput], **generate_kwargs) -> list[str]:
        batch = collate([{"input_ids": torch.tensor(p)} for p in prompts], self.tokenizer.pad_token_id, padding_side="left")
        device = self.model.projection.weight.device
        tokens = self.model.generate(
            batch["input_ids"].to(device), batch["attention_mask"].to(device), pixel_values=self._pixels(images),
            generation_config=self.generation, **generate_kwargs,
        )
        return [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    def caption(self, images: ImageInput | list[ImageInput], **generate_kwargs) -> str | list[str]:
        """A caption per image (a string for one image, a list for a list)."""
        many = isinstance(images, list)
        images = images if many else [images]
        prompt = caption_prompt_ids(self.tokenizer, self.caption_prompt)
        captions = self._generate([prompt] * len(images), images, **generate_kwargs)
        return captions if many else captions[0]

    def answer(self, image: ImageInput, question: str, **generate_kwargs) -> str:
        """A free-form answer, as the instruct stage was taught to give."""
        return self._generate([self.template.prompt(question, self.tokenizer)], [image], **generate_kwargs)[0]

    @torch.no_grad()
    def choose(self, image: ImageInput, question: str, options: list[str]) -> str:
        """The letter (A-D) of the most likely option given the image and question."""
        eos = self.tokenizer.eos_token_id
        option_ids = [[self.tokenizer(" " + o, add_special_tokens=False)["input_ids"] + [eos] for o in options]]
        scores = option_scores(
            self.model, [self.template.prompt(question, self.tokenizer)], option_ids,
            self.model.encode_images(self._pixels([image])), self.tokenizer.pad_token_id,
        )
        return LETTERS[int(scores[0].argmax())]
