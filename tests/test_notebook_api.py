"""The Python API as a notebook user calls it: batches as pandas and NumPy hold them, long lists of photos,
one bad item among many, ``~`` paths, and casts that would ruin a 4-bit model."""

import io
import json
import pickle
import random
import re
import shutil
import warnings
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, UnidentifiedImageError

import mmcaption
import mmcaption.inference as inference
from mmcaption import Captioner
from mmcaption.demo.synthetic import Scene, draw_scene
from mmcaption.errors import ConfigError, ImageInputError, NotAModelFolderError
from mmcaption.export import main as export_main


@pytest.fixture(scope="module")
def exported(trained_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("notebook") / "export"
    export_main([str(trained_checkpoint), str(folder)])
    return folder


@pytest.fixture(scope="module")
def captioner(exported):
    return Captioner.from_pretrained(exported)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for index, colour in enumerate(["red", "blue", "green", "red", "blue"]):
        path = folder / f"photo_{index}.png"
        draw_scene(Scene(colour, ["circle", "square"][index % 2], "left"), 64, random.Random(index)).save(path)
        paths.append(str(path))
    return paths


def test_batches_as_pandas_numpy_and_generators_hold_them_caption_as_a_list_does(captioner, photos):
    expected = captioner.caption(photos)
    assert len(expected) == 5
    table = pd.DataFrame({"path": photos, "question": ["What colour is the shape?"] * 5})
    # were refused: "an image is a path, ..., not Series" / "an image array is HxW, ... this one has shape (5,)"
    assert captioner.caption(table["path"]) == expected
    assert captioner.caption(np.array(photos)) == expected
    assert captioner.caption(tuple(photos)) == expected
    assert captioner.caption(path for path in photos) == expected
    import datasets

    assert captioner.caption(datasets.Dataset.from_dict({"image": photos})["image"]) == expected  # a dataset's column
    assert captioner.caption(table["path"].values) == expected  # pandas 3: an ArrowStringArray, was refused
    assert captioner.caption(pd.Index(photos)) == expected
    assert captioner.caption(photos, batch_size=np.int64(2)) == expected  # a NumPy integer, as arithmetic gives one
    pictures = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in photos])  # N x H x W x C: N images
    assert captioner.caption(pictures) == expected
    assert captioner.caption(pictures[0]) == expected[0]  # one H x W x C array is one image
    # a batch, any number at a time: the same captions as one batch of all
    assert captioner.caption(photos, batch_size=2) == captioner.caption(photos, batch_size=1) == expected
    for wrong in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=rf"batch_size is a whole number of images of at least 1, not {wrong!r}"):
            captioner.caption(photos, batch_size=wrong)

    # one question asked of every image; the questions of a DataFrame's column
    question = "What colour is the shape?"
    answers = captioner.answer(photos, [question] * 5)
    assert captioner.answer(photos, question) == answers  # was "an image is a path, ..., not list"
    assert captioner.answer(table["path"], table["question"], batch_size=3) == answers  # was "question 0 is 0  What ...?"
    options = ["red", "blue", "green", "yellow"]
    letters = captioner.choose(photos, [question] * 5, [options] * 5)
    assert captioner.choose(photos, question, options) == letters
    assert captioner.choose(photos, question, options, batch_size=2) == letters
    by_two, all_at_once = (captioner.option_scores(photos, question, options, batch_size=size) for size in (2, 5))
    assert np.allclose(by_two, all_at_once, atol=1e-4)  # as float rounding in batches of other shapes allows
    with pytest.raises(ValueError, match="choose with 5 questions needs a list of options per question, or one list"):
        captioner.choose(photos, question, [options] * 4)
    sheet = pd.DataFrame([options] * 5, columns=["A", "B", "C", "D"])  # a multiple-choice sheet's option columns
    assert captioner.choose(table["path"], table["question"], sheet) == letters  # were refused, dumping the array
    assert captioner.choose(photos, question, sheet.to_numpy()) == letters
    benchmark = pd.DataFrame({"question": [question] * 5, **{letter: [option] * 5 for letter, option in zip("ABCD", options)},
                              "answer": ["A"] * 5})  # a benchmark sheet: its question and answer are not options
    assert captioner.choose(photos, question, benchmark) == letters
    benchmark.loc[0, ["C", "D"]] = float("nan")  # a question with two options (MMBench's have 2 to 4)
    assert captioner.option_scores(photos, question, benchmark)[0] == pytest.approx(
        captioner.option_scores(photos[0], question, options[:2]), abs=1e-4)
    with pytest.raises(ValueError, match=r"options is a list of the options' texts .*, not 7$"):
        captioner.choose(photos[0], question, 7)


def test_a_generator_of_frames_is_read_a_batch_at_a_time(captioner, photos, monkeypatch):
    # a generator was read whole before the first image was made the model's size: a video's frames all at once
    read, generated = [], []
    real = captioner.tasks.generate

    def frames():
        for index, path in enumerate(photos):
            read.append((index, len(generated)))
            yield path

    def counting(*args, **kwargs):
        generated.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(captioner.tasks, "generate", counting)
    captions = captioner.caption(frames(), batch_size=2)
    assert captions == captioner.caption(photos) and len(generated) == 3 + 1
    assert read == [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2)]  # two read, one batch generated, two more read, ...
    import datasets

    streamed = datasets.Dataset.from_dict({"image": photos}).to_iterable_dataset()["image"]  # a streamed dataset's column
    assert captioner.caption(streamed, batch_size=2) == captions  # was "an image is ..., not IterableColumn"
    bad = iter([photos[0], photos[1], b"notanimage"])
    with pytest.raises(UnidentifiedImageError, match=r"^image 3: the image's bytes cannot be decoded"):  # its length unknown
        captioner.caption(bad, batch_size=2)


