"""LLaVA-Instruct: read the conversation JSON, check every record, preprocess into Arrow.

A record is ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}, ...]}`` with
``image`` relative to an image root (COCO ``train2017/`` for LLaVA-Instruct-150k); ShareGPT-style
files' ``images`` (a list of one) and ``messages`` of ``{"role": "user"|"assistant"|"system",
"content"}`` read alike, ``content`` a string or a list of text and image parts (TRL's layout). Each conversation stays whole: one sequence, loss on every assistant turn
(see ``templates.py``).
"""

from __future__ import annotations

import functools
import posixpath
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from transformers import PreTrainedTokenizerBase

from mmcaption.data import tables
from mmcaption.data.caption_cells import caption_text
from mmcaption.data.conversation_fields import ROLES, either, image_of, turns_of, with_question_image
from mmcaption.data.image_pass import Unchecked
from mmcaption.data.image_sources import coco2014_copies
from mmcaption.data.records import (
    BadRecords,
    DataError,
    JsonLines,
    existing_spelling,
    may_name_unsigned_images,
    read_json_list,
    unsigned_images,
)
from mmcaption.data.sampling import held_out, held_out_keys
from mmcaption.data.split_build import write_image_text_split
from mmcaption.prompts import OTHER_PLACEHOLDERS, ConversationTemplate, image_placeholders, strip_image_placeholder

IMAGE_FEATURES = datasets.Features({"file_name": datasets.Value("string"), "image": datasets.Value("binary")})
CONVERSATION_FEATURES = datasets.Features({
    "image_index": datasets.Value("int32"), "id": datasets.Value("string"),
    "input_ids": datasets.Sequence(datasets.Value("int32")), "labels": datasets.Sequence(datasets.Value("int32")),
    "turns": datasets.Value("int16"), "turns_dropped": datasets.Value("int16"),
    "questions": datasets.Sequence(datasets.Value("string")), "answers": datasets.Sequence(datasets.Value("string")),
})


def turn_counts(rows) -> tuple[int, int]:
    """``(kept, dropped)`` question-answer turns of a preprocessed conversation table (its ``turns`` and ``turns_dropped``)."""
    return tuple(int(np.asarray(rows.column(name).to_numpy(zero_copy_only=False)).sum()) for name in ("turns", "turns_dropped"))


# What max_length does to a conversation that does not fit, as counted in the split's summary.
TURNS_DROPPED = "conversations with later turns dropped whole to fit max_length"
ANSWER_CUT = "first answers cut to fit max_length (kept, without their end-of-text token)"
TEXT_ONLY = "text-only conversations (no image: the cross-attention is skipped for them)"
LEADING_ANSWER = "conversations that open with an assistant turn: that turn dropped (as LLaVA's training does)"
UNANSWERED_LAST = "conversations that end with an unanswered question: that question dropped, the turns before kept"
SYSTEM_DROPPED = ("conversations with a system turn of their own (or a \"system\" key): that turn dropped (data.system_prompt "
                  "is the one used)")
EMPTY_TURN_CUT = "conversations cut at an empty turn (after the first answer): the turns before it kept"
SEVERAL_PLACEHOLDERS = "conversations with several <image> placeholders for their one image (seen once, through cross-attention)"


@dataclass
class Conversation:
    id: str
    image: str | None  # None: a text-only conversation (LLaVA-1.5's mix has tens of thousands)
    turns: list[tuple[str, str]]  # (question, answer)
    dropped: tuple[str, ...] = ()  # what was dropped from the record as LLaVA's training drops it (notes, counted if kept)
    named: bool = True  # the record has its own id (else ``id`` is its place in the file, "#<position>")
    side: str = ""  # what its train / val side is a hash of (split_key)
    place: str = ""  # "record 4" in a list, "line 5" in JSON Lines (ids repeat: LLaVA-Instruct-150k's name an image,
    # talked about up to 3 times)

    @property
    def where(self) -> str:
        """The record as messages name it: its place, and its id where it has one."""
        return f"{self.place} (id {self.id})" if self.named else self.place


def in_split(record_id: str, val_fraction: float, split: str) -> bool:
    """Stable hash split of one file into train and val: the same on every run and every rank."""
    return held_out(record_id, val_fraction) == (split == "val")


