"""The command line's parser: LightningCLI's, with errors a user can act on in a few lines."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import io
import os
import re
import sys
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities.model_helpers import is_overridden

from mmcaption.config_files import (
    check_config_file,
    class_named_in,
    config_files,
    empty_settings,
    generation_kept,
    given_after,
    installed_configs,
    linked_setting,
    replaced_by_a_later_config,
    unreadable_configs,
    written_in,
    written_text,
)
from mmcaption.errors import USER_ERROR_EXIT, ConfigError, MMCaptionError, one_line
from mmcaption.resources import causes
from mmcaption.setting_names import another_modules, closest, init_parameters, unknown_keys


class MMCaptionParser(LightningArgumentParser):
    """LightningCLI's parser with short errors: the message, for a mistyped key the closest valid ones,
    and where to see them all - instead of the whole usage (70 lines) above a one-line error. A key
    must be written whole: argparse would take ``--trainer.max_step`` for ``--trainer.max_steps`` on the
    command line, where the same key in a config is refused."""

    def __init__(self, *args: Any, allow_abbrev: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)
        # a value in exponent notation, "--model.learning_rate -1e-3", was read as an option ("expected one argument"):
        # argparse knows a negative number only as -1 or -0.5
        self._negative_number_matcher = re.compile(r"^-(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$|^-inf$")

    def parse_args(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        global _CONFIGS, _ARGUMENTS, _KEPT
        arguments = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        if arguments and (installed := installed_configs(arguments)) != arguments:
            args = arguments = installed
        # each config file as given and where it is: jsonargparse reads one from inside its folder, so a relative name
        # read again for a message found another file there, or none
        _CONFIGS, _ARGUMENTS = [(name, Path(name).expanduser().absolute()) for name in config_files(arguments)], arguments
        for name, path in _CONFIGS:
            check_config_file(name, path, given_after(arguments, name))
        # (the subcommand's parse is given the generation settings put back: not the user's, typed before a file)
        if not (_KEPT and arguments in (_KEPT, _KEPT[1:])) and (problem := replaced_by_a_later_config(arguments)
                                                                 or linked_setting(arguments)):
            raise ConfigError(problem)
        if arguments and (kept := generation_kept(arguments)) != arguments:
            args = _KEPT = kept
        config = super().parse_args(args, *rest, **kwargs)
        _whole_numbers_as_written(config)
        if problem := _empty_setting_problem(self, config) or _predict_data_problem(config):
            raise ConfigError(problem)
        return config

    def configured_logger(self, subcommand: str) -> dict | None:
        """The ``trainer.logger`` the config files give, settings of later files laid over earlier ones' (``name:
        caption-karpathy``), as a parse of the last command line without its ``--trainer.logger true`` reads it; ``None``
        without one. What ``--trainer.logger true`` asks for: Lightning's own, in lightning_logs/version_N beside the
        stages' folders, is not what validate's "keeps no logs unless asked" meant."""
        arguments = [a for i, a in enumerate(_ARGUMENTS) if a != "--trainer.logger=true" and not (
            a == "--trainer.logger" or i and _ARGUMENTS[i - 1] == "--trainer.logger" and a.lower() == "true")]
        arguments = arguments if arguments[:1] == [subcommand] else [subcommand, *arguments]  # (a subcommand's own parse)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                logger = self.parse_args(arguments)[subcommand].trainer.get("logger")
        except SystemExit:
            return None
        return logger.as_dict() if isinstance(logger, Namespace) and logger.get("class_path") else None

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # a parser whose caller handles the error (nested parsing)
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        lines = [f"error: {_bad_value(message) or message.strip().splitlines()[0]}"]
        if message.startswith("Problems parsing config"):  # YAML's own error says "<unicode string>": name the file
            lines = [f"error: {problem}" for problem in unreadable_configs(_CONFIGS)] or lines
        detail = [line.strip() for line in message.splitlines()[1:]
                  if any(words in line for words in ("is not accepted", "not a valid", "unrecognized arguments"))]
        lines += [f"  {line}" for line in dict.fromkeys(detail[:2])]
        if index := re.search(r"NestedArg\(key='(\d+)\.", message):  # --trainer.callbacks.0.init_args.dirpath: no such form
            lines.append(f"  a list's item ({index.group(1)}) cannot be set on the command line: set it in a config file "
                         "(a second --config replaces the whole list; `callbacks+:` there adds to it)")
        elif message.startswith('Parser key "trainer.callbacks"') and (option := re.search(r"NestedArg\(key='(\w+)'", message)) \
                and (last := re.search(r"Problem with given class_path '([\w.]+)'", message)):  # --trainer.callbacks.dirpath
            lines.append(f"  --trainer.callbacks.{option.group(1)} goes to the list's last callback, here {last.group(1)}, which has "
                         f"no '{option.group(1)}': set it on the callback it belongs to in a config file (a copy of the "
                         "stage's config with it changed, given as --config in its place; a second --config replaces the "
                         "whole list, `callbacks+:` there adds to it)")
        dashed = next(((o, v) for o, v in zip(_ARGUMENTS, _ARGUMENTS[1:]) if "expected one argument" in message and o[:2] == "--"
                       and "=" not in o and v[:1] == "-" and v[:2] != "--" and v not in ("-c", "-h") and not self._negative_number_matcher.match(v)), None)
        if dashed:  # `--data.output -out.jsonl`: argparse took the value for an option, "argument --data: expected one argument"
            lines.append(f"  a value that starts with '-' goes joined to its option: {dashed[0]}={dashed[1]}")
        unknown = re.search(r"nrecognized arguments: (.*)", message)  # `--data.images photos/*.jpg`, the shell's expansion
        files = [name for name in unknown.group(1).split() if Path(name).is_file()] if unknown else []
        if len(files) > 1:  # one line of thousands of names said nothing
            lines = [f"error: unrecognized arguments: {len(files)} file names ({', '.join(files[:3])}{', ...' * (len(files) > 3)})",
                     *(line for line in lines[1:] if "nrecognized arguments" not in line),
                     "  the shell gave a pattern (*.jpg) as file names, the first to the setting before them: give their "
                     "folder (--data.images photos) or a text file with one path per line"]
        if own_optimizer := bool(re.search(r"(nrecognized arguments: |accept option ').*\b(optimizer|lr_scheduler)\b", message)):
            lines.append("  the optimizer and its schedule are mmcaption's own (fused AdamW, linear warm-up then linear decay), "
                         "not LightningCLI's --optimizer and --lr_scheduler: --model.learning_rate, --model.weight_decay, "
                         "--model.adam_betas and --model.warmup_ratio set them")
        if "argument subcommand: invalid choice" in message or '"subcommand" to be one of' in message:  # beyond Lightning's
            lines.append("  and mmcaption's own: prepare (preprocess the data), chat (talk about an image)")
        if "is not accepted before subcommand" in message:  # mmcaption --config x.yaml fit
            lines.append("  settings go after the subcommand: mmcaption fit --config <file> ...")
        if re.search(r"arguments are required: .*\bdata\b", message):  # validate --ckpt_path X, with no config
            lines.append("  the data comes from the stage's config (--config configs/caption.yaml, instruct.yaml, or the "
                         "demo's), or from --data <class> and its settings")
        given = re.search(r"given class_path '[\w.]+\.(\w+)'", message)
        if early := _before_a_config(message):  # --data.eval_batch_size 8 --config c.yaml: read before the class it names
            lines.append(early)
        for key, candidates in dict(unknown_keys(message, parser) if not early else ()).items():  # no guess: it is right
            if key.startswith("trainer.callbacks.") and "goes to the list's last callback" in lines[-1] or \
                    own_optimizer and key.split(".")[0] in ("optimizer", "lr_scheduler"):
                continue  # said just above: the other callback's settings are no guess at what was meant
            if key.startswith("data.init_args.") and given and (elsewhere := another_modules(key, given.group(1))):
                lines.append(elsewhere)
                continue
            close, where = closest(key, candidates), written_in(_CONFIGS, key)
            if close or where:
                lines.append(f"  --{key}:" + (f" did you mean {' or '.join('--' + c for c in close)}?" if close else "")
                             + (f" (written in {where})" if where else ""))
        prog = parser.prog.replace(" [options]", "")
        data = "CaptionPredictDataModule, MultipleChoiceDataModule or QuestionsPredictDataModule" if prog.endswith(
            " predict") else "CaptionDataModule or InstructDataModule"  # --help alone leaves out a data module's own
        lines.append(f"tip: `{prog} --help` lists the model's and the trainer's settings, `{prog} --data.help <class>` a data "
                     f"module's ({data}); add --print_config to see the configuration in effect" if " " in prog else
                     f"tip: `{prog} --help` lists the commands, `{prog} fit --help` a command's settings" if prog == "mmcaption"
                     else f"tip: `{prog} --help` lists its settings")
        sys.stderr.write("\n".join(lines) + "\n")
        sys.exit(USER_ERROR_EXIT)


def _before_a_config(message: str) -> str | None:
    """What to say of a setting of the failing parse's class (``Parser key "data"``, its ``NestedArg``) typed before the
    config file that names that class, and not after its class was typed; None when it is not that (or is misspelt)."""
    parsed, nested = re.search(r'Parser key "([\w.]+)"', message), re.search(r"NestedArg\(key='([\w.]+)'", message)
    pending: list[str] = []
    for index, argument in enumerate(_ARGUMENTS if parsed else []):
        flag = argument.split("=", 1)[0]
        if flag == f"--{parsed.group(1)}":  # its class typed: the settings after it are read with it
            pending = []
        elif flag.startswith(f"--{parsed.group(1)}.") and (nested is None or flag.endswith("." + nested.group(1))):
            pending.append(flag)
        elif flag in ("--config", "-c") and pending:
            name = argument.split("=", 1)[1] if "=" in argument else next(iter(_ARGUMENTS[index + 1:]), "")
            named = class_named_in(Path(name).expanduser(), parsed.group(1))
            if named and pending[-1].rsplit(".", 1)[-1] in init_parameters(named):
                return (f"  {pending[-1]} comes before --config {name}, the file that names its class ({named.rsplit('.', 1)[-1]}), "
                        "so it was read without it: put it after the config files")
    return None


def _empty_setting_problem(parser: LightningArgumentParser, config: Any) -> str | None:
    """A setting a config file leaves empty (null) that takes a value: jsonargparse takes a file's null for any type
    (the command line's is refused), and ``batch_size:`` failed as a TypeError after the model had loaded."""
    subcommand = config.get("subcommand") if isinstance(config, Namespace) else None
    action = getattr(parser, "_subcommands_action", None)
    settings = getattr(action, "_name_parser_map", {}).get(subcommand)
    for name, key, line in empty_settings(_CONFIGS) if settings is not None else ():
        if not key.startswith(("model.", "data.", "trainer.")):  # seed_everything: null was a seed, as Lightning reads it
            continue
        if key.startswith("data.") and key.split(".")[1] not in ("class_path", "init_args"):  # `data: batch_size:`
            key = key.replace("data.", "data.init_args.", 1)
        if config[subcommand].get(key, "") is not None:  # set again after it, or no setting at all
            continue
        if key.startswith("data.init_args."):
            hint = _init_hint(config[subcommand].get("data.class_path"), key.split(".", 2)[2])
        else:
            hint = getattr(settings._option_string_actions.get(f"--{key}"), "_typehint", Any)
        if hint is not Any and hint is not type(None) and type(None) not in typing.get_args(hint):
            return (f"config {name}, line {line}: {key} is empty, and takes {_kind_of(hint)}: give it a value, or "
                    "delete the line to keep its default")
    return None


# Lightning's settings of a count of batches (an int) or a fraction of them (a float): jsonargparse read a 1 typed
# as the float 1.0, all of the batches, where typing had met Union[float, int] before Union[int, float] (torch 2.6,
# huggingface_hub 1.x): a one-batch smoke test ran a whole epoch
COUNT_OR_FRACTION = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                     "val_check_interval", "overfit_batches")