def test_a_long_list_of_photos_is_never_held_at_full_size_all_at_once(captioner, photos, monkeypatch, tmp_path):
    # a list of 300 phone photos was decoded whole before any was made the model's size: 4 GB for 40 of them
    live, most = [], [0]
    real = inference.load_rgb

    def counting(source, *settings):
        picture = real(source, *settings)
        live.append(weakref.ref(picture))
        most[0] = max(most[0], sum(ref() is not None for ref in live))
        return picture

    monkeypatch.setattr(inference, "load_rgb", counting)
    photo = tmp_path / "IMG_0001.JPG"
    Image.open(photos[0]).convert("RGB").resize((1600, 1200)).save(photo)
    captions = captioner.caption([photo] * 6, batch_size=4)
    assert len(captions) == 6 and len(set(captions)) == 1 and len(live) == 6
    assert most[0] == 1  # each decoded picture let go once the model's pixels were made of it


def test_a_bad_item_among_many_is_named_by_its_place(captioner, photos, tmp_path):
    with pytest.raises(UnidentifiedImageError, match=r"^image 2 of 3: the image's bytes cannot be decoded: not an image Pillow "
                                                     r"can read \(text\)$"):  # was "<_io.BytesIO object at 0x...>"
        captioner.caption([photos[0], b"notanimage", photos[1]])
    with pytest.raises(FileNotFoundError, match=r"image 3 of 3: No such file or directory: .*missing\.jpg") as caught:
        captioner.caption([photos[0], photos[1], str(tmp_path / "missing.jpg")])
    assert caught.value.errno == 2 and caught.value.filename == str(tmp_path / "missing.jpg")  # kept for code that reads them
    with pytest.raises(UnidentifiedImageError, match=r"^the image's bytes cannot be decoded"):  # one image: no place to name
        captioner.caption(b"notanimage")
    with open(photos[0]) as text:  # opened without 'rb': a UnicodeDecodeError alone, and in a list a TypeError of arguments
        with pytest.raises(TypeError, match=r"^an image file must be opened in binary mode: open\(path, 'rb'\)$"):
            captioner.caption(text)
        with pytest.raises(TypeError, match=r"^image 2 of 2: an image file must be opened in binary mode"):
            captioner.caption([photos[0], text])
    import copy  # a replica per worker thread, as calls to one take turns: "cannot pickle '_thread.lock' object"

    replica = copy.deepcopy(captioner)
    assert replica.model is not captioner.model and replica.caption(photos[0]) == captioner.caption(photos[0])
    # a large folder's one broken file lost every caption made before it: with skip_unreadable, None in its place
    whole = captioner.caption([photos[0], photos[1]])
    with pytest.warns(UserWarning, match=r"image 2 of 4: the image's bytes cannot be decoded.*: its result is None"):
        kept = captioner.caption([photos[0], b"notanimage", photos[1], str(tmp_path / "missing.jpg")], batch_size=2,
                                 skip_unreadable=True)
    assert kept == [whole[0], None, whole[1], None]
    assert captioner.caption((p for p in [b"notanimage", photos[0]]), skip_unreadable=True) == [None, whole[0]]  # a generator
    assert captioner.answer([b"notanimage", photos[0]], "What is it?", skip_unreadable=True)[0] is None
    with pytest.warns(UserWarning, match=r"image 2 of 2: .*: its result is None"):  # was [None, None]: "is None" missed it
        beams = captioner.caption([photos[0], b"notanimage"], skip_unreadable=True, num_beams=2, num_return_sequences=2)
    assert len(beams[0]) == 2 and all(isinstance(text, str) for text in beams[0]) and beams[1] is None
    # multiple choice had no skip_unreadable: a benchmark sheet's one broken image lost the whole sheet's letters
    options = ["a red square", "a blue circle"]
    letters = captioner.choose([photos[0], photos[1]], "What is shown?", options)
    scores = captioner.option_scores([photos[0], photos[1]], "What is shown?", options)
    skipped: list = []
    assert captioner.choose([photos[0], b"notanimage", photos[1]], "What is shown?", options, batch_size=2,
                            skip_unreadable=True, errors=skipped) == [letters[0], None, letters[1]]
    assert [index for index, _ in skipped] == [1] and skipped[0][1].startswith("image 2 of 3: the image's bytes")
    with pytest.warns(UserWarning, match=r"image 1 of 2: .*: its result is None"):
        kept_scores = captioner.option_scores([b"notanimage", photos[1]], "What is shown?", options, skip_unreadable=True)
    assert kept_scores[0] is None and kept_scores[1] == pytest.approx(scores[1], abs=1e-5)
    with pytest.raises(UnidentifiedImageError, match=r"image 2 of 2"):  # without it, raised as before
        captioner.choose([photos[0], b"notanimage"], "What is shown?", options)