def split_key(record: object, position: int) -> str:
    """What a record's side is a hash of: its image, so that no picture is both trained on and validated (LLaVA-1.5's
    mix talks about one COCO photo under several subsets' ids; ShareGPT-style files have no ids); without one image,
    its id; else its place."""
    if isinstance(record, dict):
        image = either(record, "image", "images")
        image = image[0] if isinstance(image, list) and len(image) == 1 else image
        if isinstance(image, str) and image:  # one photo spelled two ways (./, backslashes) on one side
            return f"image {tidy_path(image)}"
        if record.get("id") not in (None, ""):
            return str(record["id"])
    return f"#{position}"


def tidy_path(image: str) -> str:
    """An image path as :func:`posixpath.normpath` writes it, Windows' backslashes as slashes, accents composed (NFC)."""
    return posixpath.normpath(unicodedata.normalize("NFC", image).replace("\\", "/"))


# an image path that tidy_path changes, as JSON holds it (./, //, /./, /../, a trailing /, Windows' backslashes; not a
# URL's //), and one with a character beyond ASCII (read then: NFC composes accents, kana and Hangul that macOS decomposes)
UNTIDY_IMAGE_PATH = rb'"images?"\s*:\s*\[?\s*"(?:\./|[^"]*?(?:\\\\|(?<!:)//|/\./|/\.\./|/\.?"))'
NON_ASCII_IMAGE_PATH = rb'"images?"\s*:\s*\[?\s*"[^"]*?(?:[\x80-\xff]|\\u)'


def untidy_image_paths(file: Path) -> bool:
    """Whether ``file`` names an image by a path that :func:`tidy_path` changes, so that its records' sides are not those
    an earlier release hashed (its cache is built anew): looked for in its bytes, the file read only when a path holds a
    character beyond ASCII."""
    data = file.read_bytes()
    if re.search(UNTIDY_IMAGE_PATH, data):
        return True
    if not re.search(NON_ASCII_IMAGE_PATH, data):
        return False
    try:
        content = read_json_list(file, "LLaVA conversation file")
    except DataError:  # said as it is read
        return False
    images = (either(record, "image", "images") for record in content if isinstance(record, dict))
    return any(isinstance(image, str) and image and tidy_path(image) != image
               for image in (i[0] if isinstance(i, list) and len(i) == 1 else i for i in images))


def _described(key: str) -> str:
    return f"image {key[6:]!r}" if key.startswith("image ") else f"record {key[1:]}" if key.startswith("#") else f"id {key!r}"


def llava_unsigned_images(file: Path, image_root: Path) -> list[tuple[str, str | None]]:
    """The images ``file`` names that ``image_root``'s signature does not follow (:func:`unsigned_images`: outside it,
    or without an image's suffix), ``(path as written, where it is or None)`` each, for the cache to follow them too."""
    table = file.suffix.lower() in (".csv", ".tsv")  # a VQA sheet: its image column, whatever its bytes
    keys = rb'"(?:images?|path|img_path|image_path|img|image_file|file_name|filename)"'  # (VQA files' image keys too)
    if not table and not may_name_unsigned_images(file, keys + rb'\s*:\s*(?:\[\s*|\{[^{}]*?"path"\s*:\s*)?'):
        return []  # (datasets' and Qwen's layouts too)
    content = _table_records(file) if table else read_json_list(file, "LLaVA conversation file")
    content = [with_question_image(record) for record in content] if isinstance(content, list) else []
    scratch = BadRecords(file, "skip")
    return unsigned_images((image_of(record, "", scratch)[1] for record in content if isinstance(record, dict)), image_root)


