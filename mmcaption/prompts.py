"""How text becomes prompt tokens: the caption prompt, the instruct stage's conversation template, and
multiple-choice questions and options. Training, ``predict``, the Python API and the demo all build
their prompts here, so what a model is asked at inference is exactly what it was trained on.

The conversation template: how turns become tokens and which are supervised.

A conversation of ``(question, answer)`` turns is laid out as::

    <|endoftext|>{system}
    Human: {question 1}
    Assistant: {answer 1}<|endoftext|>
    Human: {question 2}
    Assistant: {answer 2}<|endoftext|>

Only the answers and the end-of-text token that closes each of them are supervised, so the model
learns to answer and to stop; the system line, the questions and the role markers are context. The
image is not in the text at all: it reaches every position through the gated cross-attention, so
LLaVA's ``<image>`` placeholder is removed rather than mapped to a marker token (a new token would
need an embedding row in the frozen 4-bit model and would carry no information).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from dataclasses import dataclass
from typing import NamedTuple

from transformers import PreTrainedTokenizerBase

from mmcaption.collate import IGNORE_INDEX
from mmcaption.errors import ConfigError
from mmcaption.evaluation.answers import LETTERS

# not against a word: code's List<Image> is text (ShareGPT's code conversations in LLaVA-1.5's mix), and was cut out
_IMAGE_TAG = re.compile(r"\s*(?<!\w)<image>\s*", re.IGNORECASE)
_TAG = "<image>"
_ANY_TAG = re.compile(re.escape(_TAG), re.IGNORECASE)  # a literal search: _IMAGE_TAG's leading \s* tried every character
_TAG_CASES = ["<" + "".join(letters) + ">" for letters in itertools.product(*zip("image", "IMAGE"))][1:]  # <Image>, ...
_CLOSED = re.compile(r"(?:(?!<image>).)*</image>", re.IGNORECASE | re.DOTALL)  # a </image> before any other <image>
# other models' image placeholders (Qwen-VL, MiniGPT-4, Llama 3.2 Vision): conversations written for them
OTHER_PLACEHOLDERS = re.compile(r"<img>[^<]*</img>|<ImageHere>|<\|image\|>", re.IGNORECASE)
DEFAULT_SYSTEM = "A chat between a curious human and an assistant that answers questions about an image."


def bos_token_id(tokenizer) -> int:
    """The token every sequence starts with: ``<bos>``, or end-of-text where there is none (GPT-2 style)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def text_ids(tokenizer, text: str | list[str]) -> list[int] | list[list[int]]:
    """``text`` as tokens, a special token's name in it read as plain text: a conversation about GPT models
    that writes ``<|endoftext|>`` must not end an answer midway in training (nor a prompt at inference).
    The template's own markers (``<bos>``, end-of-text) are added as ids, never written into text."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def caption_prompt_ids(tokenizer, prompt: str = "") -> list[int]:
    """What a caption is generated from: ``<bos>`` and the caption prompt, as in training."""
    return [bos_token_id(tokenizer)] + (text_ids(tokenizer, prompt) if prompt else [])


def image_placeholders(text: str) -> list[re.Match]:
    """LLaVA's ``<image>`` placeholders in ``text`` (with the blanks around each): a turn's first line or last, as LLaVA
    writes it, always; elsewhere unless an XML element's, closed by ``</image>`` before any other ``<image>`` (an RSS
    feed's ``<image><url>...</url></image>`` in a code conversation, or ``<image>photo</image>``: cut out, or refused)."""
    if not _ANY_TAG.search(text):  # most answers: a fifth of the time of reading LLaVA-Instruct-150k went to them
        return []
    return [m for m in _IMAGE_TAG.finditer(text) if m.end() == len(text) or m.start() == 0 and "\n" in m.group(0)
            or not _CLOSED.match(text, m.end())]


