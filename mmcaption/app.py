"""``mmcaption-app``: a web page to try a trained model - caption an image, chat about it, pick an option.

    pip install -e ".[app]"
    mmcaption-app --model exported/demo                  # a folder of mmcaption-export
    mmcaption-app --checkpoint checkpoints/demo-instruct/last.ckpt

It serves on http://127.0.0.1:7860 (``--host 0.0.0.0`` to let other machines in, ``--port`` for
another port). Three panels share one image and the generation settings: a caption, a conversation
about the image (answers stream as they are generated; a new image starts a new conversation) and
multiple choice (the letter of the most likely option, and every option's share of the likelihood).
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmcaption.chat import check_source, load_captioner
from mmcaption.console import quieted
from mmcaption.errors import ConfigError, user_errors_exit
from mmcaption.evaluation.answers import LETTERS, own_letters_dropped
from mmcaption.images import check_image
from mmcaption.inference import Captioner, last_cut
from mmcaption.usage import app_parser, backbones_given

TITLE = "mmcaption"
MAX_UPLOAD = "100mb"  # past any photo: a 200-megapixel phone's JPEG is about 60 MB


def generation_settings(max_new_tokens: float, min_new_tokens: float, num_beams: float, sampling: bool,
                        temperature: float) -> dict[str, Any]:
    """``generate`` keyword arguments from the page's settings (sampling turns beam search off)."""
    settings: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "num_beams": 1 if sampling else int(num_beams),
                                "do_sample": bool(sampling)}
    if min_new_tokens:
        settings["min_new_tokens"] = min(int(min_new_tokens), int(max_new_tokens))
    if sampling:
        settings["temperature"] = max(float(temperature), 1e-3)
    return settings


def _mistake(gr, message: str) -> Exception:
    """A user's mistake, said on the page: not printed with its traceback in the terminal (ten bad clicks, ten tracebacks)."""
    return gr.Error(message, print_exception=False)


def _image(path: str | None, gr) -> bytes:
    """The uploaded image's bytes, or a message on the page saying why there are none."""
    if not path:
        raise _mistake(gr, "Upload an image first (drag it onto the image box or click it).")
    if not Path(path).is_file():  # uploads are deleted an hour after they were made
        raise _mistake(gr, "This upload was cleared after an hour: upload the image again.")
    data = Path(path).read_bytes()
    problem = check_image(data)
    if problem is not None:
        raise _mistake(gr, f"This image cannot be read ({Path(path).name}): {problem}")
    return data


