"""The command line's parser: LightningCLI's, with errors a user can act on in a few lines."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, NoReturn

import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser

from mmcaption.errors import USER_ERROR_EXIT, ConfigError, MMCaptionError, one_line
from mmcaption.resources import causes
from mmcaption.setting_names import another_modules, closest, unknown_keys
from mmcaption.usage import shipped_configs


class MMCaptionParser(LightningArgumentParser):
    """LightningCLI's parser with short errors: the message, for a mistyped key the closest valid ones,
    and where to see them all - instead of the whole usage (70 lines) above a one-line error. A key
    must be written whole: argparse would take ``--trainer.max_step`` for ``--trainer.max_steps`` on the
    command line, where the same key in a config is refused."""

    def __init__(self, *args: Any, allow_abbrev: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    def parse_args(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        global _CONFIGS
        arguments = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        if arguments and (installed := _installed_configs(arguments)) != arguments:
            args = arguments = installed
        # each config file as given and where it is: jsonargparse reads one from inside its folder, so a relative name
        # read again for a message found another file there, or none
        _CONFIGS = [(name, Path(name).expanduser().absolute()) for name in _config_files(arguments)]
        for name, path in _CONFIGS:
            check_config_file(name, path)
        return super().parse_args(args, *rest, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # a parser whose caller handles the error (nested parsing)
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        lines = [f"error: {_bad_value(message) or message.strip().splitlines()[0]}"]
        if message.startswith("Problems parsing config"):  # YAML's own error says "<unicode string>": name the file
            lines = [f"error: {problem}" for problem in _unreadable_configs()] or lines
        detail = [line.strip() for line in message.splitlines()[1:]
                  if any(words in line for words in ("is not accepted", "not a valid", "unrecognized arguments"))]
        lines += [f"  {line}" for line in dict.fromkeys(detail[:2])]
        if index := re.search(r"NestedArg\(key='(\d+)\.", message):  # --trainer.callbacks.0.init_args.dirpath: no such form
            lines.append(f"  a list's item ({index.group(1)}) cannot be set on the command line: set it in a config file "
                         "(a second --config replaces the whole list; `callbacks+:` there adds to it)")
        elif message.startswith('Parser key "trainer.callbacks"') and (option := re.search(r"NestedArg\(key='(\w+)'", message)) \
                and (last := re.search(r"Problem with given class_path '([\w.]+)'", message)):  # --trainer.callbacks.dirpath
            lines.append(f"  --trainer.callbacks.{option.group(1)} goes to the list's last callback, here {last.group(1)}, which has "
                         f"no '{option.group(1)}': set it on the callback it belongs to in a config file (a second --config "
                         "replaces the whole list; `callbacks+:` there adds to it)")
        unknown = re.search(r"nrecognized arguments: (.*)", message)  # `--data.images photos/*.jpg`, the shell's expansion
        files = [name for name in unknown.group(1).split() if Path(name).is_file()] if unknown else []
        if len(files) > 1:  # one line of thousands of names said nothing
            lines = [f"error: unrecognized arguments: {len(files)} file names ({', '.join(files[:3])}{', ...' * (len(files) > 3)})",
                     *(line for line in lines[1:] if "nrecognized arguments" not in line),
                     "  the shell gave a pattern (*.jpg) as file names, the first to the setting before them: give their "
                     "folder (--data.images photos) or a text file with one path per line"]
        if "argument subcommand: invalid choice" in message:  # the commands beyond Lightning's four
            lines.append("  and mmcaption's own: prepare (preprocess the data), chat (talk about an image)")
        if "is not accepted before subcommand" in message:  # mmcaption --config x.yaml fit
            lines.append("  settings go after the subcommand: mmcaption fit --config <file> ...")
        if re.search(r"arguments are required: .*\bdata\b", message):  # validate --ckpt_path X, with no config
            lines.append("  the data comes from the stage's config (--config configs/caption.yaml, instruct.yaml, or the "
                         "demo's), or from --data <class> and its settings")
        given = re.search(r"given class_path '[\w.]+\.(\w+)'", message)
        for key, candidates in unknown_keys(message, parser):
            if key.startswith("data.init_args.") and given and (elsewhere := another_modules(key, given.group(1))):
                lines.append(elsewhere)
                continue
            close, where = closest(key, candidates), _written_in(key)
            if close or where:
                lines.append(f"  --{key}:" + (f" did you mean {' or '.join('--' + c for c in close)}?" if close else "")
                             + (f" (written in {where})" if where else ""))
        prog = parser.prog.replace(" [options]", "")
        lines.append(f"tip: `{prog} --help` lists every setting; add --print_config to see the configuration in effect")
        sys.stderr.write("\n".join(lines) + "\n")
        sys.exit(USER_ERROR_EXIT)


_CONFIGS: list[tuple[str, Path]] = []  # the config files of the last parse (as given, and where), for messages
SECTIONS = ("trainer", "model", "data", "model.config", "data.init_args")  # settings a null would reset to defaults


def _installed_configs(arguments: list[str]) -> list[str]:
    """``arguments`` with each shipped config named as the README names it (``configs/caption.yaml``) that is not in
    the working directory read from where mmcaption is installed, with a note: a wheel's user has no checkout."""
    given, out = set(_config_files(arguments)), []
    for argument in arguments:
        flag, equals, name = argument.partition("=") if argument.startswith("--config=") else ("", "", argument)
        shipped = shipped_configs() / name.removeprefix("configs/")
        if name in given and name.startswith("configs/") and not Path(name).exists() and shipped.is_file():
            if os.environ.get("LOCAL_RANK", "0") == "0":  # once, not by each process of a multi-GPU run
                print(f"note: {name} is not in this folder: the one installed with mmcaption is read ({shipped}); copy "
                      "it here to edit it", file=sys.stderr)
            argument = f"{flag}{equals}{shipped}"
        out.append(argument)
    return out


