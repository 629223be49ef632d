"""``mmcaption-app``: the page in a real (headless) browser gives what the Python API gives; the handlers'
messages for what a user gets wrong."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

from mmcaption.demo.synthetic import Scene, draw_scene
from mmcaption.export import main as export_main
from mmcaption.inference import Captioner

from .conftest import REPO

gr = pytest.importorskip("gradio", reason='the app needs Gradio: pip install -e ".[app]"')

ARTIFACTS = Path(os.environ.get("MMCAPTION_TEST_ARTIFACTS", REPO / "test-artifacts"))
SETTINGS = {"min_new_tokens": 6}  # set on the page; the rest are the model's own, where the page starts


def chromium() -> str | None:
    """Debian's Chromium (``apt-get install chromium``), or the browser MMCAPTION_CHROMIUM names."""
    return os.environ.get("MMCAPTION_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def exported(trained_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("app") / "model"
    export_main([str(trained_checkpoint), str(out)])
    return out


@pytest.fixture(scope="module")
def served(exported):
    """``mmcaption-app`` serving the exported tiny model on a free localhost port: its address."""
    port = free_port()
    log = exported.parent / "app.log"
    with open(log, "w") as output:
        process = subprocess.Popen([shutil.which("mmcaption-app") or "mmcaption-app", "--model", str(exported),
                                    "--port", str(port)], stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"mmcaption-app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mmcaption-app did not serve {url} in 180 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def scene_image(path: Path, scene: Scene) -> Path:
    draw_scene(scene, 64, random.Random(0)).save(path)
    return path


@pytest.mark.slow
def test_the_page_in_a_browser_captions_and_chats_as_the_python_api_does(exported, served, tmp_path):
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no Chromium to drive: apt-get install chromium (or set MMCAPTION_CHROMIUM), as .ci/run does")
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    image = scene_image(tmp_path / "scene.png", Scene("red", "circle", "left"))
    captioner = Captioner.from_pretrained(exported)
    question, follow_up = "What colour is the shape?", "And where is it?"
    expected_caption = captioner.caption(str(image), **SETTINGS)
    expected_answer = captioner.chat(str(image), question, [], **SETTINGS)
    # the second question with the first turn as its history (it reached the model as the Python repr of Gradio's parts)
    expected_second = captioner.chat(str(image), follow_up, [(question, expected_answer)], **SETTINGS)
    assert expected_caption.strip() and expected_answer.strip()  # text to compare: the comparison means something

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            page.goto(served)
            page.get_by_text("Generation settings").click()
            _set_slider(page, "min-new-tokens", 6)
            page.locator("#image input[type=file]").set_input_files(str(image))
            # the upload done (its preview shown) before the click: on a busy machine the click came first, and the page
            # said "upload an image first" while the test waited for a caption
            page.locator("#image img").first.wait_for(timeout=90_000)
            page.locator("#caption-button").click()
            caption = page.locator("#caption textarea")
            _wait_for(page, "document.querySelector('#caption textarea').value", expected_caption)
            assert caption.input_value() == expected_caption

            page.get_by_role("tab", name="Chat").click()
            page.locator("#question textarea").fill(question)
            page.locator("#question textarea").press("Enter")
            answer_js = "[...document.querySelectorAll('#conversation .bot')].map(e => e.innerText.trim()).join('\\n')"
            _wait_for(page, answer_js, expected_answer)
            assert page.evaluate(answer_js) == expected_answer
            page.locator("#question textarea").fill(follow_up)
            page.locator("#question textarea").press("Enter")
            # taken once its box is emptied: an Enter while the first answer's event was still ending is not a new event
            for _ in range(20):
                _wait_for(page, "document.querySelector('#question textarea').value", "", timeout_s=3)
                if page.locator("#question textarea").input_value() == "":
                    break
                page.locator("#question textarea").press("Enter")
            _wait_for(page, answer_js, f"{expected_answer}\n{expected_second}")
            assert page.evaluate(answer_js) == f"{expected_answer}\n{expected_second}"
            page.screenshot(path=str(ARTIFACTS / "app.png"))
        finally:
            browser.close()
    assert (ARTIFACTS / "app.png").stat().st_size > 0


def _set_slider(page, elem_id: str, value: int, timeout_s: float = 30) -> None:
    """Types ``value`` into a slider's number box until the slider holds it: just after the accordion opened, Gradio
    sometimes set the box back to its old value, and the caption was asked for with the old setting (1 run in 10)."""
    box, slider = page.locator(f"#{elem_id} input[type=number]"), page.locator(f"#{elem_id} input[type=range]")
    deadline = time.monotonic() + timeout_s
    while True:
        box.fill(str(value))
        box.press("Enter")
        if slider.input_value() == str(value) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert slider.input_value() == str(value), f"the page's {elem_id} slider did not take {value}"


def _wait_for(page, expression: str, expected: str, timeout_s: float = 90) -> None:
    """Until the page's ``expression`` equals ``expected`` (the caller then asserts, so a different text
    fails with both shown rather than with a timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and page.evaluate(expression) != expected:
        time.sleep(0.2)


def test_handlers_explain_a_missing_or_unreadable_image_and_bad_options(exported, tmp_path):
    from mmcaption.app import App, build

    app = App(Captioner.from_pretrained(exported))
    assert build(app.captioner).analytics_enabled is False  # serving this machine: nothing sent to Gradio's servers
    settings = (8, 0, 1, False, 0.7)
    with pytest.raises(gr.Error, match="Upload an image first") as said:
        app.caption(None, *settings)
    assert said.value.print_exception is False  # a user's mistake, on the page: not a traceback in the terminal each time
    good = scene_image(tmp_path / "photo.png", Scene("blue", "square", "right"))
    broken = tmp_path / "phone.jpg"
    broken.write_bytes(good.read_bytes()[:60])  # a partly uploaded photo
    with pytest.raises(gr.Error, match=r"cannot be read \(phone.jpg\)"):
        app.caption(str(broken), *settings)
    with pytest.raises(gr.Error, match="2 to 8 options"):
        app.choose(str(good), "Which shape?", "square\n\n")
    with pytest.raises(gr.Error, match="This upload was cleared after an hour: upload the image again"):  # was Errno 2
        app.caption(str(tmp_path / "swept.png"), *settings)
    with pytest.raises(gr.Error, match=r"the question takes .* tokens with the prompt") as said:  # was a bare ValueError
        app.choose(str(good), "what " * app.captioner.model.language_model.config.max_position_embeddings, "red\nblue")
    assert said.value.print_exception is False
    with pytest.raises(gr.Error, match=r"takes .* tokens") as said:  # the chat's too: was "The model failed to answer"
        list(app.chat("what " * app.captioner.model.language_model.config.max_position_embeddings, [], str(good), *settings))
    assert said.value.print_exception is False

    # a text cut at the length limit is said on the page (the API's warning reached the server's terminal alone, once)
    with pytest.warns(UserWarning, match=r"^The caption stopped before its end, at the length limit: 'Max new tokens' raises it$"):
        app.caption(str(good), 1, 1, 1, False, 0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one that ended: nothing said
        warnings.filterwarnings("ignore", message=r"\d+ of \d+ texts stopped")  # (the API's own, for a script)
        app.caption(str(good), 64, 0, 1, False, 0.7)
    with pytest.warns(UserWarning, match=r"^The answer stopped before its end, at the length limit"):
        list(app.chat("What colour is it?", [], str(good), 1, 1, 1, False, 0.7))

    letter, shares = app.choose(str(good), "Which shape is it?", "circle\nsquare\ntriangle")
    expected = app.captioner.choose(str(good), "Which shape is it?", ["circle", "square", "triangle"])
    assert letter.startswith(f"**{expected}**")
    assert list(shares) == ["A. circle", "B. square", "C. triangle"] and abs(sum(shares.values()) - 1) < 1e-6
    assert max(shares, key=shares.get).startswith(expected)
    # options typed with their letters: lettered once on the page (was "A. A. circle") and scored as the plain ones
    assert app.choose(str(good), "Which shape is it?", "A. circle\nB. square\nC. triangle") == (letter, shares)

    # chat: each turn reaches the model with the conversation so far; the page shows what the API returns
    yields = list(app.chat("What colour is it?", [], str(good), *settings))
    first = yields[-1][0]
    # the question box is emptied as the question is taken, and then left alone: emptied at each streamed piece, it lost
    # the next question the user began typing while the answer streamed
    assert yields[0][1] == "" and len(yields) > 2 and all(box == gr.skip() for _, box in yields[1:])
    assert first[-1] == {"role": "assistant", "content": app.captioner.chat(str(good), "What colour is it?", [],
                                                                            max_new_tokens=8, num_beams=1, do_sample=False)}
    second = list(app.chat("And its shape?", first, str(good), *settings))[-1][0]
    expected_second = app.captioner.chat(str(good), "And its shape?", [("What colour is it?", first[-1]["content"])],
                                         max_new_tokens=8, num_beams=1, do_sample=False)
    assert [m["role"] for m in second] == ["user", "assistant"] * 2 and second[-1]["content"] == expected_second
    # a question refused for the context: the page keeps what was shown last, which held it with an empty answer and went
    # back to the model with every later question, each then refused too ("ask a shorter question" did not help)
    long = "what " * app.captioner.model.language_model.config.max_position_embeddings
    shown = []
    with pytest.raises(gr.Error, match=r"takes .* tokens"):
        for update in app.chat(long, second, str(good), *settings):
            shown.append(update)
    assert shown[-1] == (second, long.strip())  # the conversation as it was, the question back in its box to shorten
    third = list(app.chat("And its colour?", shown[-1][0], str(good), *settings))[-1][0]
    assert [m["role"] for m in third] == ["user", "assistant"] * 3 and third[-2]["content"] == "And its colour?"
    # as the page sends the conversation back: the chat box gives each message as parts ([{"text": ..., "type": "text"}]),
    # whose Python repr was the first turn the model read
    page = build(app.captioner)
    boxes = {block.elem_id: block for block in page.blocks.values() if getattr(block, "elem_id", None)}
    sent_back = boxes["conversation"].preprocess(boxes["conversation"].postprocess(first))
    assert not isinstance(sent_back[0]["content"], str)
    histories, chat = [], app.captioner.chat
    app.captioner.chat = lambda image, question, history, **kw: histories.append(history) or chat(image, question, history, **kw)
    assert list(app.chat("And its shape?", sent_back, str(good), *settings))[-1][0][-1]["content"] == expected_second
    assert histories == [[("What colour is it?", first[-1]["content"])]]  # the model's answers alone may not show it


def test_the_image_box_gives_the_handlers_the_upload_itself_and_the_settings_start_from_the_models(exported, tmp_path, monkeypatch):
    # Gradio opened an upload with Pillow before the handlers: a 200-megapixel phone photo (past Pillow's own limit) and a
    # file that is no image failed as "Could not preprocess input component at index 0", naming Gradio's cache path
    import PIL.Image
    from gradio.data_classes import ImageData

    from mmcaption.app import App, build

    app = App(Captioner.from_pretrained(exported))
    app.captioner.tasks.generation.num_beams, app.captioner.tasks.generation.max_new_tokens = 3, 300  # as exported with
    boxes = {block.elem_id: block for block in build(app.captioner).blocks.values() if getattr(block, "elem_id", None)}
    # the page starts from the model's own settings, as the API and predict use them (it was 32 tokens, greedy)
    assert (boxes["beams"].value, boxes["max-new-tokens"].value, boxes["max-new-tokens"].maximum) == (3, 300, 300)
    photo = scene_image(tmp_path / "photo.png", Scene("blue", "square", "right"))
    with monkeypatch.context() as pillow:  # this photo past Pillow's own limit, as a 200-megapixel one is (Gradio's open)
        pillow.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)
        with pytest.raises(PIL.Image.DecompressionBombError):
            PIL.Image.open(photo)
        given = boxes["image"].preprocess(ImageData(path=str(photo), orig_name="photo.png"))
    settings = (8, 0, 1, False, 0.7)
    assert given == str(photo) and app.caption(given, *settings) == app.captioner.caption(str(photo), max_new_tokens=8, num_beams=1)
    notes = tmp_path / "notes.jpg"
    notes.write_text("shopping list: milk")
    with pytest.raises(gr.Error, match=r"This image cannot be read \(notes.jpg\): "):
        app.caption(boxes["image"].preprocess(ImageData(path=str(notes), orig_name="notes.jpg")), *settings)


def test_the_app_refuses_a_folder_that_is_not_a_model_in_one_line(tmp_path, capsys):
    from mmcaption.app import main

    with pytest.raises(SystemExit) as exit_info:  # as the console script runs it
        main(["--model", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path} is not a model folder of mmcaption-export (no mmcaption.json in it)"


def test_the_app_and_chat_take_what_the_python_api_takes_and_name_a_model_given_in_the_wrong_place(exported, tmp_path, capsys):
    from mmcaption.app import check_source
    from mmcaption.chat import main as chat_main
    from mmcaption.errors import ConfigError

    # a Hub repository's id, as the README's sharing recipe names it: the API loads it, the app and chat refused it
    # ("not a model folder") before anything loaded
    check_source("you/mmcaption-demo", None)
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"")
    for model, checkpoint_given, said in (
            (str(checkpoint), None, rf"{checkpoint} is a file: a training checkpoint is given as --checkpoint"),
            (None, str(exported), rf"{exported} is a folder: an exported model is given as --model"),
            (str(tmp_path / "nope"), None, rf"model folder not found: {tmp_path / 'nope'}")):
        with pytest.raises(ConfigError, match=said):  # each was "not a model folder ..." or "checkpoint not found"
            check_source(model, checkpoint_given)
    with pytest.raises(SystemExit) as exit_info:
        chat_main(["--model", str(checkpoint)])
    assert (exit_info.value.code, capsys.readouterr().err.strip()) == (
        2, f"error: {checkpoint} is a file: a training checkpoint is given as --checkpoint")


def test_the_app_loads_a_checkpoint_as_its_export(trained_checkpoint, exported, tmp_path, capsys):
    from mmcaption.app import load_captioner, main

    image = str(scene_image(tmp_path / "scene.png", Scene("green", "triangle", "top")))
    settings = {"max_new_tokens": 8, "min_new_tokens": 8}
    from_checkpoint = load_captioner(checkpoint=str(trained_checkpoint)).caption(image, **settings)
    assert from_checkpoint == Captioner.from_pretrained(exported).caption(image, **settings)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "none.ckpt")])
    assert (exit_info.value.code, capsys.readouterr().err.strip()) == (2, f"error: checkpoint not found: {tmp_path / 'none.ckpt'}")


def test_a_port_in_use_is_refused_before_the_model_loads_naming_another(tmp_path, capsys):
    import socket

    from mmcaption.app import main

    with socket.socket() as busy:  # the app started a second time: the first one listens there
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            main(["--model", str(tmp_path), "--port", str(port)])  # not a model folder either: the port is said first
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot serve on 127.0.0.1:{port}: ") and err.endswith(f"give another port, --port {port + 1}")


@pytest.mark.slow
def test_the_app_refuses_an_upload_past_a_photos_size(served):
    # an upload of any size was kept, for good: anyone who could reach the port could fill the disk
    boundary = "mmcaption-upload"

    def upload(size: int) -> int:
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="photo.jpg"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n").encode() + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"{served}/gradio_api/upload", data=body,
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    assert upload(1 << 20) == 200
    assert upload(101 << 20) == 413