class App:
    """What the page's buttons call; one model, one request at a time (the page queues the rest)."""

    def __init__(self, captioner: Captioner) -> None:
        import gradio as gr

        self.gr, self.captioner = gr, captioner

    def caption(self, image: str | None, *settings) -> str:
        caption = self.captioner.caption(_image(image, self.gr), **generation_settings(*settings))
        self._say_cut("caption", last_cut())
        return caption

    def _say_cut(self, what: str, cut: tuple[int, int, int]) -> None:
        """A text that stopped before its end (``cut``: :func:`~mmcaption.inference.last_cut` of the thread that made it)
        is said on the page, as chat and predict say it (the API's warning went to the server's terminal, once: the page
        showed an answer cut mid-sentence as a whole one)."""
        if cut[0]:
            self.gr.Warning(f"The {what} stopped before its end, " + (
                "where the language model's context ends: a new conversation (clear it) leaves more room"
                if cut[1] else "at the length limit: 'Max new tokens' raises it"))

    def chat(self, question: str, messages: list[dict], image: str | None, *settings) -> Iterator[tuple[list[dict], str]]:
        """Streams the answer into the conversation; yields (conversation, question box)."""
        from transformers import TextIteratorStreamer

        question = (question or "").strip()
        if not question:
            yield messages, ""
            return
        picture = _image(image, self.gr)
        history = _turns(messages)
        messages = [*messages, {"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        yield messages, ""  # the question shown and its box emptied once: emptied at every streamed piece, it lost what
        kept = self.gr.skip()  # the user began typing next while the answer streamed
        settings = generation_settings(*settings)
        streaming = settings["num_beams"] == 1
        streamer = TextIteratorStreamer(self.captioner.tokenizer, skip_prompt=True, skip_special_tokens=True) if streaming else None
        result: dict[str, Any] = {}

        def answer() -> None:
            try:
                result["answer"] = self.captioner.chat(picture, question, history, **settings,
                                                       **({"streamer": streamer} if streamer else {}))
                result["cut"] = last_cut()  # this thread's call's
            except Exception as error:  # shown on the page; the streamer is ended so the page does not wait
                result["error"] = error
                if streamer is not None:
                    streamer.end()

        worker = threading.Thread(target=answer, daemon=True)
        worker.start()
        if streamer is not None:
            text = ""
            for piece in streamer:
                text += piece
                messages[-1] = {"role": "assistant", "content": text.strip()}
                yield messages, kept
        worker.join()
        if "error" in result:  # the question taken out of the conversation and put back in its box: the page keeps what
            yield messages[:-2], question  # was shown last, sent back with each later question (all of them then refused)
        if isinstance(result.get("error"), ValueError):  # the user's (a conversation past the context): on the page alone
            raise _mistake(self.gr, str(result["error"]))
        if "error" in result:
            raise self.gr.Error(f"The model failed to answer: {result['error']}")
        messages[-1] = {"role": "assistant", "content": result["answer"]}  # exactly what Captioner.chat returns
        self._say_cut("answer", result["cut"])
        yield messages, kept

    def choose(self, image: str | None, question: str, options_text: str) -> tuple[str, dict[str, float]]:
        options = [line.strip() for line in (options_text or "").splitlines() if line.strip()]
        options = own_letters_dropped(options) or options  # "A. red" typed: lettered once on the page, "A. A. red" was
        if not 2 <= len(options) <= len(LETTERS):
            raise _mistake(self.gr, f"Write 2 to {len(LETTERS)} options, one per line ({len(options)} given).")
        if not (question or "").strip():
            raise _mistake(self.gr, "Write the question.")
        picture = _image(image, self.gr)
        try:
            scores = self.captioner.option_scores(picture, question.strip(), options)
        except ValueError as error:  # a question past the model's context: said on the page
            raise _mistake(self.gr, str(error)) from None
        best = max(range(len(options)), key=scores.__getitem__)
        peak = max(scores)
        weights = [math.exp(score - peak) for score in scores]
        shares = {f"{LETTERS[i]}. {option}": weight / sum(weights) for i, (option, weight) in enumerate(zip(options, weights))}
        return f"**{LETTERS[best]}** - {options[best]}", shares


def _text(content: Any) -> str:
    """A message's text: a string, or the parts Gradio's chat box gives back (``[{"text": ..., "type": "text"}]``: the
    second question sent the model their Python repr as the first turn)."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, (list, tuple)) else [content]
    return "".join(part if isinstance(part, str) else str(part.get("text") or "") if isinstance(part, dict) else ""
                   for part in parts)


def _turns(messages: list[dict]) -> list[tuple[str, str]]:
    """The page's conversation as the (question, answer) pairs ``Captioner.chat`` takes."""
    turns, question = [], None
    for message in messages:
        content = _text(message["content"])
        if message["role"] == "user":
            question = content
        elif question is not None:
            turns.append((question, content))
            question = None
    return turns


def _upload_as_sent(image) -> None:
    """The image box gives the handlers the uploaded file itself, which :func:`_image` checks as the Python API does.
    Gradio opened it with Pillow first: a 200-megapixel phone photo (past Pillow's own limit, which mmcaption raises
    for its reading only) and a file that is no image were refused there, as "Could not preprocess input component"."""
    opened = image.preprocess

    def preprocess(payload):
        path = getattr(payload, "path", None)
        return path if path and not str(getattr(payload, "url", None) or "").startswith("data:") else opened(payload)
    image.preprocess = preprocess


def build(captioner: Captioner, model_name: str = ""):
    """The page (a ``gradio.Blocks``)."""
    import gradio as gr

    app = App(captioner)
    # it serves this machine: no telemetry or version check sent to Gradio's servers (on by default)
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"## {TITLE}" + (f" - `{model_name}`" if model_name else ""))
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", image_mode=None, label="Image", sources=["upload", "clipboard"],
                                 elem_id="image", height=280)
                _upload_as_sent(image)
                # the model's own settings to start from, as the Python API and predict use them (32 tokens and greedy
                # were the page's, whatever the model was exported with)
                saved = captioner.tasks.generation
                tokens, least, beams = saved.max_new_tokens or 32, saved.min_new_tokens or 0, saved.num_beams or 1
                with gr.Accordion("Generation settings (the model's own to start)", open=False):
                    max_new_tokens = gr.Slider(1, max(256, tokens), value=tokens, step=1, label="Max new tokens",
                                               elem_id="max-new-tokens")
                    min_new_tokens = gr.Slider(0, max(64, least), value=least, step=1, label="Min new tokens",
                                               elem_id="min-new-tokens")
                    num_beams = gr.Slider(1, max(8, beams), value=beams, step=1, label="Beams (without sampling)", elem_id="beams")
                    sampling = gr.Checkbox(bool(saved.do_sample), label="Sample", elem_id="sampling")
                    temperature = gr.Slider(0.05, 2.0, value=min(max(saved.temperature or 0.7, 0.05), 2.0) if saved.do_sample
                                            else 0.7, step=0.05, label="Temperature (when sampling)")
                settings = [max_new_tokens, min_new_tokens, num_beams, sampling, temperature]
            with gr.Column(scale=2):
                with gr.Tab("Caption"):
                    caption_button = gr.Button("Caption", variant="primary", elem_id="caption-button")
                    caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption")
                with gr.Tab("Chat"):
                    conversation = gr.Chatbot(label="Conversation", height=300, elem_id="conversation")
                    question = gr.Textbox(label="Question", placeholder="Ask about the image and press Enter",
                                          elem_id="question")
                    with gr.Row():
                        ask = gr.Button("Ask", variant="primary", elem_id="ask-button")
                        gr.ClearButton([conversation, question], value="New conversation")
                with gr.Tab("Multiple choice"):
                    choice_question = gr.Textbox(label="Question", elem_id="choice-question")
                    options = gr.Textbox(label="Options, one per line", lines=4, elem_id="options")
                    choose = gr.Button("Choose", variant="primary", elem_id="choose-button")
                    chosen = gr.Markdown(elem_id="chosen")
                    shares = gr.Label(label="Share of the likelihood", elem_id="shares")
        caption_button.click(app.caption, [image, *settings], caption)
        for trigger in (ask.click, question.submit):
            trigger(app.chat, [question, conversation, image, *settings], [conversation, question])
        image.change(lambda: [], None, conversation)  # a new image: a new conversation
        choose.click(app.choose, [image, choice_question, options], [chosen, shares])
    return page


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on (the app started a second time, say), naming another: the
    web server's own error, after the model has loaded, talks about its ``launch()`` and an environment variable."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))  # without SO_REUSEADDR, as the server's own check binds
    except OSError as error:
        raise ConfigError(f"cannot serve on {host}:{port}: {error.strerror or error} (another mmcaption-app, or another "
                          f"server, is there?): give another port, --port {port + 1}") from None


@user_errors_exit(signals=False)  # the web server stops on Ctrl-C its own way
@quieted
def main(argv: list[str] | None = None) -> None:
    """``mmcaption-app``."""
    args = app_parser().parse_args(argv)
    check_port_free(args.host, args.port)  # before the model loads, not a minute later
    check_source(args.model, args.checkpoint)  # and before Gradio's import
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError('the app needs Gradio: pip install "mmcaption[app]" (or pip install -e ".[app]")') from None
    captioner = load_captioner(args.model, args.checkpoint, args.device, args.compute_dtype, **backbones_given(args))
    page = build(captioner, Path(args.model or args.checkpoint).name)
    shown = socket.gethostname() if args.host in ("0.0.0.0", "::") else args.host  # every interface: not an address to open
    print(f"mmcaption-app: serving {args.model or args.checkpoint} on http://{shown}:{args.port}", flush=True)
    # an upload past a photo's size is refused; uploads are deleted after an hour (Gradio kept every one, for good)
    page.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, show_error=True,
                                                   footer_links=[], quiet=True, max_file_size=MAX_UPLOAD)


if __name__ == "__main__":
    main()