def strip_image_placeholder(text: str) -> str:
    """Remove LLaVA's ``<image>`` placeholder (and the line break around it)."""
    for found in reversed(image_placeholders(text)):
        text = text[:found.start()] + " " + text[found.end():]
    return text.strip()


class EncodedConversation(NamedTuple):
    """A conversation as tokens: what the model reads, what it is trained to say, and what was cut."""

    input_ids: list[int]
    labels: list[int]
    kept: int  # turns kept; the later ones did not fit and were dropped whole
    answer_cut: bool  # the first answer alone did not fit: kept cut, without its end-of-text token


@functools.lru_cache(maxsize=8)
def _context_ids(system: str, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """``<bos>`` and the system line: the same for every conversation, tokenized once."""
    return (bos_token_id(tokenizer), *(text_ids(tokenizer, system + "\n") if system else []))


@dataclass(frozen=True)
class ConversationTemplate:
    """Prompt layout of the instruct stage (see the module docstring).

    Args:
        system: the first line of every conversation; empty for none.
        user: marker before each question.
        assistant: marker after each question; the answer follows after a space.
    """

    system: str = DEFAULT_SYSTEM
    user: str = "Human: "
    assistant: str = "\nAssistant:"

    def chat_template(self) -> str:
        """This layout as a Jinja ``chat_template`` (what ``tokenizer.apply_chat_template`` renders):
        ``{"role": "user" | "assistant", "content": ...}`` messages, optionally led by a ``system``
        message that replaces :attr:`system`. The rendered text tokenizes to the ids :meth:`encode`
        gives (tested); the image is not in the text (it reaches the model through cross-attention), so
        a question's ``<image>`` placeholder is left out, as training leaves it out. The prompt for a reply ends with the user's message,
        whose assistant marker is part of it: ``add_generation_prompt`` adds nothing."""
        def literal(text: str) -> str:
            return json.dumps(text, ensure_ascii=False)

        # content as a string, or as transformers' multimodal messages write it, a list of parts: its text parts, the
        # image ones left out (the image reaches the model through cross-attention, not the prompt)
        return (
            "{% macro text(content) %}{% if content is string %}{{ content }}{% else %}"
            "{{ content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('\\n') }}{% endif %}"
            "{% endmacro %}"
            # a question's <image> placeholders left out, as training leaves them out (strip_image_placeholder: the blanks
            # around each one space), an image part standing as one (text_of: the parts joined by line breaks)
            "{% macro question(content) %}{% set kept = namespace(parts=[], text='', at=0) %}"
            "{% if content is string %}{% set kept.parts = [content] %}{% else %}{% for part in content %}"
            "{% set kept.parts = kept.parts + ['<image>' if part['type'] == 'image' else part['text']] %}{% endfor %}{% endif %}"
            # every letter case of the tag found (each as long as <image>: the pieces' places stay those of the text); one
            # against a word is text (List<Image>), as training reads it (an XML element's, <image>...</image>, is not told)
            "{% set original = kept.parts | join('\\n') %}"
            f"{{% set pieces = original{''.join(f'.replace({tag!r}, {_TAG!r})' for tag in _TAG_CASES)}.split({_TAG!r}) %}}"
            "{% set kept.text, kept.at = '', 0 %}{% for piece in pieces %}"
            "{% set this = original[kept.at:kept.at + piece | length] %}{% set before = pieces[loop.index0 - 1][-1:] %}"
            "{% if not loop.last and not (piece[-1:] and (piece[-1:].isalnum() or piece[-1:] == '_')) %}"
            "{% set this = this.rstrip() %}{% endif %}{% if loop.first %}{% set kept.text = this %}"
            "{% elif before and (before.isalnum() or before == '_') %}{% set kept.text = kept.text + original[kept.at - 7:kept.at] + this %}"
            "{% else %}{% set kept.text = kept.text + ' ' + this.lstrip() %}{% endif %}"
            "{% set kept.at = kept.at + piece | length + 7 %}{% endfor %}{{ kept.text | trim }}{% endmacro %}"
            "{{ bos_token or eos_token }}"  # (a tokenizer without one, as Qwen's: end-of-text starts each sequence, bos_token_id)
            "{% if messages and messages[0]['role'] == 'system' %}"
            "{% set system = text(messages[0]['content']) %}{% set turns = messages[1:] %}"
            f"{{% else %}}{{% set system = {literal(self.system)} %}}{{% set turns = messages %}}{{% endif %}}"
            "{% if system %}{{ system }}{{ '\\n' }}{% endif %}"
            "{% for message in turns %}"
            "{% if message['role'] == 'user' %}"
            f"{{% if not loop.first %}}{{{{ '\\n' }}}}{{% endif %}}{{{{ {literal(self.user)} }}}}"
            f"{{{{ question(message['content']) }}}}{{{{ {literal(self.assistant)} }}}}"
            "{% elif message['role'] == 'assistant' %}{{ ' ' }}{{ text(message['content']) }}{{ eos_token }}"
            "{% endif %}{% endfor %}"
        )

    def _context(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        return list(_context_ids(self.system, tokenizer))

    def _question_text(self, question: str, first: bool) -> str:
        # LLaVA's <image> placeholder, as training leaves it out: a question asked as the original scripts asked theirs
        # ("<Image>\nWhat is ...") asked the model with text it never saw
        return ("" if first else "\n") + self.user + strip_image_placeholder(question) + self.assistant

    def _question(self, question: str, tokenizer: PreTrainedTokenizerBase, first: bool) -> list[int]:
        return text_ids(tokenizer, self._question_text(question, first))

    def prompt(self, question: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Tokens that ask one question; generation continues with the answer."""
        return self._context(tokenizer) + self._question(question, tokenizer, first=True)

    def prompts(self, questions: list[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
        """:meth:`prompt` of each question, tokenized in one call (a benchmark's 50,000, a call each, were 18 s)."""
        context = self._context(tokenizer)
        texts = [self._question_text(question, first=True) for question in questions]
        return [context + ids for ids in text_ids(tokenizer, texts)] if texts else []

    def chat_prompt(self, history: list[tuple[str, str]], question: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Tokens of the earlier ``(question, answer)`` turns, whole, then ``question``: generation
        continues with its answer. With no history it is :meth:`prompt`."""
        input_ids = self.encode(history, tokenizer, max_length=10**9).input_ids if history else self._context(tokenizer)
        return input_ids + self._question(question, tokenizer, first=not history)

    def first_question_lengths(self, questions: list[str], tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Tokens each conversation takes up to its first answer (:meth:`encode` needs at least one more), the
        questions tokenized 8,192 a call (LLaVA-Instruct-150k's 157k, a call each, were most of a minute; all in one
        call held 1.5 GB more for a moment, for encodings read once)."""
        context = len(self._context(tokenizer))
        texts = [self._question_text(question, first=True) for question in questions]
        return [context + len(ids) for start in range(0, len(texts), 8192) for ids in text_ids(tokenizer, texts[start:start + 8192])]

    def encode(self, turns: list[tuple[str, str]], tokenizer: PreTrainedTokenizerBase, max_length: int) -> EncodedConversation:
        """The conversation's tokens and labels within ``max_length`` tokens.

        Whole turns are kept while they fit; later turns are dropped, never cut. Only when the first
        turn alone is too long is its answer cut (without an end-of-text token, since it did not end),
        and ``answer_cut`` says so. If not even one answer token fits, ``ValueError`` says so: such a
        sample would teach nothing.
        """
        input_ids = self._context(tokenizer)
        labels = [IGNORE_INDEX] * len(input_ids)
        kept = 0
        answer_cut = False
        # every question and answer in one call to the tokenizer (a call each was 7 calls a conversation: 4 minutes
        # of LLaVA-Instruct-150k's preprocessing)
        texts = [text for index, (question, answer) in enumerate(turns)
                 for text in (self._question_text(question, first=index == 0), " " + answer)]
        tokens = text_ids(tokenizer, texts) if texts else []
        for index in range(len(turns)):
            question_ids, answer_ids = tokens[2 * index], tokens[2 * index + 1] + [tokenizer.eos_token_id]
            room = max_length - len(input_ids) - len(question_ids)
            if room < len(answer_ids):
                if kept > 0:
                    break
                if room < 1:
                    raise ValueError(
                        f"the first question needs {len(input_ids) + len(question_ids)} tokens with the template, "
                        f"leaving no room for an answer within max_length={max_length}"
                    )
                answer_ids = answer_ids[:-1][:room]
                answer_cut = True
            input_ids += question_ids + answer_ids
            labels += [IGNORE_INDEX] * len(question_ids) + answer_ids
            kept += 1
            if len(input_ids) >= max_length:
                break
        return EncodedConversation(input_ids, labels, kept, answer_cut)


_HAN, _KANA = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]"), re.compile(r"[\u3040-\u30ff]")


def listed_options_question(question: str, options: list[str]) -> str:
    """The question with its options, asking for a letter in LLaVA's multiple-choice wording: in Chinese for a question
    in Chinese, as LLaVA asks MMBench-CN's."""
    check_options(options)
    listed = "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, options))
    # mostly Chinese, counting characters against English words: 出口 quoted in an English question is English, and a
    # Golden Gate Bridge named in a Chinese one is Chinese
    han = len(_HAN.findall(question))
    chinese = han > 0 and han >= len(re.findall(r"[A-Za-z]+", question)) and not _KANA.search(question)
    return f"{question}\n{listed}\n" + ("请直接回答选项字母。" if chinese else "Answer with the option's letter from the given choices directly.")


def choice_prompts(template: ConversationTemplate, tokenizer: PreTrainedTokenizerBase, questions: list[str],
                   option_lists: list[list[str]], method: str) -> tuple[list[list[int]], list[list[list[int]]]]:
    """:func:`choice_prompt` of many questions, their prompts and options each tokenized in one call (a call per option
    made a 50,000-question benchmark wait 22 s before its first answer). Each option is the answer the template would
    supervise: a leading space, the text, end-of-text."""
    for index, options in enumerate(option_lists):
        check_options(options, f"question {index + 1} of {len(option_lists)}" if len(option_lists) > 1 else "a multiple-choice question")
    if method != "likelihood":
        return template.prompts([listed_options_question(q, o) for q, o in zip(questions, option_lists)], tokenizer), \
            [[] for _ in questions]
    flat = [" " + option for options in option_lists for option in options]
    tokens = iter(text_ids(tokenizer, flat) if flat else [])
    return template.prompts(questions, tokenizer), [[next(tokens) + [tokenizer.eos_token_id] for _ in options]
                                                    for options in option_lists]


def check_options(options: list[str], which: str = "a multiple-choice question") -> None:
    """Refuse what no letter can name: fewer than 2 options or more than ``len(LETTERS)`` (a caller's mistake: the
    Python API's :class:`~mmcaption.errors.ConfigError`, which a service answers as a bad request)."""
    if not 2 <= len(options) <= len(LETTERS):
        raise ConfigError(f"{which} needs 2 to {len(LETTERS)} options ({', '.join(LETTERS)}), got {len(options)}")


def choice_prompt(
    template: ConversationTemplate, tokenizer: PreTrainedTokenizerBase, question: str, options: list[str], method: str
) -> tuple[list[int], list[list[int]]]:
    """Prompt and option tokens of a multiple-choice question: ``likelihood`` asks the question and
    scores each option's text; ``generation`` lists the options and asks for a letter (no option tokens)."""
    prompts, options_ids = choice_prompts(template, tokenizer, [question], [options], method)
    return prompts[0], options_ids[0]