def parse_record(position: int, record: object, records: BadRecords, place: str | None = None) -> Conversation | None:
    """Check one record; ``None`` (after reporting it) if it cannot be used. ``place``: how messages name its place
    (its line in JSON Lines; ``record <position>`` by default)."""
    place = place or f"record {position}"
    if not isinstance(record, dict):
        records.bad("malformed record", f"{place} is not an object")
        return None
    named = record.get("id") not in (None, "")  # null: as if missing
    record_id = str(record["id"]) if named else f"#{position}"
    name = f"{place} (id {record_id})"
    usable, image = image_of(record, name, records)
    turns = turns_of(record, name, records) if usable else None
    if turns is None:
        return None
    dropped: list[str] = []
    start = 0
    if turns[0][0] == "system" and len(turns) > 1:
        start = 1  # its own system prompt: the template's (data.system_prompt) is the one trained and used
        dropped.append(SYSTEM_DROPPED)
    elif isinstance(record.get("system"), str) and record["system"].strip():  # LLaMA-Factory's "system" column
        dropped.append(SYSTEM_DROPPED)
    if turns[start][0] == "gpt" and len(turns) > start + 1:
        start += 1  # an assistant turn before any question: dropped, as LLaVA's own training drops it
        dropped.append(LEADING_ANSWER)
    answered = next((index for index, (role, value) in enumerate(turns) if role == "gpt" and image_placeholders(value)), None)
    if answered is not None:  # trained as the text "<image>", which the model would learn to write
        records.bad("<image> in an answer", f"{name}: turn {answered} (an answer) holds <image> (or an image part): the "
                                            "image goes with a question")
        return None
    placeholders = sum(len(image_placeholders(value)) for role, value in turns if role == "human")
    if placeholders and image is None:
        records.bad("<image> without an image", f"{name} asks about an <image> but names none (in 'image', or 'images')")
        return None
    other = next((m.group(0) for _, value in turns if (m := OTHER_PLACEHOLDERS.search(value))), None)
    if other is not None:  # another model's way of placing the image: trained as that text, without the image
        records.bad("another model's image placeholder",
                    f"{name} places its image as {other[:40]!r}, another model's placeholder (Qwen-VL's <img>, MiniGPT-4's "
                    "<ImageHere>): write <image> and name the image in 'image'")
        return None
    if placeholders > 1:
        dropped.append(SEVERAL_PLACEHOLDERS)
    pairs: list[tuple[str, str]] = []
    for index, (role, value) in enumerate(turns[start:], start=start):
        expected = "human" if (index - start) % 2 == 0 else "gpt"
        if role != expected:
            records.bad(
                "turns do not alternate" if role in ROLES.values() else "unknown role",
                f"{name}: turn {index} is from {role!r}, expected {expected!r}"
                + (" (a system turn is read first only: fold it into the next question, or remove it)" if role == "system" else
                   " (turns must alternate human, gpt, human, ...)" if role in ROLES.values() else
                   f": a role mmcaption does not read (the roles are {', '.join(ROLES)}); rename it to the one it means"),
            )
            return None
        # without invisible marks at its edges too (a zero-width space alone was trained on as an answer, as a caption is not)
        text = caption_text(strip_image_placeholder(value) if role == "human" else value)
        if not text and not (role == "human" and image_placeholders(value)):  # "<image>" alone asks about the image
            if len(pairs) > 1 or pairs and pairs[0][1]:  # the turns before it are whole: kept, the rest dropped
                if role == "gpt":
                    pairs.pop()  # the question left without its answer
                dropped.append(EMPTY_TURN_CUT)
                break
            records.bad("empty turn", f"{name}: turn {index} ({role}) is empty")
            return None
        if role == "human":
            pairs.append((text, ""))
        else:
            pairs[-1] = (pairs[-1][0], text)
    if len(pairs) > 1 and not pairs[-1][1]:
        pairs.pop()  # a last question without its answer: nothing to learn from it; the turns before are kept
        dropped.append(UNANSWERED_LAST)
    if not pairs or not pairs[-1][1]:
        records.bad("no assistant turn", f"{name} ends with a human turn that has no assistant answer")
        return None
    return Conversation(record_id, image, pairs, tuple(dropped), named, split_key(record, position), place)


def _what_it_is(content: object) -> str:
    """What a JSON object given for conversations is, when it is a known file of another kind, and what to do."""
    keys = set(content) if isinstance(content, dict) else set()
    asked = ("; the instruct stage trains on conversations (LLaVA's layout, as llava_v1_5_mix665k.json holds VQAv2's) or a "
             "table of image, question, answer")
    if "questions" in keys:
        return f": it is VQAv2's questions file (its answers are in the annotations file){asked}"
    if {"images", "annotations"} <= keys:
        return ": it is a COCO captions file, which trains the caption stage (configs/caption.yaml, source coco)"
    if "annotations" in keys:
        return f": it is VQAv2's annotations file (the human answers of its questions file){asked}"
    return ""


