"""Caption metrics by the standard COCO caption evaluation code (pycocoevalcap), not re-implemented.

BLEU-1..4, ROUGE-L and CIDEr always; METEOR and the PTB tokenizer where Java is present (both are
Java programs); SPICE where Java and its Stanford CoreNLP models are present (pycocoevalcap fetches
those on first use, which an offline machine cannot). Without Java, captions are tokenized the way
the PTB tokenizer treats plain captions: lower-cased, clitics apart ("is n't"), quotes and punctuation dropped.

METEOR's Java process is started at the first score and kept for the next ones (it spends ~10 s of CPU
loading its paraphrase tables at each start, which every validation paid); it holds about 1 GB of
memory until the process exits or :func:`close_meteor` is called.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import unicodedata
import warnings
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as meteor_tool
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice import spice as spice_tool
from pycocoevalcap.tokenizer import ptbtokenizer

from mmcaption.evaluation.answers import CHINESE_JAPANESE

# The punctuation pycocoevalcap's PTBTokenizer removes.
_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}


NO_JAVA = (
    "Java was not found, so the caption metrics are not the COCO evaluation's: METEOR and SPICE are not computed "
    "(both are Java programs) and captions are tokenized by a fallback that splits plain English as the PTB tokenizer "
    "does (clitics, quotes, brackets, dashes) but not every case it knows, so BLEU, ROUGE-L and CIDEr may differ a "
    "little from the official numbers. Install a Java runtime (Debian or Ubuntu: apt-get install "
    "default-jre-headless; conda: conda install openjdk) for numbers comparable with papers'."
)
_warned_no_java = False


def java_available() -> bool:
    return shutil.which("java") is not None


def warn_once_without_java() -> None:
    """Say once per process, loudly, which metrics are lost without Java."""
    global _warned_no_java
    if not java_available() and not _warned_no_java:
        _warned_no_java = True
        warnings.warn(NO_JAVA, UserWarning, stacklevel=3)


# what caption_scores can return, in the order results list them: the last two need Java (SPICE also its models)
CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr", "METEOR", "SPICE")


def metric_setup(spice: bool | None = None) -> dict:
    """How :func:`caption_scores` scores on this machine: the tokenizer, the metrics it computes and
    those it skips with the reason - for the results file, so that a number says how it was made."""
    java = java_available()
    run = [metric for metric in CAPTION_METRICS if metric not in ("METEOR", "SPICE")]
    skipped = {}
    if java:
        run.append("METEOR")
    else:
        skipped["METEOR"] = "no Java found (METEOR is a Java program)"
    if spice if spice is not None else spice_available():
        run.append("SPICE")
    else:
        skipped["SPICE"] = "no Java found" if not java else (
            "its Stanford CoreNLP models are not installed (pycocoevalcap fetches them on its first SPICE run, online)")
    tokenizer = ("PTB (Stanford CoreNLP, Java), as the COCO caption evaluation" if java else "fallback without Java: split as "
                 "the PTB tokenizer splits plain English, lower-cased, punctuation dropped") + "; text NFKC-normalised first; " \
        "Chinese and Japanese characters one token each"
    return {"tokenizer": tokenizer, "metrics": run, "skipped": skipped, "pycocoevalcap": version("pycocoevalcap")}


def spice_available() -> bool:
    return java_available() and (Path(spice_tool.__file__).parent / "lib" / "stanford-corenlp-3.6.0.jar").is_file()


def _simple_tokenize(captions: dict[Hashable, list[str]]) -> dict[Hashable, list[str]]:
    return {key: [" ".join(w for w in _words(c.lower().translate(_AS_PTB)) if w not in _PUNCTUATION and w != '"')
                  for c in values] for key, values in captions.items()}


# as the PTB tokenizer reads them: curly quotes and guillemets as quotes (dropped), dashes as "--" (dropped), brackets
# as its -lrb- ... tokens (which pycocoevalcap's list, in capitals, keeps once lower-cased); kept as tokens of their
# own, a quoted caption scored BLEU-4 0.36 against the same words that PTB scored 0.90
_AS_PTB = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"', "\u2018": "'",
                         "\u2019": "'", "\u2013": " -- ", "\u2014": " -- ", "\u2015": " -- ", "\u2012": " -- ",
                         "(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- "})
# its clitics: "dog's" is "dog 's", "isn't" is "is n't"
_CLITIC = re.compile(r"(.+?)(n't|'s|'re|'ve|'ll|'d|'m)")


def _words(text: str) -> Iterator[str]:
    """Words (letters, digits, the marks that combine with them - Hindi's and Thai's vowel signs -, with apostrophes and
    hyphens inside them) and each other character, as the PTB tokenizer splits plain captions: clitics apart, and the
    quotes around a word ('' and `` and ') on their own."""
    for chunk in text.split():
        if re.fullmatch(r"-[lr][rsc]b-", chunk):  # a bracket, as _AS_PTB wrote it
            yield chunk
            continue
        word, chunk = "", chunk.replace("--", " -- ") + "  "
        for i, character in enumerate(chunk[:-1]):
            inside = bool(word.strip("'")) and _in_word(chunk[i + 1])  # joining what follows: well-lit, 5:30, 1,000
            if (character in "'_" or unicodedata.category(character)[0] in "LNM" or character == "-" and inside
                    or character in ".,:" and inside and word[-1].isdigit() and chunk[i + 1].isdigit()
                    or character == "." and _ABBREVIATION.fullmatch(word + chunk[i:].split(" ", 1)[0])):
                word += character
                continue
            yield from _split_word(word)
            word = ""
            if character != " ":
                yield character


# a letter a period: "p.m.", "u.s.", kept whole as the PTB tokenizer keeps them
_ABBREVIATION = re.compile(r"(?:[^\W\d_]\.){2,}.*")


def _in_word(character: str) -> bool:
    return unicodedata.category(character)[0] in "LNM"


_BARE_CLITICS = {"'s", "'re", "'ve", "'ll", "'d", "'m"}


def _split_word(word: str) -> Iterator[str]:
    """A word's quotes and its clitic apart from it ("'dog's'" is ' dog 's '), a hyphen at its end apart."""
    if word in _BARE_CLITICS:  # "a man 's shirt", its clitic written apart
        yield word
        return
    inner = word.strip("'")
    yield from "'" * (len(word) - len(word.lstrip("'")))
    trailing = inner[len(inner.rstrip("-")):]
    inner = inner.rstrip("-")
    if inner:
        clitic = _CLITIC.fullmatch(inner)
        yield from clitic.groups() if clitic else (inner,)
    yield from trailing
    yield from "'" * (len(word) - len(word.rstrip("'")) if word.strip("'") else 0)


# Chinese and Japanese are written without spaces between words: each of their characters is scored as a token, as
# sacreBLEU's "zh" tokenizer does; read whole, a caption was one word, and an exact match scored BLEU-4 0.00003
_CJK = re.compile(f"([{CHINESE_JAPANESE}\U00020000-\U0002fa1f])")
# their punctuation (。，、「」！？ and the full-width forms), and Arabic's (، ؛ ؟ ۔) and Devanagari's (। ॥), dropped as the
# PTB tokenizer drops ASCII punctuation: kept as tokens, an exact caption scored BLEU-4 0 against one with its full stop
_CJK_PUNCTUATION = re.compile("[\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
                              "\u060c\u061b\u061f\u06d4\u0964\u0965]")


def _ptb_tokenize(captions: dict[Hashable, list[str]]) -> dict[Hashable, list[str]]:
    """pycocoevalcap's ``PTBTokenizer().tokenize``, the same Java command and the same punctuation dropped, with its
    temporary file in the system's temporary folder: pycocoevalcap writes it into its own package folder, which a
    shared or system-wide install does not let its users write (validation failed with a PermissionError)."""
    keys = [key for key, values in captions.items() for _ in values]
    # one line a caption: any line break in one (\r, U+2028 of a COCO file's caption) ended a line in Java too, and every
    # later image was scored against the references of the one before
    sentences = "\n".join(" ".join(caption.splitlines()) for values in captions.values() for caption in values)
    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.NamedTemporaryFile("wb", prefix="mmcaption-ptb-", suffix=".txt", delete=False) as handle:
        handle.write(sentences.encode())
    try:
        lines = subprocess.run(["java", *JAVA_LOCALE, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                                "-lowerCase", handle.name], stdout=subprocess.PIPE, check=True,
                               start_new_session=True).stdout.decode().split("\n")  # as _OwnSession starts the others
    finally:
        os.remove(handle.name)
    tokenized: dict[Hashable, list[str]] = {}
    for key, line in zip(keys, lines):
        tokenized.setdefault(key, []).append(" ".join(w for w in line.rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS))
    return tokenized


@contextmanager
def java_output_kept_back() -> Iterator[None]:
    """The Java tools print progress ("PTBTokenizer tokenized 170 tokens at ...") and a warning for each
    character they drop on the process's standard error, at every validation. Kept out of the console;
    shown when the tool fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                capture.seek(0)
                sys.stderr.write(capture.read().decode(errors="replace")[-4000:])


# Java reads numbers in its default locale, which it takes from LANG: under a decimal-comma one (de_DE, fr_FR) METEOR's
# scanner failed on the "0.5" it is sent and the run died at its first validation, with no checkpoint saved
JAVA_LOCALE = ["-Duser.language=en", "-Duser.country=US"]


def _in_english(command: Any) -> Any:
    """A Java command line with :data:`JAVA_LOCALE` set."""
    return [command[0], *JAVA_LOCALE, *command[1:]] if isinstance(command, list) and command[:1] == ["java"] else command


class _OwnSession:
    """The ``subprocess`` module as pycocoevalcap's Java tools call it, their Java process started in a session
    of its own and in English (:data:`JAVA_LOCALE`). A terminal's Ctrl-C goes to its whole foreground process group:
    it killed METEOR midway, whose reader then failed on an empty line with its lock held, and the process hung where
    it should have saved a checkpoint; mmcaption acts on the signal itself."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(command, *args, **kwargs) -> subprocess.Popen:  # noqa: N802 - the name the tools call
        return subprocess.Popen(_in_english(command), *args, **kwargs, start_new_session=True)

    @staticmethod
    def check_call(command, *args, **kwargs) -> int:
        return subprocess.check_call(_in_english(command), *args, **kwargs, start_new_session=True)


# set once, for every use of these tools in the process (each looks ``subprocess`` up when it starts Java)
meteor_tool.subprocess = spice_tool.subprocess = _OwnSession()


class _Meteor(meteor_tool.Meteor):
    """pycocoevalcap's METEOR scorer with a ``close`` that ends its Java process (its own ``__del__`` waits for a
    lock that an interrupted score still holds, forever), and Java's messages in a file rather than a pipe
    nobody reads, which a long-lived process could fill and then block on."""

    def __init__(self) -> None:
        self.java = shutil.which("java")
        self.owner = os.getpid()  # a forked DataLoader worker inherits the object, not the right to use it
        self.messages = tempfile.TemporaryFile()
        self.meteor_p = _OwnSession.Popen(
            self.meteor_cmd, cwd=Path(meteor_tool.__file__).parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.messages)
        self.lock = threading.Lock()

    meteor_cmd = ["java", "-jar", "-Xmx2G", meteor_tool.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]

    def usable(self) -> bool:
        return self.owner == os.getpid() and self.java == shutil.which("java") and self.meteor_p.poll() is None

    def last_messages(self) -> str:
        self.messages.seek(0)
        return self.messages.read().decode(errors="replace")[-4000:]

    def close(self) -> None:
        self.meteor_p.kill()
        self.meteor_p.wait()
        for stream in (self.meteor_p.stdin, self.meteor_p.stdout, self.messages):
            try:
                stream.close()
            except OSError:  # a pipe to the ended process, with bytes still buffered
                pass

    def __del__(self) -> None:
        pass  # closed by close()


_meteor: _Meteor | None = None
_meteor_guard = threading.RLock()


def meteor_score(refs: dict[Hashable, list[str]], preds: dict[Hashable, list[str]]) -> float:
    """METEOR of PTB-tokenized ``preds`` against ``refs``, by the process's one METEOR Java process, started
    here when there is none (or it ended). A score that fails or is interrupted ends it: the exchange with it
    is then midway, and pycocoevalcap's lock still held."""
    global _meteor
    with _meteor_guard:
        if _meteor is not None and not _meteor.usable():
            close_meteor()
        if _meteor is None:
            _meteor = _Meteor()
        try:
            return float(_meteor.compute_score(refs, preds)[0])
        except BaseException as error:
            messages = _meteor.last_messages()
            close_meteor()
            if isinstance(error, Exception) and messages:
                sys.stderr.write(messages)
            raise


def close_meteor() -> None:
    """End METEOR's Java process (and free its memory); the next score starts another."""
    global _meteor
    with _meteor_guard:  # not while another thread scores with it
        if _meteor is not None and _meteor.owner == os.getpid():
            _meteor.close()
        _meteor = None


atexit.register(close_meteor)


def tokenize(captions: dict[Hashable, list[str]]) -> dict[Hashable, list[str]]:
    """PTB-tokenize ``{key: [caption, ...]}`` as the COCO evaluation does (plain fallback without Java); Chinese and
    Japanese characters one token each. Text is first NFKC-normalised, as answers are: the same words typed in another
    Unicode form (an accent as its own character, as macOS writes it) or in full-width letters scored as other words."""
    captions = {key: [_CJK.sub(r" \1 ", _CJK_PUNCTUATION.sub(" ", unicodedata.normalize("NFKC", caption))) for caption in values]
                for key, values in captions.items()}
    if not java_available():
        return _simple_tokenize(captions)
    with java_output_kept_back():
        return _ptb_tokenize(captions)


def caption_scores(
    predictions: dict[Hashable, str], references: dict[Hashable, list[str]], spice: bool | None = None
) -> dict[str, float]:
    """Corpus-level scores of one predicted caption per key against its references: ``BLEU-1``..``BLEU-4``, ``ROUGE-L``,
    ``CIDEr``, and ``METEOR`` / ``SPICE`` when they can run (``spice=None``: SPICE only if its models are present)."""
    return grouped_caption_scores(predictions, references, {}, spice)[0]


def grouped_caption_scores(
    predictions: dict[Hashable, str], references: dict[Hashable, list[str]], groups: dict[Hashable, str],
    spice: bool | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """:func:`caption_scores` of all keys, and of each group's keys on their own (``groups``: a key's group, nocaps'
    in-, near- and out-domain images, as its evaluation scores each): a group's CIDEr takes its document frequencies
    from the group's captions. Each group's scores also say its ``images``; keys of no group are scored in all only."""
    if missing := set(predictions) ^ set(references):
        raise ValueError(f"predictions and references differ in {len(missing)} keys, e.g. {sorted(map(str, missing))[:3]}")
    if not predictions:
        raise ValueError("no captions to score")
    warn_once_without_java()
    keys = list(predictions)
    refs = tokenize({k: list(references[k]) for k in keys})  # (the PTB tokenizer started once for all the groups)
    preds = tokenize({k: [predictions[k]] for k in keys})
    average, spiced = None, {}  # each image's SPICE, from one run (a Java process loading its models) for all the groups
    if spice if spice is not None else spice_available():
        with java_output_kept_back(), _spice_folders_writable():
            average, each = spice_tool.Spice().compute_score(refs, preds)
        spiced = {k: s["All"]["f"] for k, s in zip(sorted(refs), each)}  # (in its order) a group's: the mean of its images'
    by_group = {}
    for group in sorted({groups[k] for k in keys if k in groups}):
        members = [k for k in keys if groups.get(k) == group]
        by_group[group] = {**_scores({k: refs[k] for k in members}, {k: preds[k] for k in members},
                                     np.mean([spiced[k] for k in members]) if spiced else None), "images": len(members)}
    return _scores(refs, preds, average), by_group


def _scores(refs: dict[Hashable, list[str]], preds: dict[Hashable, list[str]], spice: float | None) -> dict[str, float]:
    scores = {f"BLEU-{n}": float(value) for n, value in enumerate(Bleu(4).compute_score(refs, preds, verbose=0)[0], start=1)}
    scores["ROUGE-L"] = float(Rouge().compute_score(refs, preds)[0])
    scores["CIDEr"] = float(Cider().compute_score(refs, preds)[0])
    if java_available():
        scores["METEOR"] = meteor_score(refs, preds)
    return {**scores, "SPICE": float(spice)} if spice is not None else scores


def _user_cache(name: str) -> str | None:
    """``$XDG_CACHE_HOME/mmcaption/<name>`` (or under ``~/.cache``), made; None where there is no such folder to make (a
    container's user without a home, or with ``HOME=/``): a run's own temporary folder serves, and SPICE parses anew."""
    try:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmcaption" / name
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # RuntimeError: "Could not determine home directory"
        return None
    return str(folder) if os.access(folder, os.W_OK) else None


@contextmanager
def _spice_folders_writable() -> Iterator[None]:
    """SPICE's temporary files in the system's temporary folder, and its parse cache in the user's cache folder when
    pycocoevalcap's own package folder (where it keeps both) cannot be written: a shared install's."""
    saved = spice_tool.TEMP_DIR, spice_tool.CACHE_DIR
    spice_tool.TEMP_DIR = tempfile.mkdtemp(prefix="mmcaption-spice-")  # this call's own (os.path.join keeps an absolute path)
    if not os.access(Path(spice_tool.__file__).parent, os.W_OK):
        spice_tool.CACHE_DIR = _user_cache("spice") or os.path.join(spice_tool.TEMP_DIR, "cache")
    try:
        yield
    finally:
        shutil.rmtree(spice_tool.TEMP_DIR, ignore_errors=True)
        spice_tool.TEMP_DIR, spice_tool.CACHE_DIR = saved
