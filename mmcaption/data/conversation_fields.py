"""A conversation record's fields as the tools that write them name them: its image (LLaVA's ``image``, ShareGPT's
``images``, a message's image part, ``datasets``' ``{"bytes", "path"}``, a ``file://`` URI; another key, which would
be trained as text alone, refused), and its turns (``conversations`` of ``from`` / ``value``, or ``messages`` of
``role`` / ``content`` as a string or as OpenAI-style parts)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mmcaption.data.records import BadRecords
from mmcaption.data.tables import IMAGE_COLUMNS, literal_in_cell, number_text
from mmcaption.evaluation.answers import LETTERS
from mmcaption.file_spellings import PATTERN_MARKS
from mmcaption.images import is_url
from mmcaption.prompts import listed_options_question

ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system", "developer": "system"}
# keys other tools name a record's image by, which this reader does not read: a text-only conversation trained unsaid
OTHER_IMAGE_KEYS = ("image_path", "img", "img_path", "image_file", "imagePath", "file_name", "filename", "photo", "picture",
                    "video", "videos")

_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")
_BASE64_IMAGES = ("/9j/", "iVBOR", "R0lGOD", "UklGR", "Qk")  # JPEG, PNG, GIF, WebP and BMP files' first bytes in base64


def either(record: dict, key: str, other: str) -> object:
    """``record[key]``, else ``record[other]``: a ``null`` one is absent (``datasets``' ``to_json`` of records of both
    layouts writes ``"image": null`` beside ``"images": [...]``, and the image was lost)."""
    return record[key] if record.get(key) is not None else record.get(other)


def image_of(record: dict, name: str, records: BadRecords) -> tuple[bool, str | None]:
    """``(usable, image)`` of a record: LLaVA's ``image`` path, or the ``images`` list of ShareGPT-style
    files (LLaMA-Factory's), or the ``path`` (Qwen2-VL: ``image``) of a message's image part, with one image; no image (missing, null, "" or []) is a text-only record. The path is
    relative to image_root; an absolute one (or one with ``..``) is read as written, as LLaVA's loader reads it
    (``os.path.join(image_folder, image)``)."""
    image = either(record, "image", "images")
    other = next((key for key in OTHER_IMAGE_KEYS if image is None and record.get(key) not in (None, "", [])), None)
    if other is not None:
        what = "a video, which is not read" if other.startswith("video") else "not read"
        records.bad("image under another key", f"{name}: its {'video' if other.startswith('video') else 'image'} is under "
                                               f"{other!r}, {what} (the conversation would be trained as text alone): name an "
                                               "image 'image' (a path under image_root)")
        return False, None
    if image is None:  # transformers' and Qwen2-VL's messages name it in their image part
        image = [part.get("path") or part.get("image") for turn in either(record, "conversations", "messages") or []
                 if isinstance(turn, dict) and isinstance(turn.get("content"), list) for part in turn["content"]
                 if isinstance(part, dict) and part.get("type") == "image" and (part.get("path") or part.get("image"))] or None
    if isinstance(image, list):
        if len(image) > 1:
            records.bad("several images", f"{name} has {len(image)} images: a conversation is trained with one")
            return False, None
        image = image[0] if image else None
    if isinstance(image, dict) and isinstance(image.get("path"), str) and image["path"]:  # datasets' to_json of an Image
        image = image["path"]  # column: {"bytes": null, "path": ...}
    if isinstance(image, str) and image.startswith("file://"):  # Qwen2-VL's documented layout names files as URIs
        image = unquote(urlsplit(image).path)
    if isinstance(image, str) and (held := not_a_file(image)):  # Qwen2-VL's layout allows data: and http(s): images too
        records.bad("image not a file", f"{name}: its image is {held}, which is not read: save the image as a file and "
                                        "name its path (under image_root)")
        return False, None
    if image is not None and not isinstance(image, str):
        key = "image" if record.get("image") is not None else "images" if record.get("images") is not None else "image part"
        inline = " (its bytes in the file, as datasets writes an Image column: save the images as files)" \
            if isinstance(image, dict) and image.get("bytes") else ""
        records.bad("malformed record", f"{name}: its {key!r} is not a path{inline}")
        return False, None
    return True, image or None


def not_a_file(image: str) -> str | None:
    """What ``image`` holds instead of a file's path - inline data, a web address or an image's bytes in base64 (a
    name no file system takes: a bare ``OSError`` on a lookup) - or None for a path."""
    if image[:5].lower() == "data:":
        return "inline data (a data: URI)"
    if is_url(image):
        return f"a web address ({image[:80]}), not downloaded"
    if image.startswith(_BASE64_IMAGES) and len(image) > 200 and _BASE64.fullmatch(image):
        return "an image's bytes in base64, not a path"
    if len(image) > 4096 or max((len(part) for part in image.split("/")), default=0) > 255:  # longer than any path or name
        return f"a text of {len(image):,} characters, not a path"
    return None


def turns_of(record: dict, name: str, records: BadRecords) -> list[tuple[str, str]] | None:
    """``(role, text)`` of each turn: LLaVA's ``conversations`` of ``from`` / ``value``, or the ``messages``
    of ``role`` / ``content`` that OpenAI-style files have; roles as :data:`ROLES` names them (others as written)."""
    turns = either(record, "conversations", "messages")
    if turns is None and (asked := question_and_answer(record, name, records)) is not None:  # a VQA table's row: one
        return asked or None  # question, answered
    if not isinstance(turns, list) or not turns:
        records.bad("malformed record", f"{name} has no 'conversations' (or 'messages') list, nor a 'question' and its "
                                        "'answer'")
        return None
    parsed = []
    for index, turn in enumerate(turns):
        content = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
        value = text_of(content)
        if isinstance(content, list) and any(isinstance(part, dict) and part.get("type") == "image_url" for part in content):
            inline = any(str((part.get("image_url") or {}).get("url", "")).startswith("data:") for part in content
                         if isinstance(part, dict) and isinstance(part.get("image_url"), dict))
            records.bad("image_url part", f"{name}: turn {index} has an 'image_url' part (OpenAI's fine-tuning layout), which is "
                                          + ("inline (a data: URL) and not read: save the image as a file" if inline else
                                             "not downloaded") + ": name the image in 'image' (a path under image_root) and "
                                          "put an {'type': 'image'} part (or <image>) where the image_url part was")
            return None
        if not isinstance(value, str):
            records.bad("malformed turn", f"{name}: turn {index} needs 'from' and a string 'value' (or 'role' and 'content': "
                                          "a string, or a list of {'type': 'text', 'text': ...} and {'type': 'image'} parts)")
            return None
        role = str(turn.get("from", turn.get("role", "")))
        if turn.get("weight") == 0:  # OpenAI's answer not to train on: trained, it taught what the file said not to
            records.bad("weight 0 turn", f"{name}: turn {index} has weight 0 (an answer not to train on), which is not "
                                         "read: remove that question and answer, or the record")
            return None
        parsed.append((ROLES.get(role.lower(), role), value))
    return parsed


QUESTION_KEYS = ("question", "query", "prompt", "instruction")
ANSWER_KEYS = ("answer", "multiple_choice_answer", "response", "output")  # (VQAv2's most given answer)


def with_question_image(record: object) -> object:
    """A record of a question and its answer (:func:`question_and_answer`) with its image under ``image``, where a VQA
    file or sheet names it as tables do (``Image``, ``img_path``, ``file_name``: :data:`~mmcaption.data.tables.
    IMAGE_COLUMNS`): read, and its side hashed, by that image.
    Any other record as it is."""
    if not isinstance(record, dict) or either(record, "image", "images") is not None or \
            either(record, "conversations", "messages") is not None:
        return record
    lowered = {str(key).strip().lower(): value for key, value in record.items()}
    if not any(isinstance(lowered.get(key), str) for key in QUESTION_KEYS):
        return record
    image = next((lowered[key] for key in IMAGE_COLUMNS if lowered.get(key) not in (None, "", [])), None)
    return record if image is None else {**record, "image": image}


def _most_given(answers: object) -> str | None:
    """The answer most of VQAv2-style ``answers`` give (its ten human answers, as strings or ``{"answer": ...}`` objects;
    VQAv2's own ``multiple_choice_answer`` is chosen so), the first of those most given on a tie; None for anything else."""
    if isinstance(answers, str):  # a CSV cell: a JSON list, as mmcaption predict writes lists, or pandas' ['a', 'b']
        answers = literal_in_cell(answers)
    if not isinstance(answers, list) or not answers:
        return None
    texts = [_text(a.get("answer") if isinstance(a, dict) else a) for a in answers]
    if any(text is None for text in texts):
        return None
    return Counter(text.strip() for text in texts).most_common(1)[0][0] or None


def _text(value: object) -> str | None:
    """An answer as text: a string, or a number as a CSV cell holds it (``"answer": 2``); None for anything else."""
    text = number_text(value)
    return text if isinstance(text, str) else None


def question_and_answer(record: dict, name: str, records: BadRecords) -> list[tuple[str, str]] | None:
    """A record of one question and its answer (a VQA dataset's row: ``image, question, answer``; Alpaca-style
    ``instruction``, ``input`` after it, and ``output``), as a conversation of one turn each; None for a record without both as texts (a
    column's name in any case). A multiple-choice row (the original scripts' CSV: options in columns ``A`` to ``D``) is
    asked with its options listed and answered with the letter, as LLaVA-1.5 trains them; one whose answer is neither a
    letter nor an option's text is reported (an empty list)."""
    by_name = {str(key).strip().lower(): value for key, value in record.items()}
    question = next((by_name[key] for key in QUESTION_KEYS if isinstance(by_name.get(key), str)), None)
    answer = next((text for key in ANSWER_KEYS if (text := _text(by_name.get(key))) is not None), None) \
        or _most_given(by_name.get("answers"))
    if question is None or answer is None:
        return None
    if isinstance(context := by_name.get("input"), str) and context.strip():  # Alpaca's input: the instruction's text
        question = f"{question}\n{context}"
    given = [letter for letter in LETTERS if isinstance(by_name.get(letter.lower()), str) and by_name[letter.lower()].strip()]
    if len(given) < 2:
        return [("human", question), ("gpt", answer)]
    letters = LETTERS[:len(given)]
    if tuple(given) != letters:  # A, B, D: D's text would be asked as C, and an answer C name it
        records.bad("multiple-choice options", f"{name}: its options are {', '.join(given)}, with a gap: give them from A on")
        return []
    options = [by_name[letter.lower()] for letter in letters]
    stated = answer.strip().strip("().").upper()
    letter = stated if stated in letters else next((letters[i] for i, option in enumerate(options)
                                                    if option.strip().casefold() == answer.strip().casefold()), None)
    if letter is None:
        records.bad("multiple-choice answer", f"{name}: its answer {answer!r} is neither one of {', '.join(letters)} nor an "
                                              "option's text")
        return []
    return [("human", listed_options_question(question, options)), ("gpt", letter)]


def text_of(content: object) -> object:
    """A turn's text: a string as it is; OpenAI-style content parts (``[{"type": "image"}, {"type": "text",
    "text": ...}]``, as TRL's and Hugging Face's chat datasets write turns) as their texts joined, an image
    part standing as LLaVA's ``<image>``; anything else as it is (refused by the caller)."""
    if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
        return content
    texts = []
    for part in content:
        kind = part.get("type")
        if kind == "image":
            texts.append("<image>")
        elif kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            return None
    return "\n".join(texts)


def read_otherwise_now(file: Path) -> int:
    """A cheap look at ``file``'s bytes: what it has that this reader reads otherwise than earlier releases did, for its
    cache to be built again rather than reused as those releases built it: 2, an image under another key, a turn's
    ``weight``, a developer turn, an image as ``{"path": ...}`` or a ``file://`` URI; 3, an XML ``<image>`` element
    (text, not the placeholder: read so since the first); 0, nothing of these."""
    keys = "|".join(re.escape(key) for key in (*OTHER_IMAGE_KEYS, "weight"))
    pattern = rb'"(?:' + keys.encode() + rb')"\s*:|"developer"|"path"\s*:|"file://'
    data = file.read_bytes()
    return 3 if re.search(rb"<\\?/image>", data, re.IGNORECASE) else 2 if re.search(pattern, data) else 0


def asks_questions(file: Path) -> bool:
    """A cheap look at a JSON file's bytes: whether it may hold records of a question and its answer
    (:func:`question_and_answer`), which earlier releases refused or skipped, for its cache to be built again."""
    keys = "|".join(re.escape(key) for key in QUESTION_KEYS)
    return re.search(rb'"(?:' + keys.encode() + rb')"\s*:', file.read_bytes(), re.IGNORECASE) is not None


def one_file_wanted(given: Path) -> str | None:
    """What to say when a folder of conversation files, or a pattern the shell did not expand (``data/llava/*.json``,
    quoted or matching nothing here), was given where one file is read: LLaVA-Instruct-150k comes as five files, one
    of which holds three of the others. None when ``given`` is neither."""
    if given.is_file() or given.is_dir() and any((given / name).is_file() for name in ("state.json", "dataset_dict.json")):
        return None  # a file (its name may hold [ or ?), or datasets' save_to_disk folder: said as such
    files = sorted(p for p in given.iterdir() if p.suffix.lower() in (".json", ".jsonl")) if given.is_dir() else \
        sorted(Path(given.parent).glob(given.name)) if PATTERN_MARKS.search(given.name) and given.parent.is_dir() else None
    if files is None or given.is_dir() and not files:
        return None
    named = ", ".join(p.name for p in files[:5]) + ", ..." * (len(files) > 5)
    return (f"{given} {'is a folder holding' if given.is_dir() else 'is a pattern of file names matching'} {len(files)} "
            f"file{'s' * (len(files) != 1)}{f' ({named})' if files else ''}, where one conversation file is read: give one, "
            "or join them into one (jq -s add a.json b.json > all.json; LLaVA-Instruct-150k's llava_instruct_150k.json holds "
            "its conversation_58k, detail_23k and complex_reasoning_77k)")