def test_a_services_requests_get_their_own_reasons_and_a_bad_request_is_told_from_a_failure(captioner, photos, tmp_path):
    # with skip_unreadable the reasons were warnings only, which a service's threads read from one process-wide list (a
    # request got another's private path); a request's mistake raised TypeError or ValueError from inside transformers,
    # which a service could not tell from a failure of its own; "false" from a request's JSON turned sampling on
    errors: list = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reasons are this call's, not the process's warnings
        kept = captioner.caption([photos[0], b"notanimage", str(tmp_path / "missing.jpg")], skip_unreadable=True, errors=errors)
    assert kept[1:] == [None, None] and [index for index, _ in errors] == [1, 2]
    assert errors[0][1].startswith("image 2 of 3: the image's bytes cannot be decoded") and "missing.jpg" in errors[1][1]
    answered: list = []
    assert captioner.answer([b"notanimage"], "What is it?", skip_unreadable=True, errors=answered) == [None]
    assert answered[0][0] == 0
    for bad, kind in ((b"notanimage", UnidentifiedImageError), (str(tmp_path / "missing.jpg"), FileNotFoundError),
                      (12, TypeError), ("", ValueError), ("/9j/4AAQSkZJRgABAQ", ValueError)):
        with pytest.raises(kind) as raised:  # the error it is, and the caller's mistake
            captioner.caption(bad)
        assert isinstance(raised.value, mmcaption.MMCaptionError), (bad, type(raised.value).__mro__)
    with pytest.raises(ImageInputError, match=r"base64 text goes as a data: URL") as raised:  # a small JPEG's base64: was
        captioner.caption("/9j/4AAQSkZJRgABAQAAAQABAAD")  # a path tried, "No such file or directory: '/9j/...'"
    assert type(pickle.loads(pickle.dumps(raised.value))) is ValueError  # across processes, as the error it is
    with pytest.raises(FileNotFoundError) as raised:
        captioner.caption(str(tmp_path / "missing.jpg"))
    sent = pickle.loads(pickle.dumps(raised.value))
    assert type(sent) is FileNotFoundError and str(sent) == str(raised.value) and sent.filename == str(tmp_path / "missing.jpg")
    for settings, said in (({"do_sample": "false"}, r"do_sample 'false' is not true or false"),
                           ({"num_return_sequences": "2"}, r"num_return_sequences '2' is not a number"),
                           ({"length_penalty": "1.0"}, r"length_penalty '1.0' is not a number"),
                           ({"max_lenght": 10}, r"max_lenght is no setting of Hugging Face's generate \(did you mean max_length"),
                           ({"input_ids": [1]}, r"input_ids: set by the task methods themselves"),
                           ({"max_time": "5"}, r"max_time '5' is not a number"),
                           ({"max_time": True}, r"max_time True is not a number"),
                           ({"deadline": 5}, r"deadline is no setting of Hugging Face.s generate"),
                           ({"max_time": -1}, r"max_time -1 must be above 0 \(seconds\)"),  # was a one-token caption
                           ({"batchsize": 2}, r"batchsize is no setting .*\(did you mean batch_size"),  # the API's own names
                           ({"skip_unreadables": True}, r"\(did you mean skip_unreadable"),
                           ({"skip_unreadable": True, "errors": "x"}, r"errors is a list that each skipped image's \(index, "
                                                                      r"reason\) is added to, not 'x'")):  # an AttributeError
        with pytest.raises(ConfigError, match=said):
            captioner.caption(photos[0], **settings)
    with pytest.raises(ConfigError, match=r"history is a list of \(question, answer\) pairs"):
        captioner.chat(photos[0], "What is it?", history=["hello"])


def test_a_model_put_in_training_mode_captions_as_in_eval_mode_and_stays_as_it_was_put(captioner, photos):
    # after captioner.model.train() (a fine-tuning step in the same notebook), dropout changed the greedy captions
    settings = {"min_new_tokens": 4, "max_new_tokens": 6}
    expected = captioner.caption(photos[0], **settings)
    vision_mode = captioner.model.vision_model.training
    captioner.model.train()
    captioner.model.vision_model.eval()  # a frozen tower kept in eval mode, as training does
    try:
        assert [captioner.caption(photos[0], **settings) for _ in range(3)] == [expected] * 3
        assert captioner.model.training and not captioner.model.vision_model.training  # each module as it was put
    finally:
        captioner.model.eval()
        captioner.model.vision_model.train(vision_mode)


def test_generation_ends_at_the_language_models_context(captioner, photos):
    # max_new_tokens=10**9 generated past the context for minutes, holding a service's one model
    context = captioner.model.language_model.config.max_position_embeddings
    tokens = captioner.tokenizer(captioner.caption(photos[0], max_new_tokens=10**9, min_new_tokens=context - 8),
                                 add_special_tokens=False)["input_ids"]
    assert context - 8 <= len(tokens) + 2 and len(tokens) <= context  # up to the context, not past it
    with pytest.raises(ConfigError, match=rf"min_new_tokens {context + 1} is past the language model's context \({context} "):
        captioner.caption(photos[0], min_new_tokens=context + 1, max_new_tokens=context + 1)
    # settings within the context are left as they are, whatever the batch's other prompts (a long question beside a
    # short one cut the short one's answer to the long one's room)
    short, words = "What is it?", context
    while len(captioner.template.prompt("what " * words, captioner.tokenizer)) > context - 6:  # 6 tokens of room
        words -= 1
    long = "what " * words
    settings = {"max_new_tokens": 12, "min_new_tokens": 12}
    assert captioner.answer([photos[0], photos[0]], [short, long], **settings)[0] == captioner.answer(photos[0], short, **settings)
    # the long question alone: its answer ends where the context does, and at least 12 new tokens cannot fit after it
    # (the cap was the context itself, not what the prompt leaves: a 223-token prompt went on to 479 positions of 256)
    prompt = len(captioner.template.prompt(long, captioner.tokenizer))
    with pytest.raises(ConfigError, match=rf"min_new_tokens 12 is past the language model's context \({context} tokens\) "
                                          rf"after the prompt's {prompt}: {context - prompt} new tokens fit"):
        captioner.answer(photos[0], long, **settings)
    answer = captioner.answer(photos[0], long, max_new_tokens=10**9, min_new_tokens=context - prompt)
    assert len(captioner.tokenizer(answer, add_special_tokens=False)["input_ids"]) <= context - prompt + 2
    # beside a short question it ends there too, as asked alone (it went on to the short one's room, past the context),
    # greedy and with beams; the short one's answer is not cut
    settings = {"max_new_tokens": context - prompt + 4, "suppress_tokens": [captioner.tokenizer.eos_token_id]}
    for beams in (1, 2):
        alone = [captioner.answer(photos[0], q, **settings, num_beams=beams) for q in (short, long)]
        assert captioner.answer([photos[0]] * 2, [short, long], **settings, num_beams=beams) == alone, beams
        assert captioner.tasks.unfinished == [True, True], beams  # both cut, as predict's rows say (the long one was not)
    # and a script is told, as chat and predict tell theirs: a cut answer read as the model's whole one
    with pytest.warns(UserWarning, match=rf"^2 of 2 texts stopped before their end: 1 at the length limit \({context - prompt + 4} "
                                         r"new tokens\), which max_new_tokens=\.\.\. raises; 1 where the language model's context "
                                         r"ends \(a shorter question or history leaves more room\)$") as said:
        captioner.answer([photos[0]] * 2, [short, long], **settings)
    assert len(said) == 1 and said[0].filename == __file__  # once per call, at the line that called
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an answer that ends within its limit: nothing said
        captioner.answer(photos[0], short, max_new_tokens=context - prompt + 4)
    # a generator's frames, read a batch at a time: one warning for the call, not one per batch ("2 of 2", 3 times)
    never_end = {"suppress_tokens": [captioner.tokenizer.eos_token_id]}
    with pytest.warns(UserWarning) as said:
        captioner.caption((photo for photo in [photos[0]] * 5), batch_size=2, max_new_tokens=2, **never_end)
    assert [str(w.message) for w in said if "texts stopped" in str(w.message)] == [
        "5 of 5 texts stopped before their end: 5 at the length limit (2 new tokens), which max_new_tokens=... raises"]
    with pytest.warns(UserWarning, match=r"^1 of 1 texts stopped before their end: 1 at the length limit \(max_length 3 "
                                         r"tokens, the prompt's included\), which max_length=\.\.\. raises$"):
        captioner.caption(photos[0], max_length=3, **never_end)  # the call's limit named, not the model's max_new_tokens
    # a call's max_length stays in effect where the model's own max_new_tokens is past the context (it was capped over it)
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from mmcaption.tasks import Tasks, call_settings

    # a model saved with a max_length of its own (trained with --model.generation.max_length): that limit is named, with
    # its figure ("which max_new_tokens=... raises", no figure, where the call set none)
    tasks, captioner.tasks = captioner.tasks, Tasks(captioner.tasks.model, captioner.tokenizer, {"max_length": 3})
    try:
        with pytest.warns(UserWarning, match=r"^1 of 1 texts stopped before their end: 1 at the length limit \(max_length 3 "
                                             r"tokens, the prompt's included\), which max_length=\.\.\. raises$"):
            captioner.caption(photos[0], **never_end)
    finally:
        captioner.tasks = tasks

    model_settings = GenerationConfig(max_new_tokens=4096)
    stub = SimpleNamespace(context=2048, generation=model_settings)
    for given, expected in (({"max_length": 50}, {"max_length": 50, "max_new_tokens": None}), ({}, {"max_new_tokens": 2028})):
        settings = call_settings(model_settings, given, None)
        Tasks._within_context(stub, 20, settings)
        assert settings == expected
    # the kinds a request's JSON and a pandas sheet give: whole numbers as 2.0, numpy's truth values
    assert captioner.caption(photos[0], num_beams=2.0, do_sample=np.bool_(False)) == captioner.caption(photos[0], num_beams=2)