def _whole_numbers_as_written(config: Any) -> None:
    """Each of :data:`COUNT_OR_FRACTION` given as a whole number (``1``, not ``1.0``) is that count, however it parsed."""
    subcommand = config.get("subcommand") if isinstance(config, Namespace) else None
    for name in COUNT_OR_FRACTION if subcommand else ():
        key = f"{subcommand}.trainer.{name}"
        if isinstance(value := config.get(key), float) and value.is_integer() and \
                re.fullmatch(r"\s*[0-9]+\s*", written_text(_ARGUMENTS, f"trainer.{name}") or ""):
            config[key] = int(value)


def _predict_data_problem(config: Any) -> str | None:
    """A data module without the loader its subcommand reads: ``predict`` with a training stage's (its config alone, or a
    ``--print_config`` of a fit), or fit, validate or test with a predict config's. Lightning said "`predict_dataloader`
    must be implemented" once the model had loaded (and a first run had preprocessed the data)."""
    subcommand = config.get("subcommand") if isinstance(config, Namespace) else None
    loader = {"fit": "train_dataloader", "validate": "val_dataloader", "test": "test_dataloader", "predict": "predict_dataloader"}
    if subcommand not in loader or not config[subcommand].get("data.class_path"):
        return None
    module, _, name = str(config[subcommand].get("data.class_path")).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    if not isinstance(found, type) or not issubclass(found, LightningDataModule) or is_overridden(loader[subcommand], found, LightningDataModule):
        return None
    if subcommand != "predict" and is_overridden("predict_dataloader", found, LightningDataModule):
        return (f"{subcommand} reads a training stage's data, and data {name} is predict's (its configs are in "
                "configs/predict/): give the stage's config alone (configs/caption.yaml or configs/instruct.yaml, or "
                "the demo's), or run mmcaption predict with it")
    return None if subcommand != "predict" else (
        f"predict reads images to caption or questions to answer, and data {name} is a training stage's: add a predict "
        "config after the stage's, --config configs/predict/captions.yaml (with --data.images FOLDER or a list), "
        "configs/predict/multiple_choice.yaml or configs/predict/questions.yaml")


