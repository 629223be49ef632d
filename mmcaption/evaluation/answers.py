"""Exact-match scoring of short answers."""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+")


def normalise_answer(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of answers equal to the reference after lower-casing and dropping punctuation."""
    pairs = list(zip(predictions, references, strict=True))
    return sum(normalise_answer(p) == normalise_answer(r) for p, r in pairs) / max(len(pairs), 1)