def _config_files(arguments: list[str]) -> list[str]:
    """The config files among ``arguments``: ``--config F``, ``-c F``, ``--config=F``."""
    files = [value for flag, value in zip(arguments, arguments[1:]) if flag in ("--config", "-c")]
    return files + [argument.split("=", 1)[1] for argument in arguments if argument.startswith("--config=")]


def check_config_file(name: str, path: Path) -> None:
    """Refuse a config file that would be read wrong, naming it: not UTF-8 text (PowerShell's ``>`` writes UTF-16; a
    checkpoint given as ``--config``), no settings at all, a key written twice in one mapping (YAML keeps the second
    without a word: a value added at the top of a ``--print_config`` dump was lost), or a section with nothing under
    it (``trainer:`` above commented-out lines is null, which replaced the whole trainer of the configs before it)."""
    try:
        if not path.is_file():
            return  # jsonargparse says so (or reads the text as YAML itself)
    except OSError:  # YAML given as the argument itself, longer than a file's name may be
        return
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        kind = ("a checkpoint (--ckpt_path takes it), not a config" if data.startswith(b"PK\x03\x04") else
                "UTF-16 text (as Windows PowerShell's > writes it), not UTF-8" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else
                "not UTF-8 text (saved in a local code page?)")
        raise ConfigError(f"config {name} is {kind}; a config is a YAML file saved as UTF-8") from None
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return  # said with its line by error(), as jsonargparse meets it
    if node is None:
        raise ConfigError(f"config {name} holds no settings (it is empty, or only comments)")
    if twice := next(_written_twice(node), None):
        key, (first, second) = twice
        raise ConfigError(f"config {name}: {key} is written twice (lines {first} and {second}); YAML keeps the second "
                          "without a word: delete one")
    if found := next(_shell_variables(node), None):
        key, line, text, expanded, listed = found
        # a list's item (a callback's dirpath) cannot be given on the command line: only written out
        there = "" if listed else f", or give it on the command line (--{key} \"{text}\"), where the shell expands it"
        raise ConfigError(f"config {name}, line {line}: {key}: {text} - a config is not read by a shell, so "
                          f"environment variables stay as written{expanded}: write the path out{there}")
    for key in SECTIONS:
        value, line = _node_at(node, key)
        if isinstance(value, yaml.ScalarNode) and value.tag.endswith(":null"):
            raise ConfigError(f"config {name}, line {line}: {key}: has nothing under it (its lines commented out?), and "
                              "would replace the whole section of the configs before it with the defaults: delete the line, "
                              "or write a setting under it")


