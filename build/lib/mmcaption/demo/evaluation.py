"""The demo's proof of life: held-out accuracy of the trained stages, against a blind control.

The *blind control* evaluates the same models with every image's features replaced by those of
another image of the batch; a model that reads the image must then fall to chance, and *chance* is
measured, not assumed: for captions, the accuracy of another image's reference captions; for
answers, the expected accuracy of an answer drawn from the training answers to the same question;
for multiple choice, one in four.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter, defaultdict
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from mmcaption.data.predict import MultipleChoiceDataModule
from mmcaption.demo.scoring import caption_accuracy
from mmcaption.demo.synthetic import Scene
from mmcaption.evaluation.answers import exact_match, normalise_answer, parse_choice
from mmcaption.evaluation.caption_metrics import caption_scores
from mmcaption.tasks import Tasks, unpadded


class BlindControl:
    """Replaces each row's image features with those of another image.

    Rows about the same image sit together in a batch, so each row takes the features of the next
    row (cyclically) that shows another image; a batch about one image only takes those of an image
    from an earlier batch.
    """

    def __init__(self) -> None:
        self.spare: tuple[torch.Tensor, Hashable] | None = None

    def __call__(self, image_embeds: torch.Tensor, image_keys: list[Hashable]) -> torch.Tensor:
        n = len(image_keys)
        rows = []
        for k in range(n):
            j = next((j % n for j in range(k + 1, k + n) if image_keys[j % n] != image_keys[k]), None)
            if j is not None:
                rows.append(image_embeds[j])
            elif self.spare is not None and self.spare[1] != image_keys[k]:
                rows.append(self.spare[0])
            else:
                raise ValueError("a blind control needs at least two different images")
        self.spare = (image_embeds[0], image_keys[0])
        return torch.stack(rows)


@torch.no_grad()
def evaluate_captions(tasks: Tasks, loader, scenes: dict[int, Scene]) -> dict[str, Any]:
    """Captions of held-out images: COCO metrics, per-attribute accuracy, blind control, chance."""
    tasks.model.eval()
    ids, captions, blind, references, examples = [], [], [], {}, []
    blind_control = BlindControl()
    for batch in loader:
        embeds = tasks.model.encode_images(batch["pixel_values"])
        generated = tasks.generate_batch(batch, image_embeds=embeds)
        captions += generated
        blind += tasks.generate_batch(batch, image_embeds=blind_control(embeds, batch["image_id"]))
        ids += batch["image_id"]
        references.update(zip(batch["image_id"], batch["references"]))
        examples += list(zip(batch["display"], generated))[: max(0, 8 - len(examples))]
    ordered = [scenes[i] for i in ids]
    chance_captions = [references[ids[(k + 1) % len(ids)]][0] for k in range(len(ids))]
    return {
        "images": len(ids),
        "metrics": caption_scores(dict(zip(ids, captions)), references),
        "accuracy": caption_accuracy(ordered, captions),
        "blind": caption_accuracy(ordered, blind),
        "chance": caption_accuracy(ordered, chance_captions),
        "examples": examples,
    }


@torch.no_grad()
def evaluate_answers(tasks: Tasks, loader, attributes: dict[tuple[str, str], str], train_answers: dict[str, Counter]) -> dict[str, Any]:
    """Exact match of answers to held-out questions (each asked alone), per attribute, blind, chance.

    Chance is the expected exact match of an answer drawn from the training answers to the same
    question text: what a model that reads the question but not the image could reach by guessing.
    """
    tasks.model.eval()
    rows = []
    blind_control = BlindControl()
    for batch in loader:
        embeds = tasks.model.encode_images(batch["pixel_values"])
        seen = tasks.generate_batch(batch, image_embeds=embeds)
        blind = tasks.generate_batch(batch, image_embeds=blind_control(embeds, batch["id"]))
        rows += list(zip(batch["id"], batch["question"], batch["answer"], seen, blind))
    # multiple-choice turns are scored by evaluate_choices
    rows = [row for row in rows if not attributes.get((row[0], row[1]), "").startswith("choice-")]
    by_attribute: dict[str, list[bool]] = defaultdict(list)
    for record_id, question, answer, prediction, _ in rows:
        by_attribute[attributes.get((record_id, question), "other")].append(normalise_answer(prediction) == normalise_answer(answer))

    def chance(question: str, answer: str) -> float:
        counts = train_answers.get(question, Counter())
        return counts[normalise_answer(answer)] / max(sum(counts.values()), 1)

    return {
        "questions": len(rows),
        "exact_match": exact_match([r[3] for r in rows], [r[2] for r in rows]),
        "by_attribute": {name: sum(hits) / len(hits) for name, hits in sorted(by_attribute.items())},
        "blind": exact_match([r[4] for r in rows], [r[2] for r in rows]),
        "chance": sum(chance(r[1], r[2]) for r in rows) / max(len(rows), 1),
        "examples": [{"question": r[1], "answer": r[2], "generated": r[3]} for r in rows[:5]],
    }


@torch.no_grad()
def evaluate_choices(tasks: Tasks, datamodule: MultipleChoiceDataModule) -> dict[str, float]:
    """Multiple-choice accuracy by likelihood and by generation, each with its blind control (another
    image's features in place of the question's own)."""
    tasks.model.eval()
    results = {}
    for method in ("likelihood", "generation"):
        datamodule.method = method
        datamodule.setup("predict")
        correct = blind_correct = total = 0
        chance = 0.0
        blind_control = BlindControl()
        for batch in datamodule.predict_dataloader():
            embeds = tasks.model.encode_images(batch["pixel_values"])
            answers = [record["answer"] for record in batch["record"]]
            prompts = unpadded(batch["input_ids"], batch["attention_mask"])
            blind_embeds = blind_control(embeds, [record["img_path"] for record in batch["record"]])
            if method == "likelihood":
                choices, _ = tasks.choose(prompts, batch["option_ids"], embeds)
                blind, _ = tasks.choose(prompts, batch["option_ids"], blind_embeds)
            else:  # the letter only: reading the option's text would not show whether the model maps it to its letter
                choices = [parse_choice(text) for text in tasks.generate_batch(batch, image_embeds=embeds)]
                blind = [parse_choice(text) for text in tasks.generate_batch(batch, image_embeds=blind_embeds)]
            blind_correct += sum(b == a for b, a in zip(blind, answers))
            correct += sum(c == a for c, a in zip(choices, answers))
            total += len(answers)
            chance += sum(1 / len(options) for options in batch["options"])
        results[method] = correct / total
        results[f"{method}_blind"] = blind_correct / total
    results["chance"] = chance / total
    return results


def train_answer_counts(train_file: Path) -> dict[str, Counter]:
    """How often each answer was given to each question text in the training conversations."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for record in json.loads(Path(train_file).read_text()):
        for _, question, answer in record["qa"]:
            counts[question][normalise_answer(answer)] += 1
    return counts


def question_attributes(val_file: Path) -> dict[tuple[str, str], str]:
    return {(record["id"], q): attribute for record in json.loads(Path(val_file).read_text()) for attribute, q, _ in record["qa"]}


def steps_to_reach(series: list[tuple[int, float]], level: float) -> int | None:
    """The first logged step at which a curve reaches ``level``."""
    return next((step for step, value in series if value >= level), None)


def render_examples(examples: list[tuple[torch.Tensor, str]], path: Path) -> Path:
    """A PNG of held-out images, each with its generated caption underneath."""
    tile, text_height, columns = 160, 44, 4
    rows = (len(examples) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * tile, rows * (tile + text_height)), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (display, caption) in enumerate(examples):
        x, y = (k % columns) * tile, (k // columns) * (tile + text_height)
        image = Image.fromarray(display.permute(1, 2, 0).numpy()).resize((tile - 8, tile - 8), Image.NEAREST)
        canvas.paste(image, (x + 4, y + 4))
        draw.multiline_text((x + 4, y + tile), "\n".join(textwrap.wrap(caption, 26)[:3]), fill="black", spacing=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path