def test_home_folders_missing_folders_and_wrong_settings_are_said(exported, photos, backbones, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(exported.parent))
    captioner = Captioner.from_pretrained(f"~/{exported.name}")  # was "~/export is not a saved mmcaption model folder"
    (exported.parent / "photo.png").write_bytes(open(photos[0], "rb").read())
    assert captioner.caption("~/photo.png") == captioner.caption(photos[0])  # was FileNotFoundError
    (exported.parent / "bb").symlink_to(backbones[0].parent)  # backbones named from home: "the folder lacks its files"
    moved = Captioner.from_pretrained(exported, language_model=f"~/bb/{backbones[0].name}", vision_model=f"~/bb/{backbones[1].name}")
    assert moved.caption(photos[0]) == captioner.caption(photos[0])
    from mmcaption.errors import ConfigError

    # a folder of one's own mistyped: was "... is no folder (any more). A checkpoint or an export records ...: link it"
    # an error of mmcaption's (chat and the app printed a traceback and exited 1 for the FileNotFoundError it was)
    with pytest.raises(ConfigError, match=rf"the language_model given, {tmp_path}/languag_model, is no folder$"):
        Captioner.from_pretrained(exported, language_model=str(tmp_path / "languag_model"))
    with pytest.raises(ConfigError, match=r"cannot load the language model .*vision_model: it is a CLIPVision model\. Is it "
                                          r"the vision model \(language_model and vision_model the other way round\)\?"):
        Captioner.from_pretrained(exported, language_model=str(backbones[1]), vision_model=str(backbones[0]))  # swapped:
    # transformers' list of every causal LM class, 3,329 characters
    # another language model than it was trained on (phi-1_5 for phi-2): 32 lines of RuntimeError shapes, chat exited 1
    from mmcaption.demo.synthetic import demo_corpus
    from mmcaption.demo.tiny import save_tiny_backbones

    other, _ = save_tiny_backbones(tmp_path / "other", demo_corpus(seed=1, num_scenes=50), seed=1, lm_hidden_size=32)
    with pytest.raises(ConfigError, match=rf"the language model {other} is not the one .*export was trained on, whose LoRA "
                                          rf"weights do not fit it \(size mismatch for .*\): give the language model it was "
                                          rf"trained with, {backbones[0]}"):
        Captioner.from_pretrained(exported, language_model=str(other), vision_model=str(backbones[1]))
    # the command-line tools too: the shell leaves "~" as it is after "--model=" (were "~/export is not a model folder")
    from mmcaption.usage import app_parser, chat_parser, export_parser

    home = str(exported.parent)
    chat = chat_parser().parse_args([f"--model=~/{exported.name}", "--language_model=~/bb"])
    assert (chat.model, chat.language_model) == (str(exported), f"{home}/bb")
    assert app_parser().parse_args([f"--model=~/{exported.name}"]).model == str(exported)
    parsed = export_parser().parse_args(["~/caption.ckpt", "~/out", "--vision_model=~/bb/vision"])
    assert (parsed.checkpoint, parsed.out, parsed.vision_model) == (f"{home}/caption.ckpt", f"{home}/out", f"{home}/bb/vision")
    with pytest.raises(NotAModelFolderError, match=r"nope is not a saved mmcaption model folder \(no such folder\)"):
        Captioner.from_pretrained(tmp_path / "nope")
    # the model's own mmcaption.json, or a photo, given: "(no mmcaption.json); ... mmcaption-export photo.jpg <new folder>"
    with pytest.raises(NotAModelFolderError, match=r"mmcaption\.json is not a saved mmcaption model folder \(a file, not a "
                                                   r"folder: give the folder it is in\)$"):
        Captioner.from_pretrained(exported / "mmcaption.json")
    (tmp_path / "photo.jpg").write_bytes(b"")
    with pytest.raises(NotAModelFolderError, match=r"photo\.jpg is not a saved mmcaption model folder \(a file, not a folder\)$"):
        Captioner.from_pretrained(tmp_path / "photo.jpg")
    for wrong in (False, "", "NF4"):  # False and "" loaded the folder's 4-bit model without a word
        with pytest.raises(ValueError, match=rf"quantization is one of nf4, fp4, int8, none \(or None for the folder's own\), "
                                             rf"not {wrong!r}"):
            Captioner.from_pretrained(exported, quantization=wrong)
    with pytest.raises(ValueError, match=r"history is a list of \(question, answer\) pairs of strings, not 'hi'"):
        captioner.chat(photos[0], "What is it?", "hi")  # was "not ['h', 'i']"
    answers = captioner.chat(photos[0], "What is it?", [("Hello?", "Hi.")], num_beams=2, num_return_sequences=2)
    assert isinstance(answers, list) and len(answers) == 2


