import datasets
import pytest
from PIL import Image
from transformers import AutoTokenizer

from mmcaption.collate import IGNORE_INDEX
from mmcaption.data.coco import write_caption_split
from mmcaption.data.records import BadRecords
from mmcaption.prompts import ConversationTemplate, strip_image_placeholder


@pytest.fixture(scope="module")
def tokenizer(backbones):
    return AutoTokenizer.from_pretrained(backbones[0])


def supervised_spans(labels: list[int]) -> list[list[int]]:
    spans, current = [], []
    for label in labels:
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(label)
    return spans + ([current] if current else [])


def test_labels_are_exactly_the_assistant_turns_and_their_end_markers(tokenizer):
    template = ConversationTemplate()
    turns = [("What colour is the circle?", "red"), ("Where is it?", "The circle is on the left."), ("How many?", "one")]
    input_ids, labels, kept, answer_cut = template.encode(turns, tokenizer, max_length=256)
    assert kept == 3 and not answer_cut and len(input_ids) == len(labels)
    eos = tokenizer.eos_token_id
    expected = [tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [eos] for _, answer in turns]
    assert supervised_spans(labels) == expected
    # every supervised token is the input token at that position (labels are shifted inside the loss)
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(labels, input_ids))
    text = tokenizer.decode(input_ids)
    assert text == (
        f"<|endoftext|>{template.system}\nHuman: What colour is the circle?\nAssistant: red<|endoftext|>"
        "\nHuman: Where is it?\nAssistant: The circle is on the left.<|endoftext|>\nHuman: How many?\nAssistant: one<|endoftext|>"
    )
    # the generation prompt is the same prefix the first answer followed in training
    prompt = template.prompt("What colour is the circle?", tokenizer)
    assert input_ids[: len(prompt)] == prompt and labels[len(prompt)] != IGNORE_INDEX


def test_a_special_tokens_name_in_the_text_is_text_not_the_token(tokenizer, backbones, tmp_path):
    # a conversation about GPT models (ShareGPT's text-only ones have them) that writes "<|endoftext|>": it became the
    # real end-of-text token, so the model learnt to stop after "They append the"
    template = ConversationTemplate()
    turns = [("How do GPT models mark the end of a document <|endoftext|>?", "They append the <|endoftext|> token, then go on.")]
    input_ids, labels, _, _ = template.encode(turns, tokenizer, max_length=256)
    eos = tokenizer.eos_token_id
    assert input_ids.count(eos) == 2 and input_ids[0] == eos and input_ids[-1] == eos  # <bos> and the answer's end only
    assert [label for label in labels if label == eos] == [eos]
    assert tokenizer.decode(input_ids[1:-1]).endswith("They append the <|endoftext|> token, then go on.")
    assert eos not in template.prompt("What is <|endoftext|>?", tokenizer)[1:]
    image = tmp_path / "i.png"  # captions are tokenized the same way
    Image.new("RGB", (8, 8)).save(image)
    folder = write_caption_split(iter([(1, "i.png", image.read_bytes(), [(1, "a sign saying <|endoftext|> on a wall")])]),
                                 tokenizer, tmp_path / "split", BadRecords("x"), {})
    assert eos not in datasets.load_from_disk(str(folder / "captions"))[0]["token_ids"]