def _written_twice(node: yaml.Node, prefix: str = "") -> Iterator[tuple[str, tuple[int, int]]]:
    """Each key written twice in one mapping of ``node``, dotted, with the lines of both."""
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _written_twice(item, prefix)
    if not isinstance(node, yaml.MappingNode):
        return
    lines: dict[str, int] = {}
    for key, value in node.value:
        name = f"{prefix}{getattr(key, 'value', key)}"
        if name in lines:
            yield name, (lines[name], key.start_mark.line + 1)
        lines[name] = key.start_mark.line + 1
        yield from _written_twice(value, f"{name}.")


_VARIABLE = re.compile(r"\$(\{)?([A-Za-z_][A-Za-z0-9_]*)(?(1)\})")


def _shell_variables(node: yaml.Node, prefix: str = "", listed: bool = False) -> Iterator[tuple[str, int, str, str, bool]]:
    """Each value of ``node`` that names an environment variable as a shell would (``$SCRATCH/coco``,
    ``${HOME}/data``): one set here, or one that begins the value (a path). Yields the dotted key, its line, the
    value, what the shell would make of it (``""`` when the variable is not set) and whether it is in a list."""
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _shell_variables(item, prefix, True)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _shell_variables(value, f"{prefix}{getattr(key, 'value', key)}.", listed)
    elif isinstance(node, yaml.ScalarNode) and isinstance(node.value, str) and node.style in (None, "", "'", '"'):
        for match in _VARIABLE.finditer(node.value):
            if match.group(2) in os.environ or match.start() == 0:
                expanded = os.path.expandvars(node.value)
                yield (prefix.rstrip("."), node.start_mark.line + 1, node.value,
                       f" (a shell would read {expanded})" if expanded != node.value else "", listed)
                return


def _node_at(node: yaml.Node, key: str) -> tuple[yaml.Node | None, int | None]:
    """The node of the dotted ``key`` in a composed YAML document, and the line of its key."""
    line = None
    for part in key.split("."):
        pair = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None) \
            if isinstance(node, yaml.MappingNode) else None
        if pair is None:
            return None, None
        line, node = pair[0].start_mark.line + 1, pair[1]
    return node, line


def _written_in(key: str) -> str:
    """The config file (and line) that writes the dotted ``key``, the last one that does (it is the one read),
    or ``""`` when none does (a key given on the command line)."""
    found = ""
    for name, path in _CONFIGS:
        try:
            node = yaml.compose(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        value, line = _node_at(node, key)
        if value is not None:
            found = f"{name}, line {line}"
    return found


def _unreadable_configs() -> list[str]:
    """Each config file of the last parse that is not valid YAML, with where and why, as YAML says it (and
    that YAML indents with spaces, not tabs)."""
    problems = []
    for name, path in _CONFIGS:
        try:
            yaml.safe_load(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError):
            continue  # a missing one: jsonargparse says so itself; one not UTF-8 was refused before parsing
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            tab = mark is not None and mark.buffer and mark.pointer < len(mark.buffer) and mark.buffer[mark.pointer] == "\t"
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            problems.append(f"{name}{where}: not valid YAML: {problem}" + (" (a tab: YAML indents with spaces)" if tab else ""))
    return problems


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
        if len(line) - len(line.lstrip()) <= indent:
            break
        reason.append(line.strip())
    for line, cause in zip(reason, reason[1:]):  # a class that cannot be made as given (EarlyStopping without monitor):
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
    if "text" in kinds and value.startswith("{"):  # "ROLE: You are ..." (the original scripts' prompts): read as a mapping
        said += (f"; on the command line a text with ': ' in it is read as a mapping (and quotes around it stay in the "
                 f"text): write it in a config file, quoted ({path.rsplit('.', 1)[-1]}: \"ROLE: ...\")")
    return said