def _table_records(file: Path) -> JsonLines:
    """The rows of a VQA table (``image,question,answer``, as a spreadsheet saves it; the original scripts' multiple-choice
    CSV, ``img_path``) as records, each with its line (its image column read by :func:`with_question_image`)."""
    header, rows = tables.read_table_rows(file)
    if not any(name.lower() in tables.IMAGE_COLUMNS for name in header):  # (image_id: trained without their images)
        raise DataError(f"{file} has no image column ({', '.join(tables.IMAGE_COLUMNS[:6])}, ...; its columns are {header}): "
                        "each row's image is a path under image_root, in a column named image")
    records = JsonLines({name: value for name, value in zip(header, fields) if name} for _, fields in rows)
    records.lines = [line for line, _ in rows]
    return records


def read_llava(
    file: Path, image_root: Path, records: BadRecords, split: str | None = None, val_fraction: float = 0.0
) -> list[Conversation]:
    """Parse and check a LLaVA JSON file; missing images are counted all at once."""
    content = _table_records(file) if file.suffix.lower() in (".csv", ".tsv") else read_json_list(file, "LLaVA conversation file")
    if isinstance(content, list):  # a VQA file's records: each image under "image", read and hashed by it
        content[:] = [with_question_image(record) for record in content]
    if not isinstance(content, list):
        raise DataError(f"{file} is not a JSON list of conversations{_what_it_is(content)}")
    # Ids repeat in real files: LLaVA-Instruct-150k keys records by COCO image id, and its three subsets
    # (conversation, detail, reasoning) talk about the same images. A record is what it says; only a
    # record that repeats both the id and the conversation of an earlier one is a duplicate (skipped and
    # counted, never fatal). The hash split is by image, so an image's conversations stay on one side whatever
    # their ids (split_key); records without an image by id. Records without ids (a file
    # concatenated twice, say) are duplicates by image and conversation alone.
    parsed_records = []
    elsewhere = BadRecords(records.source, records.on_bad_record)  # the other side's: counted by that side
    with records.all_found_first(then_refuse=False):  # under "error", every bad record refused at once (by missing_images)
        for position, record in enumerate(content):
            # a bad record is counted on the side it would have gone to, once, not in both splits' reports
            on_side = split is None or records.on_bad_record == "error" or in_split(split_key(record, position), val_fraction, split)
            place = content.place(position) if isinstance(content, JsonLines) else None
            conversation = parse_record(position, record, records if on_side else elsewhere, place)
            if conversation is not None:
                parsed_records.append(conversation)
    keys = {conversation.side for conversation in parsed_records}

    def images_there(key: str) -> bool:
        return all(c.image is None or (image_root / existing_spelling(image_root, c.image)).is_file()
                   for c in parsed_records if c.side == key)

    held = held_out_keys(keys, val_fraction, images_there) if split is not None else set()
    if split is not None and held and not any(in_split(key, val_fraction, "val") for key in held):
        rank_zero_info(f"{file}: with val_fraction {val_fraction}, the hash holds none of its {len(parsed_records):,} "
                       f"records out for validation; the conversations of {_described(next(iter(held)))} are held out instead")
    conversations, seen = [], set()
    for conversation in parsed_records:
        ours = split is None or (conversation.side in held) == (split == "val")
        key = (conversation.id if conversation.named else None, conversation.image, tuple(conversation.turns))
        if key in seen:
            if ours:  # counted on the side the copy would have gone to
                records.note("duplicate records skipped (the same image and conversation as an earlier record, and its id or none)",
                             example=conversation.where)
            continue
        seen.add(key)
        if not ours:
            continue
        for kind in conversation.dropped:  # counted for the records this split keeps
            records.note(kind, example=conversation.where)
        conversations.append(conversation)

    if split is not None and parsed_records and not conversations:  # "nothing usable" would blame the file
        records.raise_deferred()  # the bad records first
        advice = "raise val_fraction, or give val_file" if split == "val" else "lower val_fraction"
        if len(keys) == 1:  # every record on one side, whatever the fraction
            only = next(iter(keys))
            advice = (f"all of them are about the {_described(only)}, and a picture's conversations stay on one side: give "
                      "val_file" if only.startswith("image ") else
                      f"all of them have the {_described(only)}: give each record its own id (or none), or give val_file")
        raise DataError(f"{file}: with val_fraction {val_fraction}, none of its {len(parsed_records):,} usable records "
                        f"falls on the {split} side (a record's side is a hash of its image, or of its id if it has "
                        f"none); {advice}")
    for conversation in conversations:  # as written, or with Windows' backslashes or the other Unicode form (macOS)
        if conversation.image is not None:
            conversation.image = existing_spelling(image_root, conversation.image)
    missing = [c for c in conversations if c.image is not None and not (image_root / c.image).is_file()]
    if missing and (copies := coco2014_copies([c.image for c in missing], image_root, file)):  # a COCO 2014 download
        for conversation in missing:
            conversation.image = copies.get(conversation.image, conversation.image)
        missing = [c for c in missing if not (image_root / c.image).is_file()]
    records.missing_images(  # with the bad records kept above, in one message
        [(c.where, image_root / c.image) for c in missing], sum(c.image is not None for c in conversations),
        "conversations refer to images", image_root,
    )
    missing_ids = {id(c) for c in missing}
    return [c for c in conversations if id(c) not in missing_ids]


