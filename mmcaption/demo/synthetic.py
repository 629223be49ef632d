"""A synthetic captioning set of simple shapes, written in the official COCO captions layout.

Every caption names attributes that only the image tells - colour, shape, position, count and the
relation between two objects - in several phrasings, so a language model cannot guess it from text
alone. The set is a deterministic function of its seed, and the real COCO loader reads it.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from mmcaption.evaluation.answers import LETTERS
from mmcaption.prompts import ConversationTemplate, bos_token_id, listed_options_question

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "diamond")
POSITIONS = ("left", "right", "top", "bottom", "center")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
BACKGROUND = (90, 90, 90)
OBJECT_RADIUS = 5 / 32  # of the image size: 10 pixels at 64, so a shape spans more than one 16-pixel patch


@dataclass(frozen=True)
class Scene:
    """What an image shows: ``count`` objects of one colour and shape at ``position``, or two
    different objects side by side (``relation`` "left of" / "above")."""

    colour: str
    shape: str
    position: str
    count: int = 1
    other_colour: str | None = None
    other_shape: str | None = None
    relation: str | None = None


def random_scene(rng: random.Random) -> Scene:
    """36% one object at a position, 24% two or three alike, 40% two different objects in relation
    (the hardest kind - which shape and colour is where - gets the largest share)."""
    kind = rng.random()
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    if kind < 0.36:
        return Scene(colour, shape, rng.choice(POSITIONS))
    if kind < 0.6:
        return Scene(colour, shape, "center", count=rng.choice((2, 3)))
    other_colour = rng.choice([c for c in COLOURS if c != colour])
    return Scene(
        colour, shape, "center", other_colour=other_colour, other_shape=rng.choice(SHAPES),
        relation=rng.choice(("left of", "above")),
    )


def captions_for(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """``n`` distinct phrasings of what the scene shows (fewer if the templates run out)."""
    c, s = scene.colour, scene.shape
    if scene.relation is not None:
        # Canonical order, as captions usually have it: the left (or upper) object comes first.
        oc, os_, rel = scene.other_colour, scene.other_shape, scene.relation
        templates = [
            f"a {c} {s} {rel} a {oc} {os_}",
            f"a {c} {s} is {rel} a {oc} {os_}",
            f"there is a {c} {s} {rel} a {oc} {os_}",
            f"two shapes: a {c} {s} {rel} a {oc} {os_}",
            f"a picture of a {c} {s} {rel} a {oc} {os_}",
            f"on a gray background, a {c} {s} {rel} a {oc} {os_}",
        ]
    elif scene.count > 1:
        word = NUMBER_WORDS[scene.count]
        templates = [
            f"{word} {c} {s}s",
            f"there are {word} {c} {s}s",
            f"{word} {c} {s}s on a gray background",
            f"a picture of {word} {c} {s}s",
            f"{word} {s}s, all of them {c}",
            f"an image with {word} {c} {s}s",
        ]
    else:
        where = "in the center" if scene.position == "center" else f"on the {scene.position}"
        templates = [
            f"a {c} {s} {where}",
            f"there is a {c} {s} {where}",
            f"one {c} {s} {where}",
            f"a picture of a {c} {s} {where}",
            f"a {c} {s} {where} of the image",
            f"a single {c} {s} {where}",
        ]
    return rng.sample(templates, min(n, len(templates)))


def draw_scene(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    r = round(size * OBJECT_RADIUS)
    third = size // 3
    centres = {
        "left": (size // 5, size // 2),
        "right": (size - size // 5, size // 2),
        "top": (size // 2, size // 5),
        "bottom": (size // 2, size - size // 5),
        "center": (size // 2, size // 2),
    }

    def jitter(xy: tuple[int, int]) -> tuple[int, int]:
        d = max(1, size // 32)
        return xy[0] + rng.randint(-d, d), xy[1] + rng.randint(-d, d)

    if scene.relation is not None:
        if scene.relation == "left of":
            first, second = (third - size // 12, size // 2), (2 * third + size // 12, size // 2)
        else:
            first, second = (size // 2, third - size // 12), (size // 2, 2 * third + size // 12)
        _draw_shape(draw, scene.shape, jitter(first), r, COLOURS[scene.colour])
        _draw_shape(draw, scene.other_shape, jitter(second), r, COLOURS[scene.other_colour])
    elif scene.count > 1:
        xs = [size * (i + 1) // (scene.count + 1) for i in range(scene.count)]
        # small enough that neighbours never touch, whatever the jitter: the count must be visible
        small = max(2, min(r * 3 // 4, size // (2 * (scene.count + 1)) - 3))
        for x in xs:
            _draw_shape(draw, scene.shape, jitter((x, size // 2)), small, COLOURS[scene.colour])
    else:
        _draw_shape(draw, scene.shape, jitter(centres[scene.position]), r, COLOURS[scene.colour])
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre: tuple[int, int], r: int, colour) -> None:
    x, y = centre
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif shape == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
    elif shape == "diamond":
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=colour)
    else:
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)


def write_coco_split(
    root: str | Path,
    split: str,
    num_images: int,
    seed: int,
    image_size: int = 64,
    captions_per_image: int = 5,
    first_image_id: int = 1,
    held_out_from: str | None = None,
) -> Path:
    """Write ``num_images`` synthetic images and their captions as ``root/annotations/captions_{split}.json``
    and ``root/{split}/*.jpg``. Each image entry also records its ``scene`` for evaluation.

    With ``held_out_from``, a split already written under ``root``, none of the images is byte for byte
    one of that split's: the scenes are few enough that a scene and its placement come up again, and
    such a scene is placed anew (so that held-out figures are of images never trained on, and of the same mix of scenes).

    Returns the annotation file's path.
    """
    root = Path(root)
    rng = random.Random(f"{seed}-{split}")
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    seen = {_digest(path.read_bytes()) for path in (root / held_out_from).iterdir()} if held_out_from else set()
    images, annotations = [], []
    for offset in range(num_images):
        image_id = first_image_id + offset
        scene = random_scene(rng)
        for tries in itertools.count(1):  # the same scene placed anew first: the held-out mix of scenes stays the drawn one
            buffer = io.BytesIO()
            draw_scene(scene, image_size, rng).save(buffer, format="JPEG", quality=95)
            if _digest(buffer.getvalue()) not in seen:
                break
            if tries % 50 == 0:  # (every placement of it trained on, as like as not)
                scene = random_scene(rng)
        file_name = f"{image_id:012d}.jpg"
        (image_dir / file_name).write_bytes(buffer.getvalue())
        images.append(
            {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size, "scene": asdict(scene)}
        )
        for caption in captions_for(scene, rng, captions_per_image):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": caption})
    annotation_file = root / "annotations" / f"captions_{split}.json"
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations}))
    return annotation_file


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def demo_corpus(seed: int = 0, num_scenes: int = 2000) -> list[str]:
    """Every phrasing the generator can produce for ``num_scenes`` random scenes, captions and
    question-answer pairs (the text that the demo's tokenizer is trained on)."""
    rng = random.Random(f"{seed}-corpus")
    corpus = []
    for _ in range(num_scenes):
        scene = random_scene(rng)
        corpus += captions_for(scene, rng, n=6)
        corpus += [f"{question} {answer}" for _, question, answer in questions_for(scene, rng)]
    template = ConversationTemplate()
    return corpus + [f"{template.system}\n{template.user}{template.assistant}"] * 10


def _base_questions(scene: Scene) -> list[tuple[str, str, str, str, list[str]]]:
    """``(attribute, question, short answer, sentence answer, other plausible short answers)``."""
    c, s = scene.colour, scene.shape
    objects = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
    if scene.relation is not None:
        oc, os_ = scene.other_colour, scene.other_shape
        other_side = "right of" if scene.relation == "left of" else "below"
        return [
            ("relation", f"What is {scene.relation} the {oc} {os_}?", f"{c} {s}", f"A {c} {s} is {scene.relation} the {oc} {os_}.", objects),
            ("colour", f"What colour is the {os_} {other_side} the {s}?", oc, f"That {os_} is {oc}.", list(COLOURS)),
            ("count", "How many shapes are there?", "two", "There are two shapes.", ["one", "three", "four"]),
        ]
    if scene.count > 1:
        word = NUMBER_WORDS[scene.count]
        return [
            ("count", f"How many {s}s are there?", word, f"There are {word} {s}s.", ["one", "two", "three", "four"]),
            ("colour", f"What colour are the {s}s?", c, f"The {s}s are {c}.", list(COLOURS)),
            ("shape", "What shape are the objects?", s, f"They are {s}s.", list(SHAPES)),
        ]
    where = "in the center" if scene.position == "center" else f"on the {scene.position}"
    return [
        ("colour", f"What colour is the {s}?", c, f"The {s} is {c}.", list(COLOURS)),
        ("shape", f"What shape is the {c} object?", s, f"It is a {s}.", list(SHAPES)),
        ("position", f"Where is the {s}?", scene.position, f"The {s} is {where}.", list(POSITIONS)),
        ("count", f"How many {s}s are there?", "one", f"There is one {s}.", ["two", "three", "four"]),
    ]


def _short_answer_question(question: str, answer: str) -> str:
    return f"{question} Answer with one word." if " " not in answer else f"{question} Answer briefly."


def questions_for(scene: Scene, rng: random.Random) -> list[tuple[str, str, str]]:
    """``(attribute, question, answer)`` about a scene; about half ask for a short answer."""
    out = []
    for attribute, question, short, sentence, _ in _base_questions(scene):
        if rng.random() < 0.5:
            out.append((attribute, _short_answer_question(question, short), short))
        else:
            out.append((attribute, question, sentence))
    return out


def choice_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, list[str], str]]:
    """``(attribute, question, four options, correct option)`` about a scene."""
    out = []
    for attribute, question, short, _, alternatives in _base_questions(scene):
        options = [short] + rng.sample([a for a in dict.fromkeys(alternatives) if a != short], 3)
        rng.shuffle(options)
        out.append((attribute, _short_answer_question(question, short), options, short))
    return out


def write_llava_split(
    root: str | Path, coco_root: str | Path, split: str, seed: int, turns: tuple[int, int] = (2, 3), choice_share: float = 0.3
) -> Path:
    """Write LLaVA-layout conversations about the images of ``coco_root/annotations/captions_{split}.json``
    to ``root/instruct_{split}.json``, image paths relative to ``coco_root``: 2-3 questions each, and in
    ``choice_share`` of them a multiple-choice question answered with a letter (as LLaVA-1.5 mixes
    in). Each record also keeps its ``qa`` list (attribute, question, answer) for evaluation; the
    LLaVA reader ignores it."""
    root, coco_root = Path(root), Path(coco_root)
    rng = random.Random(f"{seed}-{split}-instruct")
    content = json.loads((coco_root / "annotations" / f"captions_{split}.json").read_text())
    records = []
    for image in content["images"]:
        scene = Scene(**image["scene"])
        qa = questions_for(scene, rng)
        chosen = rng.sample(qa, min(len(qa), rng.randint(*turns)))
        if rng.random() < choice_share:  # a multiple-choice turn, answered with the option's letter
            attribute, question, options, correct = rng.choice(choice_questions(scene, rng))
            chosen.append((f"choice-{attribute}", listed_options_question(question, options), LETTERS[options.index(correct)]))
        conversation = []
        for index, (_, question, answer) in enumerate(chosen):
            conversation.append({"from": "human", "value": f"<image>\n{question}" if index == 0 else question})
            conversation.append({"from": "gpt", "value": answer})
        records.append({
            "id": f"{split}-{image['id']}",
            "image": f"{split}/{image['file_name']}",
            "conversations": conversation,
            "qa": [list(item) for item in chosen],
        })
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"instruct_{split}.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def language_sequences(tokenizer, seed: int = 0, num_scenes: int = 3000) -> list[list[int]]:
    """Token sequences of the demo's language, laid out as the two stages lay them out (captions as
    ``<bos> caption <eos>``, conversations through the instruct template) but about no image: the
    text-only pretraining that makes the tiny LM know the language before it sees, as Phi-2 does."""
    rng = random.Random(f"{seed}-language")
    template = ConversationTemplate()
    bos = bos_token_id(tokenizer)
    sequences = []
    for _ in range(num_scenes):
        scene = random_scene(rng)
        for caption in captions_for(scene, rng, n=2):
            sequences.append([bos, *tokenizer(caption, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id])
        qa = questions_for(scene, rng)
        turns = [(question, answer) for _, question, answer in rng.sample(qa, rng.randint(1, len(qa)))]
        sequences.append(template.encode(turns, tokenizer, max_length=512)[0])
    return sequences


def write_multiple_choice_csv(path: str | Path, coco_root: str | Path, split: str, seed: int) -> Path:
    """Multiple-choice questions about ``split``'s images in the original scripts' CSV format (``img_path,
    Question, A, B, C, D, answer``, image paths relative to the CSV), plus an ``attribute`` column."""
    import csv

    path, coco_root = Path(path), Path(coco_root)
    rng = random.Random(f"{seed}-{split}-choice")
    content = json.loads((coco_root / "annotations" / f"captions_{split}.json").read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["img_path", "Question", "A", "B", "C", "D", "answer", "attribute"])
        for image in content["images"]:
            image_path = os.path.relpath(coco_root / split / image["file_name"], path.parent)
            # counts are left out: "how many" has a likely answer without the image (single scenes
            # are the most common), and chance must be one in four for the blind control to mean much
            questions = [q for q in choice_questions(Scene(**image["scene"]), rng) if q[0] != "count"]
            for attribute, question, options, correct in rng.sample(questions, min(2, len(questions))):
                writer.writerow([image_path, question, *options, LETTERS[options.index(correct)], attribute])
    return path