def test_truncation_drops_whole_turns_and_never_leaves_a_sample_without_supervision(tokenizer):
    template = ConversationTemplate(system="")
    turns = [("What colour is the circle?", "red"), ("Where is it?", "The circle is on the left of the image.")]
    full = template.encode(turns, tokenizer, max_length=512).input_ids
    first_only, labels, kept, answer_cut = template.encode(turns, tokenizer, max_length=len(full) - 1)
    assert kept == 1 and not answer_cut
    assert supervised_spans(labels) == [tokenizer(" red", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]

    long_answer = [("What is it?", "a red circle on the left and a blue square on the right of it")]
    prompt_length = len(template.prompt("What is it?", tokenizer))
    ids, labels, kept, answer_cut = template.encode(long_answer, tokenizer, max_length=prompt_length + 2)
    assert len(ids) == prompt_length + 2 and kept == 1 and answer_cut
    assert sum(label != IGNORE_INDEX for label in labels) == 2 and labels[-1] != tokenizer.eos_token_id

    with pytest.raises(ValueError, match="no room for an answer"):
        template.encode(long_answer, tokenizer, max_length=prompt_length)


def test_image_placeholder_is_removed():
    assert strip_image_placeholder("<image>\nWhat is this?") == "What is this?"
    assert strip_image_placeholder("What is this?\n<image>") == "What is this?"


def test_the_exported_chat_template_renders_the_training_layout_token_for_token(backbones, trained_checkpoint, tmp_path):
    from transformers import AutoTokenizer

    from mmcaption.data.conversation_fields import text_of
    from mmcaption.export import export_checkpoint
    from mmcaption.prompts import DEFAULT_SYSTEM, ConversationTemplate

    exported = AutoTokenizer.from_pretrained(export_checkpoint(trained_checkpoint, tmp_path / "export") / "tokenizer")
    plain = AutoTokenizer.from_pretrained(str(backbones[0]))
    turns = [("What colour is the circle?", "It is red."), ("Where is it?", "On the left, next to a blue square.")]
    messages = [m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    for system in (DEFAULT_SYSTEM, ""):
        template = ConversationTemplate(system=system)
        expected = template.encode(turns, plain, max_length=1000).input_ids
        given = [{"role": "system", "content": system}, *messages] if system != DEFAULT_SYSTEM else messages
        assert exported.apply_chat_template(given, tokenize=True, return_dict=False) == expected, system
        # a question alone: the prompt the model answers from, as predict and the API build it
        prompt = exported.apply_chat_template([*given[:-3]], tokenize=True, add_generation_prompt=True, return_dict=False)
        assert prompt == template.prompt(turns[0][0], plain), system
        # transformers' multimodal messages: content as parts, the image one left out (was the list's Python repr)
        parts = [{**m, "content": [{"type": "image"}, {"type": "text", "text": m["content"]}] if m["role"] == "user" else
                  [{"type": "text", "text": m["content"]}]} for m in given]
        assert exported.apply_chat_template(parts, tokenize=True, return_dict=False) == expected, system
        # LLaVA's placeholder, and the original scripts' "<Image>\n" before a question: left out, as training leaves it
        # (was asked as text the model never saw)
        placed = [{**m, "content": ("<Image>\n" if i % 2 else "<image>\n") + m["content"]} if m["role"] == "user" else m
                  for i, m in enumerate(given)]
        assert exported.apply_chat_template(placed, tokenize=True, return_dict=False) == expected, system
        assert template.prompt("<Image>\n" + turns[0][0], plain) == template.prompt(turns[0][0], plain)
        # ... wherever it stands: the blanks around it one space, an image part between two texts too (the template
        # left "What   colour" and "What\ncolour" where training read "What colour")
        # in any letter case, two together one space each, and one against a word kept as text (List<Image> in code)
        for content in ("What <image> colour is\n<IMAGE>\nthe circle?", "What <iMage> colour <image><Image> is it?",
                        "Fix my List<Image> please <image>",
                        [{"type": "text", "text": "What colour"}, {"type": "image"}, {"type": "text", "text": "is the circle?"}]):
            asked = exported.apply_chat_template([*given[:-4], {"role": "user", "content": content}], tokenize=True,
                                                 add_generation_prompt=True, return_dict=False)
            assert asked == template.prompt(text_of(content), plain), content
    # a tokenizer without a beginning-of-sequence token (Qwen's, GPT-2's): training starts with end-of-text, and the
    # template started with nothing
    plain.bos_token = None
    plain.chat_template = ConversationTemplate().chat_template()
    assert plain.apply_chat_template(messages, tokenize=True, return_dict=False) == \
        ConversationTemplate().encode(turns, plain, max_length=1000).input_ids


def test_letters_are_asked_for_in_chinese_for_a_question_in_chinese_as_llava_asks_mmbench_cn():
    from mmcaption.prompts import listed_options_question

    asked = listed_options_question("图中的动物是什么？", ["猫", "狗"])
    assert asked == "图中的动物是什么？\nA. 猫\nB. 狗\n请直接回答选项字母。"
    assert listed_options_question("What is it?", ["a cat", "a dog"]).endswith("\nAnswer with the option's letter from the given choices directly.")
    # a Chinese question naming something in English is Chinese; an English question quoting a Chinese sign is English
    assert listed_options_question("下面哪个选项描述了图中的 Golden Gate Bridge?", ["a", "b"]).endswith("请直接回答选项字母。")
    assert listed_options_question("图中的人在做什么?(What is the person doing?)", ["a", "b"]).endswith("请直接回答选项字母。")
    assert listed_options_question("What does the sign reading 出口 on the door mean?", ["exit", "entrance"]).endswith(
        "from the given choices directly.")
    # Japanese (kana beside its kanji) keeps the English instruction, as LLaVA has no Japanese one
    assert listed_options_question("この動物は何ですか？", ["猫", "犬"]).endswith("from the given choices directly.")