def test_casts_that_would_ruin_the_4_bit_weights_are_refused_and_leave_the_model_as_it_was(captioner, photos):
    scores = captioner.option_scores(photos[0], "Which colour?", ["red", "blue", "green"])
    packed = captioner.model.language_model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert packed.dtype == torch.bfloat16  # two 4-bit weights a byte, stored as the compute dtype
    for cast in (lambda m: m.half(), lambda m: m.float(), lambda m: m.to(torch.float16), lambda m: m.to("cpu", torch.float32)):
        with pytest.raises(TypeError, match=r"quantized to 4 bits and computes in torch.bfloat16: a cast to torch.float\d+ "
                                            r"would convert its packed weights as numbers.*quantization='none'"):
            cast(captioner.model)  # .half() changed every answer without a word; .float() broke the model
    captioner.model.to("cpu")  # a move is what it was
    assert captioner.option_scores(photos[0], "Which colour?", ["red", "blue", "green"]) == scores
    captioner.model.to(torch.bfloat16)  # and a cast to the dtype the packed weights have (the trained ones follow)
    assert np.allclose(captioner.option_scores(photos[0], "Which colour?", ["red", "blue", "green"]), scores, atol=0.05)


def test_a_model_shared_on_the_hub_loads_by_its_repository_id(exported, photos, tmp_path, monkeypatch):
    # the model card's snippet names the repository: was "you/mmcaption-demo is not a saved mmcaption model folder"
    import shutil

    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--you--mmcaption-demo" / "snapshots" / "0123abc"
    shutil.copytree(exported, snapshot)
    (cache / "models--you--mmcaption-demo" / "refs").mkdir()
    (cache / "models--you--mmcaption-demo" / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # as `hf download` leaves it, offline
    monkeypatch.chdir(tmp_path)
    assert Captioner.from_pretrained("you/mmcaption-demo").caption(photos[0]) == Captioner.from_pretrained(exported).caption(
        photos[0])
    with pytest.raises(NotAModelFolderError, match=r"you/elsewhere is no folder here \(.*you/elsewhere\), and no saved "
                                                   r"mmcaption model could be had from the Hugging Face Hub under that name "
                                                   r"\(.*\); download it \(hf download you/elsewhere"):
        Captioner.from_pretrained("you/elsewhere")
    for local in ("./export", "../export", tmp_path / "you" / "export"):  # paths, not Hub ids: "no such folder", offline
        with pytest.raises(NotAModelFolderError, match=r"is not a saved mmcaption model folder \(no such folder\)"):
            Captioner.from_pretrained(local)
    # a Hub id whose owner is also a folder here, with nothing like its name in it, is still a Hub id
    (tmp_path / "you").mkdir()
    assert inference.model_source_problem("you/mmcaption-demo") is None
    assert isinstance(Captioner.from_pretrained("you/mmcaption-demo"), Captioner)
    # a mistyped folder under one that is here is no Hub id: it was asked of the hub, 24 s of retries offline
    shutil.copytree(exported, tmp_path / "exported" / "instruct")
    monkeypatch.setattr(inference, "hf_hub_download", lambda *args, **kwargs: pytest.fail("the hub was asked"))
    with pytest.raises(NotAModelFolderError, match=r"^exported/instrct is not a saved mmcaption model folder \(no such "
                                                   r"folder\); did you mean exported/instruct\?$"):
        Captioner.from_pretrained("exported/instrct")
    assert inference.model_source_problem("exported/instrct") == ("model folder not found: exported/instrct; did you mean "
                                                                   "exported/instruct?")


def test_loading_a_model_folder_shows_no_loading_bars_and_keeps_the_notebooks_setting(trained_checkpoint, tmp_path, capsys):
    # two "Loading weights: 100%|...| 61/61" bars came before the first caption, which the console scripts hide
    from transformers.utils import logging as hf_logging

    from mmcaption import Captioner
    from mmcaption.export import main as export_main

    hf_logging.enable_progress_bar()
    export_main([str(trained_checkpoint), str(tmp_path / "export")])
    assert hf_logging.is_progress_bar_enabled()  # the export put them back (off for the rest of a notebook's session)
    capsys.readouterr()
    Captioner.from_pretrained(tmp_path / "export")
    assert "Loading weights" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the notebook's own setting, as it was


def test_images_as_notebooks_hold_them_and_misuse_said_plainly(captioner, photos, tmp_path):
    import base64
    import io

    data = open(photos[0], "rb").read()
    expected = captioner.caption(photos[0])
    # a download's BytesIO, an open file, a bytearray: read as one image (were 71 "images", one per line, or 1661 ints)
    download = io.BytesIO(data)
    assert captioner.caption(download) == expected
    assert captioner.caption([download, download]) == [expected] * 2  # read again: it was empty after the first read
    with open(photos[0], "rb") as handle:
        assert captioner.caption(handle) == expected
    assert captioner.caption(bytearray(data)) == expected and captioner.caption([memoryview(data)]) == [expected]
    with open(photos[0], encoding="latin-1") as text, pytest.raises(TypeError, match=r"opened in binary mode: open\(path, 'rb'\)"):
        captioner.caption(text)
    # a data: URL, as a web page embeds an image (was "File name too long" and a message of the whole string)
    assert captioner.caption("data:image/png;base64," + base64.b64encode(data).decode()) == expected
    bare = base64.b64encode(data * 20).decode()  # a photo's base64 text: thousands of characters
    with pytest.raises(ValueError, match=r"an image path of [\d,]+ characters \(.{24}\.\.\.\) is no path: an image as base64 text "
                                         r"goes as a data: URL") as refused:
        captioner.caption(bare)
    assert len(str(refused.value)) < 300
    # an empty crop (a detector's box of no width): was a bare ZeroDivisionError without the item's place
    with pytest.raises(ValueError, match=r"image 2 of 2: the image is 0 x 30 pixels: nothing to see"):
        captioner.caption([photos[0], Image.open(photos[0]).crop((10, 10, 10, 40))])
    # a thin strip in memory, refused as its file is: the processor scaled its short side up (gigabytes at 224 pixels)
    for strip in (Image.new("RGB", (8000, 1)), np.zeros((1, 8000, 3), np.uint8), torch.zeros(3, 1, 8000)):
        with pytest.raises(ValueError, match=r"image 2 of 2: 8000 x 1 pixels, a strip longer than 500 times "
                                                               r"its width: .*CLIP ViT-B/32.s 224 pixels\) it would take [\d.]+ GB or more"):
            captioner.caption([photos[0], strip])
    # a folder, as predict takes one: was a bare IsADirectoryError traceback
    with pytest.raises(IsADirectoryError, match=r"a folder, not an image: give its images \(a list of their paths\), or caption "
                                                r"it with mmcaption predict --data.images FOLDER"):
        captioner.caption(str(tmp_path))
    # a whole-number setting given as a float (from JSON, or n / 2): was a TypeError from inside torch
    for beams in (2.5, float("inf"), float("nan")):  # infinity and NaN were an OverflowError / ValueError from int()
        with pytest.raises(ValueError, match=rf"num_beams {beams!r} must be a whole number"):
            captioner.caption(photos[0], num_beams=beams)
    # fit's checkpoints folder given for a model folder: the command that exports its checkpoint
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(NotAModelFolderError, match=r"checkpoints is not a saved mmcaption model folder \(no mmcaption\.json\); a "
                                                   r"checkpoint of mmcaption fit becomes one with: mmcaption-export .*last\.ckpt"):
        Captioner.from_pretrained(tmp_path / "checkpoints")


def test_questions_asked_of_a_caption_stage_model_say_once_what_to_expect(exported, photos):
    captioner = Captioner.from_pretrained(exported)  # the caption stage's: never taught to answer
    with pytest.warns(UserWarning, match=r"caption-stage model: the instruct stage teaches it to answer questions and chat; "
                                         r"expect captions, not answers"):
        captioner.answer(photos[0], "What colour is the shape?", max_new_tokens=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not at every call
        captioner.chat(photos[0], "What colour?", max_new_tokens=2)
        captioner.choose(photos[0], "What colour?", ["red", "blue"])


def test_a_question_past_the_language_models_context_is_refused_before_generating(captioner, photos):
    # a question of 100,000 words was asked: 4 minutes of one web server worker, and past Phi-2's 2,048 tokens
    context = captioner.model.language_model.config.max_position_embeddings
    long = "what " * context
    with pytest.raises(ValueError, match=rf"the question takes [\d,]+ tokens with the prompt, and the language model reads "
                                         rf"{context:,} at most: ask a shorter one"):
        captioner.answer(photos[0], long)
    with pytest.raises(ValueError, match=r"question 2 of 2 takes .* ask a shorter one"):
        captioner.answer([photos[0], photos[1]], ["What is it?", long])
    # a long option is said to be one (it was "the question takes ...: ask a shorter one", of a short question)
    with pytest.raises(ValueError, match=r"the question takes [\d,]+ tokens with the prompt and its longest option, .*: "
                                         r"shorten the question or its longest option"):
        captioner.choose(photos[0], "Which is it?", ["x " * context, "y"])
    with pytest.raises(ValueError, match=r"the conversation takes .* start a new one \(no history\), or ask a shorter question"):
        captioner.chat(photos[0], "And then?", history=[(long, "A square.")])
    with pytest.raises(ValueError, match=r"the question takes .* shorten the question or its longest option"):
        captioner.choose(photos[0], long, ["red", "blue"])
    assert isinstance(captioner.answer(photos[0], "What is it?", max_new_tokens=2), str)  # a question that fits is asked
    # a list of one question with one image: said as given (it was "1 questions need a list of as many images")
    with pytest.raises(ConfigError, match=r"^1 question in a list needs a list of as many images \(one image given; "):
        captioner.answer(photos[0], ["What is it?"])
    with pytest.raises(ConfigError, match=r"^3 questions in a list need a list of as many images \(2 images given; "):
        captioner.answer(photos[:2], ["What is it?"] * 3)


def test_max_time_bounds_the_whole_call_not_each_batch(captioner, photos, monkeypatch):
    # 8 batches with max_time=0.2 took 1.7 s: each batch's generate had the whole 0.2 s (README: "bounds a call's time")
    clock = iter(range(0, 1000, 1))  # each reading of the clock one second on
    monkeypatch.setattr(inference.time, "monotonic", lambda: next(clock))
    given = []
    real = captioner.tasks.generate

    def generate(*args, **kwargs):
        given.append(kwargs["max_time"])
        return real(*args, **{**kwargs, "max_time": None})

    monkeypatch.setattr(captioner.tasks, "generate", generate)
    images = [photos[0]] * 4
    captioner.caption(images, batch_size=1, max_new_tokens=2, max_time=2.5)
    assert given == [1.5, 0.5, 1e-3, 1e-3]  # the time left of the call's 2.5 s, and a token each once it is up
    given.clear()
    captioner.caption(iter(images), batch_size=2, max_new_tokens=2, max_time=2.5)  # a generator: the call's too
    assert given == [1.5, 0.5]


def test_a_sheet_of_number_options_read_by_pandas_is_chosen_from_as_its_text(captioner, photos, tmp_path):
    # a counting question's options 1, 2, 3, 4 (and 2, 3, 5 beside a gap, which pandas reads as 2.0, 3.0, 5.0): refused,
    # "option 0 is 1.0: each option is a non-empty string", while the CLI read the same CSV as text
    sheet = tmp_path / "count.csv"
    sheet.write_text("img_path,Question,A,B,C,D\n"
                     f"{photos[0]},How many shapes?,1,2,3,4\n{photos[1]},How many shapes?,2,3,5,\n")
    read = pd.read_csv(sheet)
    assert read["D"].dtype == float  # pandas' reading, the case
    as_text = pd.read_csv(sheet, dtype=str)
    expected = captioner.option_scores(list(as_text.img_path), list(as_text.Question), as_text)
    assert captioner.option_scores(list(read.img_path), list(read.Question), read) == expected
    assert [len(scores) for scores in expected] == [4, 3]
    nullable = pd.read_csv(sheet, dtype_backend="numpy_nullable")  # Int64 columns: the gap is pd.NA, not NaN
    assert nullable["D"].isna().iloc[1] and nullable["D"].iloc[1] is pd.NA
    assert captioner.option_scores(list(nullable.img_path), list(nullable.Question), nullable) == expected
    truths = tmp_path / "truths.csv"  # a true/false question's options, as a spreadsheet writes them
    truths.write_text(f"img_path,Question,A,B\n{photos[0]},Is it red?,TRUE,FALSE\n")
    read = pd.read_csv(truths)
    assert read["A"].dtype == bool
    assert captioner.option_scores([photos[0]], ["Is it red?"], read) == captioner.option_scores([photos[0]], ["Is it red?"],
                                                                                               [["True", "False"]])
    assert captioner.choose(photos[0], "How many shapes?", [1, 2]) == captioner.choose(photos[0], "How many shapes?", ["1", "2"])


def test_min_new_tokens_alone_is_not_said_to_clash_with_a_min_length_never_given(captioner, photos):
    # transformers' "Both `min_new_tokens` (=3) and `min_length`(=0) seem to have been set", once per batch: the
    # unset min_length had been filled with its default 0
    import logging

    from transformers.utils import logging as hf_logging

    said: list[logging.LogRecord] = []
    handler, level = logging.Handler(logging.WARNING), hf_logging.get_verbosity()
    handler.emit = said.append
    logging.getLogger("transformers").addHandler(handler)
    hf_logging.set_verbosity_warning()  # a notebook's (a console script run before in this process turned it down)
    try:
        captioner.caption(photos[:4], batch_size=2, min_new_tokens=3, max_new_tokens=4)
    finally:
        hf_logging.set_verbosity(level)
        logging.getLogger("transformers").removeHandler(handler)
    assert not [record.getMessage() for record in said if "min_length" in record.getMessage()]


def test_a_saved_model_whose_settings_carry_a_typo_loads_saying_what_it_left_out(exported, captioner, photos, tmp_path):
    # an export written before unknown generation names were refused held "lenght_penalty": from_pretrained refused
    # the whole model for it, and a config's "lenght_penalty: null" (to clear it) was refused as a typo too
    import json
    import shutil

    folder = tmp_path / "older"
    shutil.copytree(exported, folder)
    manifest = json.loads((folder / "mmcaption.json").read_text())
    manifest["generation"] = {**manifest.get("generation", {}), "lenght_penalty": 2.0}
    (folder / "mmcaption.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match=r"older/mmcaption\.json: its generation settings name what Hugging Face's generate has "
                                         r"no setting for, left out: lenght_penalty is no setting .*did you mean length_penalty"):
        older = Captioner.from_pretrained(folder)
    assert not hasattr(older.tasks.generation, "lenght_penalty")
    settings = {"min_new_tokens": 3, "max_new_tokens": 4}
    assert older.caption(photos[0], **settings) == captioner.caption(photos[0], **settings)
    assert older.caption(photos[0], lenght_penalty=None, **settings) == captioner.caption(photos[0], **settings)  # null: unset
    with pytest.raises(ConfigError, match=r"lenght_penalty is no setting"):  # a value given: still a typo
        older.caption(photos[0], lenght_penalty=2.0, **settings)


def test_an_image_given_as_a_file_uri_is_read_from_its_file(captioner, photos, tmp_path):
    # a file manager's or a browser's copied address (file:///home/me/my%20photo.png) was looked for as a relative path
    import shutil
    from pathlib import Path

    from mmcaption.data.image_sources import user_path

    spaced = tmp_path / "my photo é.png"
    shutil.copyfile(photos[0], spaced)
    settings = {"min_new_tokens": 3, "max_new_tokens": 4}
    assert spaced.as_uri().startswith("file:///") and "%20" in spaced.as_uri()
    assert captioner.caption(spaced.as_uri(), **settings) == captioner.caption(photos[0], **settings)
    assert user_path(spaced.as_uri(), Path("elsewhere")) == spaced  # a line of an image list, a questions file's image


def test_options_with_spaces_around_them_are_scored_as_predict_scores_the_sheet(captioner, photos):
    # a sheet's "  white circle " cells: predict reads them stripped, the API scored the spaces (another answer, same sheet)
    padded = captioner.option_scores(photos[0], "Which colour?", ["  red ", "blue ", " green"])
    assert padded == captioner.option_scores(photos[0], "Which colour?", ["red", "blue", "green"])
    with pytest.warns(UserWarning, match=r"options A, B are the same text \('red'\)"):  # the same option twice: said
        assert captioner.choose(photos[0], "Which colour?", [" red", "red "]) == "A"


def test_options_written_with_their_letters_are_asked_as_the_same_options_without_them(captioner, photos):
    # "A. red" as exams and sheets write options: the prompt letters them itself, and the letters' tokens were scored
    # too - another answer than the same options unlettered, unsaid
    plain = captioner.option_scores(photos[0], "Which colour?", ["red", "blue", "green"])
    for lettered in (["A. red", "B. blue", "C. green"], ["(A) red", "(B) blue", "(C) green"], ["a) red", "b) blue", "c) green"]):
        with pytest.warns(UserWarning, match=r"'Which colour\?': options .* are written with their letters, .*asked without them"):
            assert captioner.option_scores(photos[0], "Which colour?", lettered) == plain
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # options that only begin with capitals, or letters out of order, are texts
        captioner.choose(photos[0], "Which?", ["A red one", "B blue one"])
        captioner.choose(photos[0], "Which?", ["B. red", "A. blue"])


@pytest.mark.parametrize("part", ["tokenizer", "image_processor"])
def test_a_model_folder_whose_files_ask_to_run_their_own_code_is_refused_without_running_it(exported, tmp_path, part, monkeypatch):
    # a stranger's model from the Hub with an auto_map to a .py of its own: transformers asked on standard input whether
    # to run it (mmcaption chat's piped questions answered "yes" for the user), and ran it
    folder = Path(shutil.copytree(exported, tmp_path / "stranger"))
    ran = tmp_path / "ran"
    settings_file = folder / part / ("tokenizer_config.json" if part == "tokenizer" else "preprocessor_config.json")
    settings = json.loads(settings_file.read_text())
    base = "PreTrainedTokenizerFast" if part == "tokenizer" else "CLIPImageProcessor"
    settings["tokenizer_class" if part == "tokenizer" else "image_processor_type"] = "Own"  # a class transformers lacks
    settings["auto_map"] = {"AutoTokenizer" if part == "tokenizer" else "AutoImageProcessor":
                            ["own.Own", None] if part == "tokenizer" else "own.Own"}
    settings_file.write_text(json.dumps(settings))
    (folder / part / "own.py").write_text(f"open({str(ran)!r}, 'w').close()\nfrom transformers import {base} as Own\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("y\ny\n"))  # whatever a prompt would read
    with pytest.raises(ConfigError, match=rf"cannot load the .*{part}.*: its files ask to run Python code of their own \(an "
                                          r"auto_map in .*\), which mmcaption never runs"):
        Captioner.from_pretrained(folder)
    assert not ran.exists()


def test_a_manifest_of_other_kinds_of_values_is_refused_naming_the_value(exported, tmp_path):
    # a stranger's folder, or mmcaption.json edited by hand: AttributeError, KeyError and TypeError tracebacks from deep
    # in loading (and lora_target_modules "q_proj" read letter by letter)
    from mmcaption.model.card import read_manifest

    folder = Path(shutil.copytree(exported, tmp_path / "edited"))
    good = json.loads((folder / "mmcaption.json").read_text())
    for edit, said in ((lambda m: m.update(model=[]), "model is [], where it is an object"),
                       (lambda m: m.pop("merged"), "it has no 'merged'"),
                       (lambda m: m["model"].update(lora_r="4"), 'lora_r is "4", where it is a whole number'),
                       (lambda m: m["model"].update(lora_target_modules="q_proj"), 'lora_target_modules is "q_proj", where it '
                                                                                  "is a list of names"),
                       (lambda m: m["model"].update(cross_attention_layers="all"), "cross_attention_layers is \"all\""),
                       (lambda m: m.update(prompts=[]), "prompts is [], where it is an object"),
                       (lambda m: m.update(backbones={"evil": 5}), "backbones holds evil: 5, where it names")):
        manifest = json.loads(json.dumps(good))
        edit(manifest)
        (folder / "mmcaption.json").write_text(json.dumps(manifest))
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(folder / 'mmcaption.json'))}: {re.escape(said)}.* \(edited by "
                                              r"hand\?\): mend it, or export the checkpoint again"):
            Captioner.from_pretrained(folder)
    (folder / "mmcaption.json").write_text(json.dumps(good))
    assert read_manifest(folder)["model"] == good["model"]  # as exported: read


def test_a_run_that_raises_is_freed_and_leaves_the_threads_hook_as_it_was(tmp_path):
    # an Optuna sweep's pruned (or failed, or interrupted) trials each stayed in memory for good, its Trainer and model
    # held by the hook the full-disk guard puts in threading.excepthook: Lightning tears no callback down after an error
    import contextlib
    import gc
    import threading
    import weakref

    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.loggers import TensorBoardLogger

    from mmcaption.full_log_disk import CurvesOnFullDisk

    class Pruned(Callback):  # as optuna's PyTorchLightningPruningCallback raises TrialPruned
        def on_train_batch_end(self, *args) -> None:
            raise RuntimeError("Trial was pruned at step 1")

    hook = threading.excepthook
    trials = []
    for _ in range(2):
        model = BoringModel()
        trials.append(weakref.ref(model))
        trainer = Trainer(accelerator="cpu", max_steps=3, logger=TensorBoardLogger(tmp_path), enable_progress_bar=False,
                          enable_model_summary=False, enable_checkpointing=False, callbacks=[CurvesOnFullDisk(), Pruned()])
        with contextlib.suppress(RuntimeError):
            trainer.fit(model)
        assert threading.excepthook is hook
        del model, trainer
    gc.collect()
    assert [trial() for trial in trials] == [None, None]