def _no_such_class(module: str | None, name: str | None, missing_module: str | None) -> str:
    """What a mistyped ``class_path`` names, with the closest class of its module (``EarlyStoping``: EarlyStopping)."""
    if missing_module:
        return f"there is no module {missing_module} (is its package installed, and the name spelled right?)"
    try:
        names = [n for n, value in vars(importlib.import_module(module)).items() if isinstance(value, type)]
    except ImportError:
        names = []
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f"{module} has no class {name}" + (f"; did you mean {module}.{close[0]}?" if close else "")


def _where(key: str) -> str:
    """Where a config file writes ``key``, unless the command line gives it (its value is the one read)."""
    def short(name: str) -> str:  # --data.batch_size, the short form of --data.init_args.batch_size the README uses
        return name.split("=")[0].replace(".init_args.", ".")

    if any(f"{short(argument)}.".startswith(f"--{short(key)}.") for argument in _ARGUMENTS if argument.startswith("--")):
        return ""
    return f" (written in {where})" if (where := written_in(_CONFIGS, key)) else ""


def _kind_of(hint: Any) -> str:
    """What a type takes, in words (``Union[bool, int]``: true or false or a whole number)."""
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_kind_of(a) for a in typing.get_args(hint) if a is not type(None)))
    name = getattr(hint, "__name__", str(hint))
    return _KINDS.get(name, name.replace("typing.", ""))


