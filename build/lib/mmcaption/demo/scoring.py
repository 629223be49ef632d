"""Scoring on the synthetic demo set, where every image's content is known exactly.

A generated caption *names an attribute correctly* when the attribute's words in it are exactly the
scene's: the colours it mentions are the scene's colours, the shapes its shapes, and its position,
count or relation is the scene's. Naming nothing, or naming something extra, is wrong.
"""

from __future__ import annotations

import re
from collections import defaultdict

from mmcaption.demo.synthetic import COLOURS, NUMBER_WORDS, POSITIONS, SHAPES, Scene

_WORD = re.compile(r"[a-z]+")
_INVERSE = {"left of": "right of", "above": "below"}


def _mentioned(words: list[str], vocabulary) -> set[str]:
    singular = {w[:-1] if w.endswith("s") and w[:-1] in vocabulary else w for w in words}
    return {w for w in singular if w in vocabulary}


def caption_attributes(scene: Scene, caption: str) -> dict[str, bool]:
    """Which of the scene's attributes the caption names correctly."""
    text = caption.lower()
    words = _WORD.findall(text)
    colours = {scene.colour} | ({scene.other_colour} if scene.other_colour else set())
    shapes = {scene.shape} | ({scene.other_shape} if scene.other_shape else set())
    result = {
        "colour": _mentioned(words, COLOURS) == colours,
        "shape": _mentioned(words, SHAPES) == shapes,
    }
    if scene.relation is not None:
        c, s, oc, os_ = scene.colour, scene.shape, scene.other_colour, scene.other_shape
        forward = re.search(rf"{c} {s}( is)? {scene.relation} (a |the )?{oc} {os_}", text)
        backward = re.search(rf"{oc} {os_}( is)? {_INVERSE[scene.relation]} (a |the )?{c} {s}", text)
        result["relation"] = bool(forward or backward)
    elif scene.count > 1:
        result["count"] = _mentioned(words, set(NUMBER_WORDS.values()) | {"single"}) == {NUMBER_WORDS[scene.count]}
    else:
        mentioned = _mentioned(words, POSITIONS)
        result["position"] = mentioned == {scene.position}
    return result


def caption_accuracy(scenes: list[Scene], captions: list[str]) -> dict[str, float]:
    """Share of captions naming each attribute correctly, and ``all``: every attribute right."""
    hits, totals = defaultdict(int), defaultdict(int)
    for scene, caption in zip(scenes, captions, strict=True):
        attributes = caption_attributes(scene, caption)
        for name, ok in attributes.items():
            hits[name] += ok
            totals[name] += 1
        hits["all"] += all(attributes.values())
        totals["all"] += 1
    return {name: hits[name] / totals[name] for name in totals}
