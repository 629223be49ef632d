"""The numbers a set of yes/no questions is reported with: POPE's (accuracy, precision, recall, F1 and the share of
yes) and, for MME's questions, MME's own score (Fu et al., 2023): per category, accuracy plus "acc+" - the share of
images whose two questions are both answered right -, each out of 100, summed over its 10 perception categories (out
of 2,000) and its 4 cognition categories (out of 800), as papers and lmms-eval report it.

Plain functions over a prediction's rows: no model, no tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmcaption.evaluation.answers import YesNoTally, normalise_answer

# MME's categories, as its release names its folders and lmms-lab's copy fills its `category` column
MME_CATEGORIES = {
    "perception": ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR"),
    "cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}
MME_CATEGORY_NAMES = tuple(name for names in MME_CATEGORIES.values() for name in names)  # perception, then cognition


def mme_answer(text: str) -> str:
    """``yes``, ``no`` or ``other``, as MME's evaluation reads a model's answer (its ``eval_tool``, as lmms-eval runs
    it): lower-cased, without full stops; ``y`` and ``n`` alone; else "yes" in its first four characters, then "no"."""
    answer = text.lower().strip().replace(".", "")
    if answer in ("yes", "no"):
        return answer
    if len(answer) == 1:
        return {"y": "yes", "n": "no"}.get(answer, "other")
    return "yes" if "yes" in answer[:4] else "no" if "no" in answer[:4] else "other"


@dataclass
class YesNoScores:
    """A predict run's yes/no questions (rows whose answer key is yes or no), tallied as POPE's evaluation and, when
    every one of them has one of MME's categories (its ``category`` column) and some image was asked two of them, as
    MME's. Images are told apart by the row's ``question_id`` (lmms-lab's MME and MME's release as read here: the
    image's name, ``code_reasoning/0020.png``), else its ``image``."""

    rows: int = 0
    pope: YesNoTally = field(default_factory=YesNoTally)
    mme: dict[str, dict[str, list[bool]]] = field(default_factory=dict)  # category -> image -> each question right
    outside_mme: int = 0  # yes/no rows without one of MME's categories

    def add(self, row: dict[str, Any]) -> None:
        label = normalise_answer(str(row["answer"]))
        if label not in ("yes", "no"):
            return
        self.rows += 1
        prediction = row.get("prediction")
        if prediction is not None:  # unanswered (an image that could not be read): wrong for MME, not read for POPE
            self.pope.add(prediction, label)
        category = str(row.get("category") or "").strip()
        if category not in MME_CATEGORY_NAMES:
            self.outside_mme += 1
            return
        image = str(row.get("question_id") or row.get("image"))
        right = prediction is not None and mme_answer(str(prediction)) == label
        self.mme.setdefault(category, {}).setdefault(image, []).append(right)

    def summary(self, answered: int) -> dict[str, Any]:
        """``{"mme": ...}`` for MME's questions (some image asked its two), ``{"pope": ...}`` for another yes/no set,
        ``{}`` when not every one of the ``answered`` rows was a yes/no question."""
        if not self.rows or self.rows != answered:
            return {}
        if not self.outside_mme and any(len(rights) == 2 for images in self.mme.values() for rights in images.values()):
            return {"mme": self._mme()}
        return {"pope": self.pope.metrics()} if self.pope.counts else {}

    def _mme(self) -> dict[str, Any]:
        """As lmms-eval aggregates MME: per category, the mean over its images of accuracy + acc+ (each out of 100); an
        image not asked exactly two questions (a run stopped between them) is left out of it, and counted."""
        categories, unpaired = {}, 0
        for name, images in self.mme.items():
            pairs = [rights for rights in images.values() if len(rights) == 2]
            unpaired += len(images) - len(pairs)
            if pairs:
                accuracy, plus = sum(map(sum, pairs)) / (2 * len(pairs)), sum(map(all, pairs)) / len(pairs)
                categories[name] = {"score": 100 * (accuracy + plus), "accuracy": accuracy, "accuracy_plus": plus, "images": len(pairs)}
        totals = {}
        for kind, names in MME_CATEGORIES.items():
            present = [name for name in names if name in categories]
            if present:
                totals[kind] = {"score": sum(categories[name]["score"] for name in present), "out_of": 200 * len(names),
                                "categories": len(present), "missing": [name for name in names if name not in present]}
        ordered = [name for name in MME_CATEGORY_NAMES if name in categories]
        return {**totals, "per_category": {name: categories[name] for name in ordered}, "images_left_out": unpaired,
                "answers_read_as": "MME's evaluation: yes or no from the answer's first four characters"}


def mme_said(mme: dict[str, Any]) -> str:
    """MME's score as a predict run's closing message says it."""
    totals = []
    for kind in (kind for kind in MME_CATEGORIES if kind in mme):
        total = mme[kind]
        missing = f" ({len(total['missing'])} of its categories not asked)" if total["missing"] else ""
        totals.append(f"{kind} {total['score']:.1f} of {total['out_of']}{missing}")
    scores = ", ".join(f"{name} {s['score']:.1f} (acc {s['accuracy']:.3f}, acc+ {s['accuracy_plus']:.3f})"
                       for name, s in mme["per_category"].items())
    left = mme["images_left_out"]
    left = f"\n  {left} images not asked both their questions (a run stopped between them) are left out of it, as lmms-eval leaves them" if left else ""
    return f"; MME score (answers read as its evaluation reads them): {', '.join(totals)}\n  MME per category: {scores}{left}"