def _init_hint(class_path: object, name: str) -> Any:
    """The type a data module's ``__init__`` gives its argument ``name`` (``Any`` when it cannot be told)."""
    module, _, attribute = str(class_path).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), attribute)
        return next((hints[name] for kind in found.__mro__ if name in (hints := typing.get_type_hints(kind.__init__))), Any)
    except Exception:  # noqa: BLE001 - a class jsonargparse built already; its hints are only for this message
        return Any


_ARGUMENTS: list[str] = []  # the command line of the last parse
_CONFIGS: list[tuple[str, Path]] = []  # the config files of the last parse (as given, and where), for messages
_KEPT: list[str] | None = None  # the last command line given the generation settings a later file would drop
try:  # jsonargparse's own print action, held back by held_print_config (private: without it, jsonargparse prints)
    from jsonargparse._actions import _ActionPrintConfig
except ImportError:  # pragma: no cover
    _ActionPrintConfig = None


@contextmanager
def print_config_held(arguments: Any) -> Iterator[bool]:
    """Hold jsonargparse's ``--print_config`` back in the block (yields whether it is asked for): jsonargparse prints
    while parsing, before a checkpoint's (``--ckpt_path``) or an export's (``model.init_from``, on the command line or
    in a config) settings are laid under the ones given, so it would show settings the run does not use.
    :func:`print_held_config` prints it after."""
    names = [a.split("=", 1)[0] for a in arguments] if isinstance(arguments, list) else []
    hold = _ActionPrintConfig is not None and "--print_config" in names
    with _ActionPrintConfig.skip_print_config() if hold else nullcontext():
        yield hold


