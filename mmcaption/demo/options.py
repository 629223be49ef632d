"""``mmcaption-demo``'s arguments and the defaults they show, apart from the demo's work so that
``mmcaption-demo --help`` is answered without importing torch and Lightning."""

from __future__ import annotations

import argparse

from mmcaption.usage import described, path, shipped_configs

LANGUAGE_PRETRAINING_STEPS = 300  # text-only, about a minute on 2 cores; the loss has flattened by then
CLIP_PRETRAINING_STEPS = 2000  # contrastive image-text training of the tiny CLIP, ~2.5 minutes on 2 cores
CONFIG_DIR = shipped_configs()


def demo_parser() -> argparse.ArgumentParser:
    """Parsed with ``parse_known_args``: what it does not know goes to both stages' ``fit``."""
    parser = described("mmcaption.demo.run", "mmcaption-demo")
    parser.add_argument("--root", default="demo_data", type=path, help="where the synthetic data and tiny backbones go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and backbones")
    parser.add_argument("--train_images", type=int, default=3000, help="synthetic training images")
    parser.add_argument("--val_images", type=int, default=200, help="held-out images, never seen in training")
    parser.add_argument("--language_steps", "--pretrain_steps", type=int, default=LANGUAGE_PRETRAINING_STEPS,
                        help="text-only LM pretraining steps (pretrain_steps in the data's meta.json and its notes)")
    parser.add_argument("--clip_steps", type=int, default=CLIP_PRETRAINING_STEPS, help="contrastive tiny-CLIP steps")
    parser.add_argument("--scratch_control", action="store_true",
                        help="also train the instruct stage from scratch, to compare its steps to 80%% exact match "
                             "(a run of the whole demo with it: about 3 minutes longer on 2 cores)")
    parser.add_argument("--skip_scratch", action="store_true", help=argparse.SUPPRESS)  # the default since it is opt-in
    parser.add_argument("--report", default="demo_report", type=path, help="folder for the report (JSON) and the example PNG")
    parser.add_argument("--caption", default=str(CONFIG_DIR / "demo" / "caption.yaml"), type=path, help="caption stage config")
    parser.add_argument("--instruct", default=str(CONFIG_DIR / "demo" / "instruct.yaml"), type=path, help="instruct stage config")
    return parser
