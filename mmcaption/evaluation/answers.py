"""Scoring short answers: normalisation as the VQA evaluation does it, exact match, reading the
letter out of a generated multiple-choice answer as the common evaluation kits do, and POPE's yes/no metrics.

Plain string functions: no model, no tokenizer.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

# The VQA evaluation's normalisation (Antol et al., 2015; the official vqaEval.py): punctuation,
# number words, articles and contractions written without their apostrophe, its table whole, quirks
# included ("somebody'd" -> "somebodyd", and keys in capitals that never match its lower-cased words).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# Chinese and Japanese characters (and Korean's Hangul, for letters written against them): written without spaces, so
# a letter or an option's text next to them stands alone although regular expressions' \w and \b count them as letters
CHINESE_JAPANESE = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = rf"[^\W{CHINESE_JAPANESE}\uac00-\ud7af]"  # a letter, digit or _ of a script that puts spaces between words
_CJK = re.compile(rf"[{CHINESE_JAPANESE}\uac00-\ud7af]")


# other scripts' sentence marks and quotes as the ASCII ones VQA's normalisation drops: Chinese and Japanese 。、, Hindi's
# danda, Arabic and Urdu's question mark, comma, semicolon and full stop, guillemets, curly quotes (’ as the apostrophe)
_OTHER_PUNCTUATION = str.maketrans({"\u3002": ".", "\u3001": ",", "\u0964": ".", "\u0965": ".", "\u061f": "?", "\u060c": ",",
                                    "\u061b": ";", "\u06d4": ".", "\u00ab": '"', "\u00bb": '"', "\u201c": '"', "\u201d": '"',
                                    "\u201e": '"', "\u2018": "'", "\u2019": "'"})


def _unified(text: str, official: bool = False) -> str:
    """Full-width letters, digits and punctuation (``Ｂ``, ``？``, Chinese ``，``) as their ASCII twins, an accent written
    as a separate mark (macOS, some keyboards) joined to its letter (NFKC), other scripts' sentence marks and quotes as
    ASCII's, and invisible format characters (a zero-width space, the right-to-left mark text copied from an Arabic
    page brings) left out: as answers typed on other keyboards compare. ``official``: VQA's scoring and the answers
    sent to its server, where the official evaluation keeps quotes and invisible characters as written: NFKC and
    Chinese punctuation only (which VQAv2's English answers never hold)."""
    if official:
        return unicodedata.normalize("NFKC", text).replace("\u3002", ".").replace("\u3001", ",")
    text = unicodedata.normalize("NFKC", text).translate(_OTHER_PUNCTUATION)
    if text.isascii():
        return text
    return "".join(c for c in text if unicodedata.category(c) != "Cf")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _without_punctuation(original: str) -> str:
    """The VQA evaluation's ``processPunctuation``: punctuation dropped or made a space (a comma between
    digits kept), the case and the words as they are."""
    keeps_commas = _COMMA_STRIP.search(original) is not None
    text = original
    for mark in _PUNCTUATION:  # whether a mark is dropped or becomes a space depends on the text as given
        if f"{mark} " in original or f" {mark}" in original or keeps_commas:
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    return _PERIOD_STRIP.sub("", text)


def normalise_answer(text: str, official: bool = False) -> str:
    """An answer as the VQA evaluation compares it: lower case, punctuation dropped (a comma between
    digits kept), number words as digits, articles dropped, ``dont`` -> ``don't``; first, unlike it, NFKC (full-width
    ``Ｂ`` as ``B``, and so ``m²`` as ``m2``) and Chinese punctuation as ASCII's, which VQAv2's English answers never hold."""
    text = _without_punctuation(_unified(text, official).replace("\n", " ").replace("\t", " ").strip().lower())
    words = [_NUMBERS.get(word, word) for word in text.split()]
    words = [_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of answers equal to the reference after :func:`normalise_answer`."""
    pairs = list(zip(predictions, references, strict=True))
    return sum(normalise_answer(p) == normalise_answer(r) for p, r in pairs) / max(len(pairs), 1)


LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H")  # option letters; a question has 2 to 8 options
# an option written with its letter, as exams and spreadsheets write them: "A. red", "A) red", "(A) red", "[A] red", "A: red"
_OWN_LETTER = re.compile(r"\s*(?:\(([A-H])\)|\[([A-H])\]|([A-H])\s*[.):])\s*(?=\S)", re.IGNORECASE)


def own_letters_dropped(options: list[str]) -> list[str] | None:
    """The options' texts without their letters when each begins with its own, in order (``["A. red", "B. blue"]``), else
    None: a prompt letters the options itself (``A. A. red`` asked), and their likelihood scored each letter's tokens."""
    marks = [_OWN_LETTER.match(option) for option in options]
    if len(options) < 2 or not all(m and (m.group(1) or m.group(2) or m.group(3)).upper() == letter
                                   for m, letter in zip(marks, LETTERS)):
        return None
    return [option[m.end():].strip() for option, m in zip(options, marks)]


def parse_choice(text: str, options: list[str] | None = None) -> str | None:
    """The option letter a generated answer gives, or ``None`` when it gives none or several.

    Reads, in this order: a bare letter (``"B"``, ``"(B)"``, ``"B."``); with ``options``, the whole text of exactly
    one option, unless it opens with a label that is not the option's own (``"Vitamin C"`` among ``Vitamin A`` and
    ``Vitamin C`` is the second, where VLMEvalKit reads option C; ``"A. cat"`` is A, ``"C. elegans"`` the option); a statement
    (``"Answer: B"``, ``"The answer is (B)"``, ``"Option B"``; an answer's before an option's: ``"Option A is wrong; the
    answer is B"`` is B); a letter that opens the answer as a label (``"B. blue"``, ``"(B) blue"``); a single
    stand-alone capital letter (``"I think B"``, ``"A is correct"``; the article in ``"A red circle"`` is not option A);
    and, with ``options``, the text of exactly one option said in the answer.
    """
    letters = "".join(LETTERS[: len(options)] if options else LETTERS[:4])
    answer = _unified(text).strip()
    if not answer:
        return None
    bare = re.fullmatch(rf"[\(\[]?([{letters}])[\)\]]?[.:]?", answer)
    if bare:
        return bare.group(1)
    as_written = [i for i, option in enumerate(options or []) if _unified(option).strip().rstrip(".").casefold()
                  == answer.rstrip(".").casefold()]
    if len(as_written) == 1:  # an option's text as written, a letter and a period in it too ("C. elegans", "A. Lincoln")
        return letters[as_written[0]]
    label = re.match(rf"[\(\[]([{letters}])[\)\]]|([{letters}])\s*[.):]\s", answer)  # "A. cat" is A, whatever option "cat" is
    if options and not label and (whole := _named(answer, options, letters, said_in=False)):
        return whole
    statements = list(re.finditer(rf"(?i:answer|option|choice)(?:\s+(?i:is))?\s*:?\s*(?:(?i:option)\s+)?[\(\[]?([{letters}])(?![\w'])", answer))
    stated = next((m for m in statements if m.group(0)[:6].lower() == "answer"), statements[0] if statements else None)
    if stated:  # "Answer: A blue square": the article before option B's text, when it names one option
        rest = answer[stated.end():]
        named = _named("A" + rest, options, letters) if stated.group(1) == "A" and options and _article(rest) else None
        return named or stated.group(1)
    if label:
        return label.group(1) or label.group(2)
    standalone = {
        match.group(1)
        for match in re.finditer(rf"(?<!{_WORD})(?<!\w')([{letters}])(?!{_WORD}|'\w)", answer)  # "答案是B" too
        if not (match.group(1) == "A" and _article(answer[match.end():]))
    }
    if standalone:
        return standalone.pop() if len(standalone) == 1 else None
    return _named(answer, options, letters) if options else None


def _named(answer: str, options: list[str], letters: str, said_in: bool = True) -> str | None:
    """The letter of the one option whose text ``answer`` is, or (``said_in``) says; None for none or several."""
    said = normalise_answer(answer)
    texts = [normalise_answer(option) for option in options]
    for matches in ([bool(t) and t == said for t in texts], [bool(t) and _said_in(t, said) for t in texts] if said_in else []):
        if sum(matches) == 1:
            return letters[matches.index(True)]
    return None


# words that follow an option's letter but never the article: "A is correct", "A would be right", "A because ..."
# ("can" only before be/not, "will", "must" before a verb: "A can of soda", "A will is ..." are an option's text)
_AFTER_LETTER = re.compile(r"\s+(?:and|or|is|was|would|seems|appears|looks|because|since|as|matches|fits|should|could|"
                           r"describes|shows|represents|answers|correctly|can\s+(?:be|not)|(?:will|may|might|must)\s+"
                           r"(?!is\b|was\b|of\b|has\b|on\b|in\b)[a-z]+|best\s+(?:describes|fits|matches|answers))\b")


def _article(rest: str) -> bool:
    """Whether an "A" followed by ``rest`` is the article ("A red circle"), not option A ("A is correct", "A and B")."""
    return re.match(r"\s+[a-z]", rest) is not None and _AFTER_LETTER.match(rest) is None


def _said_in(option: str, answer: str) -> bool:
    """Whether ``option`` is said in ``answer`` as words of its own: bounded by spaces or punctuation, or, at an end that
    is a Chinese or Japanese character, by anything ("是绿色的" says "绿色")."""
    left = "" if _CJK.match(option[0]) else r"\b"
    right = "" if _CJK.match(option[-1]) else r"\b"
    return re.search(left + re.escape(option) + right, answer) is not None


def vqa_accuracy(prediction: str, answers: list[str], scored_as: str = "vqav2") -> float:
    """The VQA accuracy of ``prediction`` against the human ``answers`` (VQAv2 has 10 per question):
    ``min(#humans who gave it / 3, 1)``, averaged over the subsets that leave out one human each.

    As the official ``vqaEval.py`` (and EvalAI's VQA server, which runs it) scores: the prediction is
    compared after :func:`normalise_answer`; the human answers lose their punctuation only, and only when
    they disagree - their case, number words and articles stay. So ten humans who all wrote ``t-shirt``
    score ``t shirt`` 0, ten who all wrote ``two`` score ``two`` (normalised: ``2``) 0, and ``white``
    scores 0 against five humans' ``the white`` and five ``gray``. With a single reference answer (not
    VQAv2's layout), both are normalised and compared. Two departures from ``vqaEval.py``, for answers VQAv2's
    English ones do not hold (the same score on VQAv2): the human answers are NFKC-normalised as the prediction is
    (an answer typed in another Unicode form scored 0 against itself), and unanimous ones lose the spaces, tabs
    and line breaks around them, as the prediction does.

    ``scored_as`` another benchmark's own evaluation: ``textvqa`` (its evaluator, m4c's ``TextVQAAccuracyEvaluator``,
    tokenises and normalises every human answer as the prediction: ten humans who wrote ``Nikon`` score ``Nikon`` 1,
    ``mcdonald 's`` scores ``McDonald's`` 1) or ``aokvqa`` (its ``eval_predictions.py``: ``min(#humans who gave it / 3,
    1)``, without leaving one out: 3 of 10 score 1, not 0.9; it compares the strings as given, and here both sides are
    normalised alike: ``a taxi`` scores against humans' ``a taxi`` as there, not 0, and ``taxi`` too, which there scores 0).
    """
    if not answers:
        raise ValueError("VQA accuracy needs at least one human answer")
    if scored_as == "textvqa":  # its evaluator's tokenising first, on every answer: "McDonald's" is "mcdonald 's"
        prediction, answers = _textvqa_words(prediction), [_textvqa_words(answer) for answer in answers]
    given = normalise_answer(prediction, official=True)
    if scored_as == "aokvqa":
        return min(1.0, sum(normalise_answer(answer, official=True) == given for answer in answers) / 3)
    if len(answers) == 1:
        return float(given == normalise_answer(answers[0], official=True))
    disagree = len(set(answers)) > 1  # as vqaEval.py decides it: on the answers as written
    # in the prediction's Unicode form: NFD 'màu đỏ' scored 0 against itself
    answers = [_unified(answer, official=True) for answer in answers]
    if scored_as == "textvqa":
        humans = [normalise_answer(answer, official=True) for answer in answers]
    elif disagree:
        humans = [_without_punctuation(answer) for answer in answers]
    else:
        humans = [answer.replace("\n", " ").replace("\t", " ").strip() for answer in answers]
    scores = [min(1.0, sum(other == given for other in humans[:i] + humans[i + 1:]) / 3) for i in range(len(humans))]
    return sum(scores) / len(scores)


def _textvqa_words(answer: str) -> str:
    """An answer as TextVQA's evaluator (m4c's ``EvalAIAnswerProcessor.word_tokenize``) tokenises it before the VQA rules:
    lower case, without commas and question marks, ``'s`` split from its word."""
    return answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def pope_answer(text: str) -> str:
    """``yes`` or ``no`` as POPE's evaluation reads a model's answer (LLaVA's ``eval_pope.py``): its first sentence
    says no when it has the word "no" or "not", and yes otherwise."""
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


@dataclass
class YesNoTally:
    """POPE's metrics over yes/no questions: accuracy, and precision, recall and F1 of "yes" (the object is there),
    with the share of yes answers, the numbers its paper and LLaVA's evaluation report. Answers are read as
    :func:`pope_answer` reads them."""

    counts: Counter = field(default_factory=Counter)  # (label, answer read) -> questions

    def add(self, prediction: str, label: str) -> None:
        self.counts[(label, pope_answer(prediction))] += 1

    def metrics(self) -> dict[str, float | int]:
        tp, fp = self.counts[("yes", "yes")], self.counts[("no", "yes")]
        tn, fn = self.counts[("no", "no")], self.counts[("yes", "no")]
        total = tp + fp + tn + fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        return {"accuracy": (tp + tn) / total if total else 0.0, "precision": precision, "recall": recall,
                "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
                "yes_ratio": (tp + fp) / total if total else 0.0, "questions": total}