def print_held_config(parser: LightningArgumentParser, config: Any) -> None:
    """Print the configuration held back by :func:`print_config_held`, as jsonargparse would, and exit."""
    _ActionPrintConfig.print_config_if_requested(parser, config)


def expand_home(config: Any) -> None:
    """``~/...`` in any setting (a config's ``data_dir: ~/datasets/coco``, a callback's ``dirpath``) is the home
    folder, as the shell reads it on the command line: YAML leaves it as it is, and the folder "~" was looked for."""
    for key, value in list(config.items()):
        if isinstance(value, str) and value.startswith("~/"):
            config[key] = os.path.expanduser(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, Namespace):  # trainer.callbacks, trainer.logger
                    expand_home(item)
        elif isinstance(value, Namespace):
            expand_home(value)


def instantiation_error(error: BaseException) -> BaseException | None:
    """What to say when a class the config names could not be made, or ``None`` when it is not the user's to mend:
    jsonargparse wraps it in its own errors, and the user's message came after two tracebacks. A settings error of
    mmcaption's own (a data module's ``__init__``), or a class whose package is not installed (``WandbLogger``
    without wandb: 95 lines of the union types it tried)."""
    chain = list(causes(error))
    if (own := next((cause for cause in chain if isinstance(cause, MMCaptionError)), None)) is not None:
        return own
    missing = next((cause for cause in chain if isinstance(cause, ImportError)), None)
    given = next((m.group(1) for cause in chain if (m := re.search(r"given class_path '([^']+)'", str(cause)))), None)
    if missing is None or given is None:
        return None
    return ConfigError(f"{given.rsplit('.', 1)[-1]} ({given}) needs a package that is not installed: {one_line(missing)}")


_KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text", "NoneType": "null",
          "pathlib.Path": "a path", "list": "a list", "dict": "a mapping (key: value)", "tuple": "a list"}