def _undecodable(path: Path, names: list[str], problem: str) -> list[str]:
    return [f"{name}: {path} cannot be decoded: {problem}" for name in names]


def write_instruct_split(
    conversations: list[Conversation],
    image_root: Path,
    tokenizer: PreTrainedTokenizerBase,
    template: ConversationTemplate,
    max_length: int,
    target: Path,
    records: BadRecords,
    metadata: dict,
    image_size: int | None = None,
) -> Path:
    """Write ``target/images`` (each image once, shrunk to ``image_size`` if given) and
    ``target/conversations`` (tokens and labels).

    Conversations whose first question leaves no room for an answer within ``max_length`` are found
    before any image is read, all at once; images that cannot be decoded all at the end of the image pass
    (under ``on_bad_record: error``, one run names every bad record, not one per run)."""
    too_long = {}
    lengths = template.first_question_lengths([conversation.turns[0][0] for conversation in conversations], tokenizer)
    for conversation, needed in zip(conversations, lengths):
        if needed >= max_length:
            too_long[id(conversation)] = (f"{conversation.where}: the first question needs {needed} tokens with the template, "
                                          f"leaving no room for an answer within max_length={max_length}")
    records.all_at_once("too long", list(too_long.values()),
                        f"{len(too_long)} of {len(conversations)} conversations do not fit max_length={max_length}",
                        "Raise max_length, or shorten them",  # (skipped, none would be left: not offered; under skip, said so)
                        every=len(too_long) == len(conversations) and records.on_bad_record == "error")
    conversations = [c for c in conversations if id(c) not in too_long]
    by_image: dict[str, list[Conversation]] = {}
    for conversation in conversations:
        by_image.setdefault(conversation.image, []).append(conversation)

    def entries() -> Iterator[tuple[dict | None, list[Conversation]]]:
        for image, group in by_image.items():
            if image is None:  # text-only conversations: no image row
                records.note(TEXT_ONLY, len(group))
                yield None, group
                continue
            names = [conversation.where for conversation in group]
            yield {"file_name": image, "image": Unchecked(image_root / image, functools.partial(_undecodable, image_root / image, names))}, group

    def conversation_rows(image_index: int, group: list[Conversation]) -> Iterator[dict]:
        for conversation in group:
            # never raises here: conversations whose first question does not fit were taken out above
            input_ids, labels, kept, answer_cut = template.encode(conversation.turns, tokenizer, max_length)
            if kept < len(conversation.turns):
                records.note(TURNS_DROPPED, example=conversation.where)
            if answer_cut:
                records.note(ANSWER_CUT, example=conversation.where)
            yield {
                "image_index": image_index,
                "id": conversation.id,
                "input_ids": input_ids,
                "labels": labels,
                "turns": kept,
                "turns_dropped": len(conversation.turns) - kept,
                "questions": [question for question, _ in conversation.turns[:kept]],
                "answers": [answer for _, answer in conversation.turns[:kept]],
            }

    return write_image_text_split(
        target, entries(), conversation_rows, IMAGE_FEATURES, "conversations", CONVERSATION_FEATURES, records, metadata,
        image_size, image_total=sum(image is not None for image in by_image),
    )
