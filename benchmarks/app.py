"""``mmcaption-app`` as a user meets it: time to a served page, and the first caption in a real browser.

    python benchmarks/app.py --model exported/demo --image demo_data/coco/val2017/000000003001.jpg \
        [--rounds 3] [--screenshot app.png --question "What is above the yellow square?"]

Each round starts ``mmcaption-app`` afresh and measures the seconds from the command to the first page
served (Python start, Gradio import, model load), then, in headless Chromium (Debian's ``chromium``
package, driven by Playwright), from the click on *Caption* to the caption on the page. Prints each
round and the medians. ``--screenshot`` afterwards asks the chat panel ``--question`` and keeps a
screenshot of the page.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import time
import urllib.request

from playwright.sync_api import sync_playwright


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(model: str) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    began = time.perf_counter()
    process = subprocess.Popen([shutil.which("mmcaption-app") or "mmcaption-app", "--model", model, "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise SystemExit(f"mmcaption-app exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return process, url, time.perf_counter() - began
        except OSError:
            time.sleep(0.1)


def first_caption(browser, url: str, image: str) -> tuple[float, str, object]:
    page = browser.new_page(viewport={"width": 1100, "height": 620})
    page.goto(url)
    page.locator("#image input[type=file]").set_input_files(image)
    page.wait_for_function("() => document.querySelector('#image img') !== null")
    began = time.perf_counter()
    page.locator("#caption-button").click()
    page.wait_for_function("() => document.querySelector('#caption textarea').value.length > 0", timeout=120_000)
    return time.perf_counter() - began, page.locator("#caption textarea").input_value(), page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--screenshot", default=None)
    parser.add_argument("--question", default="What is in the picture?")
    args = parser.parse_args()
    startups, captions = [], []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        for round_ in range(args.rounds):
            process, url, startup = start(args.model)
            try:
                seconds, caption, page = first_caption(browser, url, args.image)
                print(f"round {round_ + 1}: served after {startup:.1f} s, first caption {seconds:.2f} s: {caption!r}")
                startups.append(startup)
                captions.append(seconds)
                if args.screenshot and round_ == args.rounds - 1:
                    page.get_by_role("tab", name="Chat").click()
                    page.locator("#question textarea").fill(args.question)
                    page.locator("#question textarea").press("Enter")
                    page.wait_for_function("() => [...document.querySelectorAll('#conversation .bot')]"
                                           ".some(e => e.innerText.trim().length > 0)", timeout=120_000)
                    time.sleep(1.0)  # the last streamed tokens
                    page.screenshot(path=args.screenshot)
                    print(f"screenshot: {args.screenshot}")
                page.close()
            finally:
                process.terminate()
                process.wait(timeout=30)
        browser.close()
    print(f"median over {args.rounds} rounds: served after {statistics.median(startups):.1f} s, "
          f"first caption {statistics.median(captions):.2f} s")


if __name__ == "__main__":
    main()
