"""What a setting the parser refused may have meant: the valid keys near it (by spelling, by the name Hugging Face's
Trainer gives it, at another level), or the data module that has it; and the run folders a config names."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser


def flat_keys(value: Any, prefix: str = "") -> list[str]:
    """The dotted keys of a nested configuration (``trainer.max_epochs``, ``model.config.lora_r``, ...)."""
    if isinstance(value, dict) and value:
        return [key for name, child in value.items() for key in flat_keys(child, f"{prefix}{name}.")]
    return [prefix.rstrip(".")]


def init_parameters(class_path: str) -> list[str]:
    """The constructor arguments of a class and of the classes it passes ``**kwargs`` on to."""
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names = []
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names += [p.name for p in inspect.signature(klass.__init__).parameters.values()
                      if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return list(dict.fromkeys(names))


# the data modules whose settings a key may have meant (data has no default class, so its settings are not in the defaults)
DATA_MODULES = ("CaptionDataModule", "InstructDataModule", "CaptionPredictDataModule", "MultipleChoiceDataModule",
                "QuestionsPredictDataModule")


def another_modules(key: str, given: str) -> str | None:
    """What to say of a data setting that is another data module's (or spelled close to one: ``image_rot``), not
    ``given``'s: the modules that have it, not their settings near its name; None when it is not that."""
    name = key.rsplit(".", 1)[-1]

    def near(module: str) -> list[str]:
        return difflib.get_close_matches(name, init_parameters(f"mmcaption.data.{module}"), n=1, cutoff=0.9)
    owners = {module: near(module)[0] for module in DATA_MODULES if module != given and near(module)}
    if not owners or near(given):
        return None
    meant = sorted(set(owners.values()))
    resume = "; training goes on from a checkpoint with --ckpt_path" if KNOWN_AS.get(name) == "ckpt_path" else ""
    return (f"  --{key}{'' if meant == [name] else ': ' + ' or '.join(meant)} is a setting of {' and '.join(owners)}, not "
            f"of {given}, the data this command's config reads (see its settings with --help){resume}")


def unknown_keys(message: str, parser: LightningArgumentParser) -> list[tuple[str, list[str]]]:
    """The keys a parse error is about, each with the valid keys it may have meant: anywhere in the configuration (a
    setting at the wrong level, ``lora_r`` under ``data``, is found by its name)."""
    # the data modules of this command: predict's `resume` is no guess at fit's `--resume` (which is --ckpt_path)
    predicting = parser.prog.replace(" [options]", "").endswith(" predict")
    modules = [m for m in DATA_MODULES if ("Predict" in m or "Choice" in m) == predicting] if " " in parser.prog else DATA_MODULES
    data = [f"data.init_args.{name}" for module in modules for name in init_parameters(f"mmcaption.data.{module}")]
    # what the model's settings set (LINKED) is no guess at what to type
    known = [key for key in dict.fromkeys(flat_keys(parser.get_defaults().as_dict()) + data)
             if not (key.startswith("data.") and key.rsplit(".", 1)[-1] in LINKED)]
    if "model.generation" in known:  # a free-form mapping: the generate() settings it takes (--model.max_new_tokens)
        from transformers import GenerationConfig

        known += [f"model.generation.{name}" for name in GenerationConfig().to_dict() if not name.startswith(("_", "transformers"))]
    found = [(key, known) for key in re.findall(r"--([\w.]+)", message.split("nrecognized arguments:", 1)[-1])
             if "nrecognized arguments" in message]
    found += [(key, known) for key in re.findall(r"does not accept option '([\w.]+)'", message)]
    section = re.match(r'Parser key "([\w.]+)"', message.strip())  # trainer.callbacks: a callback's own settings
    class_path = re.search(r"given class_path '([\w.]+)'", message)
    if section and class_path:
        parameters = [p for p in init_parameters(class_path.group(1)) if not (section.group(1) == "data" and p in LINKED)]
        own = f"{section.group(1)}.init_args."  # its class's settings, not another class's (refused there too)
        found += [(f"{own}{option}", [own + p for p in parameters] + [k for k in known if not k.startswith(own)])
                  for option in re.findall(r"Option '(\w+)' is not accepted", message)]
    return found


# the data module's settings the model's set, which are not typed (config_files.LINKED: refused there)
LINKED = ("tokenizer", "image_processor", "vision_feature_layer")


# the names Hugging Face's Trainer (and the original scripts) give these settings: no spelling is close to them
KNOWN_AS = {"lr": "learning_rate", "per_device_train_batch_size": "batch_size", "train_batch_size": "batch_size",
            "per_device_eval_batch_size": "eval_batch_size", "gradient_accumulation_steps": "accumulate_grad_batches",
            "num_train_epochs": "max_epochs", "epochs": "max_epochs", "max_grad_norm": "gradient_clip_val",
            "logging_steps": "log_every_n_steps", "eval_steps": "val_check_interval", "output_dir": "default_root_dir",
            "warmup_steps": "warmup_ratio", "lora_rank": "lora_r", "max_seq_length": "max_length",
            # and Lightning 1.x's, and other tools' words for resuming: it is --ckpt_path (chat's --checkpoint too)
            "resume": "ckpt_path", "resume_from_checkpoint": "ckpt_path", "checkpoint": "ckpt_path", "ckpt": "ckpt_path",
            "checkpoint_path": "ckpt_path", "gpus": "devices", "num_gpus": "devices", "n_gpu": "devices"}


def closest(key: str, candidates: list[str], n: int = 3) -> list[str]:
    """Valid keys close to ``key``: by the whole key, and by its last part (``model.lora_rank`` ->
    ``model.config.lora_r``), and by what Hugging Face's Trainer calls them (``model.lr`` -> ``model.learning_rate``)."""
    by_name: dict[str, list[str]] = {}
    for candidate in candidates:
        by_name.setdefault(candidate.rsplit(".", 1)[-1], []).append(candidate)
    name = key.rsplit(".", 1)[-1]
    names = difflib.get_close_matches(name, list(by_name), n=n, cutoff=0.6)
    close = by_name.get(name, []) + by_name.get(KNOWN_AS.get(name, ""), []) + difflib.get_close_matches(key, candidates, n=n,
                                                                                                        cutoff=0.75) + [
        c for name in names for c in by_name[name]]  # the same name elsewhere first: a setting at the wrong level
    return [c for c in dict.fromkeys(close) if c != key][:n]  # not the key refused (another data module's setting)


def named_log_folders(trainer: Any) -> set[str]:
    """The run folders a stage's trainer settings name outright (a logger given a ``version``)."""
    loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
    return {str(Path(str(settings.get("save_dir") or ".")) / str(settings.get("name") or "") / str(settings.get("version")))
            for logger in loggers if (settings := getattr(logger, "init_args", None)) is not None
            and settings.get("version") is not None}