def _bad_value(message: str) -> str | None:
    """A value of the wrong type, said as ``key: 'value' is not <what the key takes>``: jsonargparse nests the
    reason under each union it tried (a data module's setting under ``data``'s class), and its first line
    names only the outermost key."""
    if "is not accepted" in message:  # an unknown key under a class: said by the lines after, with the closest names
        return None
    lines = message.splitlines()
    keys = [(i, len(line) - len(line.lstrip()), match.group(1)) for i, line in enumerate(lines)
            if (match := re.match(r'\s*(?:- )?Parser key "([^"]+)":', line))]
    if not keys:
        return None
    path = keys[0][2]
    for (previous, _, _), (index, _, key) in zip(keys, keys[1:]):  # a class's own setting is under its init_args
        path += (".init_args." if any("given class_path" in line for line in lines[previous:index]) else ".") + key
    start, indent = keys[-1][0], keys[-1][1]
    reason = []
    for line in lines[start + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:  # (a value from the command line: a blank line first)
            break
        reason.append(line.strip())
    short = next((m.group(1) for line in reason if (m := re.match(r"- Expected a dot import path string: (\w+)$", line))), None)
    if short and (module := {"trainer.callbacks": "lightning.pytorch.callbacks", "trainer.logger": "lightning.pytorch.loggers"}.get(path)):
        return f"{path}: {_no_such_class(module, short, None)}"  # --trainer.callbacks+=EarlyStoping
    for line, cause in zip(reason, reason[1:]):  # a class that cannot be made as given (EarlyStopping without monitor):
        missing = re.search(r"(?:module '([\w.]+)' has no attribute '(\w+)'|No module named '([\w.]+)')", cause)
        if (given := re.search(r"Problem with given class_path '([^']+)':", line)) and missing:  # a class name mistyped: "is
            return f"{path}: {given.group(1)}: {_no_such_class(*missing.groups())}{_where(path)}"  # not null" said nothing
        if (given := re.search(r"Problem with given class_path '([^']+)':", line)) and "required" in cause:  # its reason,
            name = given.group(1).rsplit(".", 1)[-1]  # not the whole list said to be no null
            key = re.search(r"required: (\w+)", cause)
            fix = f" (--{path}.{key.group(1)} VALUE after it on the command line, or its init_args in a config)" if key else ""
            return f"{path}: {name}: {cause}{fix}"
    value = next((m.group(1) for line in reason if (m := re.search(r"(?:Got|Given) value: (.*)$", line))), None)
    expected = [m.group(1) for line in reason if (m := re.match(r"(?:- )?Expected an? (.+?)(?:\. Got value: .*)?$", line))]
    if value is None or value.startswith("NestedArg(") or not expected:  # NestedArg: an unknown key, said otherwise
        return None
    choices, kinds = [], []
    for kind in expected:
        literal = re.fullmatch(r"typing\.Literal\[(.*)\]", kind)
        name = re.sub(r"^<class '(.+)'>$", r"\1", kind)
        if literal:
            choices += [choice.strip().strip("'\"") for choice in literal.group(1).split(",")]
        else:
            kinds.append(_KINDS.get(name, name.replace("typing.", "")))
    if "a number" in kinds and "a whole number" in kinds:
        kinds.remove("a whole number")
    if choices:
        kinds.insert(0, "one of " + ", ".join(dict.fromkeys(choices)))
    said = f"{path}: {value!r} is not {' or '.join(dict.fromkeys(kinds))}"
    if path == "data" and value.startswith("["):  # several data modules: one is read (sources joined into one dataset)
        said = "data: a list of data modules, where one is read: join the sources into one (a folder of tables, one file)"
    if "text" in kinds and value.startswith("{"):  # "ROLE: You are ..." (the original scripts' prompts): read as a mapping
        said += (f"; on the command line a text with ': ' in it is read as a mapping (and quotes around it stay in the "
                 f"text): write it in a config file, quoted ({path.rsplit('.', 1)[-1]}: \"ROLE: ...\")")
    if "text" in kinds and value in ("True", "False"):  # `name: off` in a config
        said += f"; YAML reads yes, no, on and off unquoted as true or false: quote the word (e.g. {path.rsplit('.', 1)[-1]}: \"off\")"
    return said + _where(path)
