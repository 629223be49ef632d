"""Config files as written, read before jsonargparse reads them: refused when they would be read otherwise than meant
(not UTF-8, a key written twice, a section left empty, a shell's variable, an empty setting that takes a value), and
where a setting is written, for messages."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml
from jsonargparse import get_loader

from mmcaption.errors import ConfigError, shell_variable
from mmcaption.usage import shipped_configs

SECTIONS = ("trainer", "model", "data", "model.config", "data.init_args")  # settings a null would reset to defaults


def installed_configs(arguments: list[str]) -> list[str]:
    """``arguments`` with each shipped config named as the README names it (``configs/caption.yaml``) that is not in
    the working directory read from where mmcaption is installed, with a note: a wheel's user has no checkout."""
    given, out = set(config_files(arguments)), []
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


def config_files(arguments: list[str]) -> list[str]:
    """The config files among ``arguments``: ``--config F``, ``-c F``, ``--config=F``."""
    files = [value for flag, value in zip(arguments, arguments[1:]) if flag in ("--config", "-c")]
    return files + [argument.split("=", 1)[1] for argument in arguments if argument.startswith("--config=")]


def given_after(arguments: list[str], name: str) -> set[str]:
    """The settings the command line gives after config ``name`` (theirs replace its), each without ``init_args``."""
    places = [i for i, argument in enumerate(arguments) if argument == f"--config={name}" or
              (argument in ("--config", "-c") and arguments[i + 1:i + 2] == [name])]
    later = arguments[places[-1] + 1:] if places else []
    return {argument[2:].split("=", 1)[0].replace(".init_args.", ".") for argument in later if argument.startswith("--")}


def check_config_file(name: str, path: Path, replaced: set[str] = frozenset()) -> None:
    """Refuse a config file that would be read wrong, naming it: not UTF-8 text (PowerShell's ``>`` writes UTF-16; a
    checkpoint given as ``--config``), no settings at all, a key written twice in one mapping (YAML keeps the second
    without a word: a value added at the top of a ``--print_config`` dump was lost), or a section with nothing under
    it (``trainer:`` above commented-out lines is null, which replaced the whole trainer of the configs before it).
    ``replaced``: the settings given after it on the command line (:func:`given_after`), whose values are not its."""
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
    if found := next((found for found in _shell_variables(node) if found[0].replace(".init_args.", ".") not in replaced),
                     None):  # (one the command line gives, as the advice says, is not read)
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
    if problem := _misplaced(node):
        raise ConfigError(f"config {name}, {problem}")
    if found := next(_escaped_paths(node), None):  # "runs\test" is runs, a tab, est: a folder of that name was made
        key, line, value = found
        raise ConfigError(f"config {name}, line {line}: {key}: {value!r} holds a control character that a backslash in "
                          f"double quotes made ({WINDOWS_PATH})")


WINDOWS_PATH = "in double quotes a backslash begins an escape, \\t a tab: write a Windows path in single quotes, or with /"
PATH_KEYS = ("dir", "file", "root", "path", "images", "output", "dirpath", "init_from", "language_model", "vision_model")


def _escaped_paths(node: yaml.Node) -> Iterator[tuple[str, int, str]]:
    """Each path setting of ``node`` written in double quotes whose value holds a control character (a tab, a newline)."""
    for key, scalar, _ in _scalars(node):
        if scalar.style == '"' and key.rsplit(".", 1)[-1].endswith(PATH_KEYS) and any(
                ord(c) < 32 or ord(c) == 127 for c in scalar.value):
            yield key, scalar.start_mark.line + 1, scalar.value


def _scalars(node: yaml.Node, prefix: str = "", listed: bool = False) -> Iterator[tuple[str, yaml.ScalarNode, bool]]:
    """Each scalar value of ``node``: its dotted key (a list's items under the list's), the node, whether in a list."""
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _scalars(item, prefix, True)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _scalars(value, f"{prefix}{getattr(key, 'value', key)}.", listed)
    elif isinstance(node, yaml.ScalarNode):
        yield prefix.rstrip("."), node, listed


def _misplaced(node: yaml.Node) -> str | None:
    """A section indented under another (``model:`` under ``data:``: "data: ... is not null", or "Option
    'model.learning_rate' is not accepted"), or a data module's (a model's) settings beside its ``class_path`` without
    ``init_args:`` ("Option 'class_path' is not accepted", with guesses at other data settings)."""
    for section in ("trainer", "model", "data"):
        value, _ = _node_at(node, section)
        inner = [value, _node_at(value, "init_args")[0]] if isinstance(value, yaml.MappingNode) else []
        for mapping, where in zip(inner, (section, f"{section}.init_args")):
            keys = [key for key, _ in mapping.value] if isinstance(mapping, yaml.MappingNode) else []
            if other := next((key for key in keys if key.value in ("trainer", "model", "data")), None):
                return (f"line {other.start_mark.line + 1}: {other.value}: is indented under {where}:, where it is no "
                        f"setting: the sections trainer, model and data each begin at the top of the file (no indent)")
            beside = [key for key in keys if key.value not in ("class_path", "init_args", "dict_kwargs", "__path__")]
            if where == section and beside and any(key.value == "class_path" for key in keys):
                return (f"line {beside[0].start_mark.line + 1}: {section}: {beside[0].value} is beside class_path, where "
                        f"its settings go under init_args: (class_path: ..., then init_args: with {beside[0].value} "
                        "indented under it)")
    return None


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


def _shell_variables(node: yaml.Node) -> Iterator[tuple[str, int, str, str, bool]]:
    """Each value of ``node`` that names an environment variable as a shell would (``$SCRATCH/coco``,
    ``${HOME}/data``): one set here, or one that begins the value (a path). Yields the dotted key, its line, the
    value, what the shell would make of it (``""`` when the variable is not set) and whether it is in a list."""
    for key, scalar, listed in _scalars(node):
        if isinstance(scalar.value, str) and scalar.style in (None, "", "'", '"') and shell_variable(scalar.value):
            expanded = os.path.expandvars(scalar.value)
            yield (key, scalar.start_mark.line + 1, scalar.value,
                   f" (a shell would read {expanded})" if expanded != scalar.value else "", listed)


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


def class_named_in(path: Path, section: str) -> str | None:
    """The ``class_path`` a config file gives ``section`` (``data``, ``trainer.logger``), or None."""
    value, _ = _node_at(node, f"{section}.class_path") if (node := _composed(path)) is not None else (None, None)
    return value.value if isinstance(value, yaml.ScalarNode) and isinstance(value.value, str) else None


def written_in(configs: list[tuple[str, Path]], key: str) -> str:
    """The config file (and line) that writes the dotted ``key``, the last one that does (it is the one read),
    or ``""`` when none does (a key given on the command line)."""
    found = ""
    for name, path in configs:
        value, line = _node_at(node, key) if (node := _composed(path)) is not None else (None, None)
        if value is not None:
            found = f"{name}, line {line}"
    return found


def unreadable_configs(configs: list[tuple[str, Path]]) -> list[str]:
    """Each config file of the last parse that is not valid YAML, with where and why, as YAML says it (and
    that YAML indents with spaces, not tabs)."""
    problems = []
    for name, path in configs:
        try:
            yaml.safe_load(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError):
            continue  # a missing one: jsonargparse says so itself; one not UTF-8 was refused before parsing
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            tab = mark is not None and mark.buffer and mark.pointer < len(mark.buffer) and mark.buffer[mark.pointer] == "\t"
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            escape = "unknown escape character" in str(problem)  # "demo_data\coco": a Windows path in double quotes
            problems.append(f"{name}{where}: not valid YAML: {problem}" + (" (a tab: YAML indents with spaces)" if tab else "")
                            + (f" ({WINDOWS_PATH})" if escape else ""))
    return problems


def _composed(path: Path) -> yaml.Node | None:
    """A config file composed (its nodes know their lines), or ``None`` when it cannot be read; read once per version
    of the file, though each parse asks for it several times (for each setting given before it, each count of batches,
    each message)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _composed_version(str(path.expanduser().resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _composed_version(path: str, modified: int, size: int) -> yaml.Node | None:
    try:
        return yaml.compose(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def empty_settings(configs: list[tuple[str, Path]]) -> Iterator[tuple[str, str, int]]:
    """Each setting a config file leaves empty or null (``batch_size:`` with its value still to write, or commented
    out), as (file, dotted key, line); lists' items left out."""
    def nulls(node: yaml.Node | None, prefix: str) -> Iterator[tuple[str, int]]:
        for key, value in node.value if isinstance(node, yaml.MappingNode) else ():
            name = f"{prefix}{getattr(key, 'value', key)}"
            if isinstance(value, yaml.ScalarNode) and value.tag.endswith(":null"):
                yield name, key.start_mark.line + 1
            else:
                yield from nulls(value, name + ".")

    for name, path in configs:
        yield from ((name, key, line) for key, line in nulls(_composed(path), ""))


def replaced_by_a_later_config(arguments: list[str]) -> str | None:
    """Why a setting given before a ``--config`` is not used: that file writes it too, and a later source replaces an
    earlier one (``mmcaption fit --trainer.max_epochs 1 --config c.yaml`` trained the file's 3 epochs, unsaid)."""
    given: list[tuple[int, str]] = []
    last = {argument.split("=", 1)[0]: index for index, argument in enumerate(arguments)}  # given again later: that one
    for index, argument in enumerate(arguments):
        flag = argument.split("=", 1)[0]
        if flag in ("--config", "-c") and (name := argument[9:] if "=" in argument else next(iter(arguments[index + 1:]), None)):
            # an append (callbacks+=) given again later is lost all the same: the file's list replaces what it added to
            for place, key in [(place, key) for place, key in given if key.endswith("+") or last[f"--{key}"] < index]:
                keys = [key.rstrip("+")] + ([key.replace("data.", "data.init_args.", 1)] if key.startswith("data.") else [])
                found = next(((k, line) for k in keys for node in [_composed(Path(name).expanduser())] if node is not None
                              for value, line in [_node_at(node, k)] if value is not None), None)
                if found:  # an append shown whole: --trainer.callbacks+=EarlyStopping
                    shown = " ".join(arguments[place:place + 2]) if key.endswith("+") and "=" not in arguments[place] else \
                        arguments[place] if key.endswith("+") else arguments[place].split("=", 1)[0]
                    return (f"{shown} comes before --config {name}, which writes {found[0]} too "
                            f"(line {found[1]}): a later source replaces an earlier one, so the file's value would be used, "
                            "not yours. Put the setting after the config files")
        elif flag.startswith("--") and not flag.startswith(("--config", "--print_config")):
            given.append((index, flag[2:]))
    return None


# the data module's settings the model's set (the tokenizer of its language model, ...): cli.MMCaptionCLI links them
LINKED = {"tokenizer": "language_model", "image_processor": "vision_model", "vision_feature_layer": "vision_feature_layer"}


def linked_setting(arguments: list[str]) -> str | None:
    """Why a data module's ``tokenizer``, ``image_processor`` or ``vision_feature_layer`` given (on the command line, in
    a config, or in the data's own settings given whole: ``--data data.yaml``) is not used: the model's setting
    replaced it, without a word."""
    nodes = [(node, "") for name in config_files(arguments) if (node := _composed(Path(name).expanduser())) is not None]
    nodes += [(node, "data.") for node in map(_whole_data, _values(arguments, "--data")) if node is not None]
    for name, source in LINKED.items():
        for key in (f"data.init_args.{name}", f"data.{name}"):
            if _values(arguments, f"--{key}") or any(_node_at(node, key.removeprefix(section))[0] is not None
                                                     for node, section in nodes):
                return (f"{key} is not set on its own: it follows model.config.{source}, which the model loads with (the "
                        f"data must be read as the model reads it); give --model.config.{source}, or leave {key} out")
    return None


def _values(arguments: list[str], flag: str) -> list[str]:
    """Each value ``flag`` is given: ``flag value`` and ``flag=value``."""
    return [value for given, value in zip(arguments, arguments[1:]) if given == flag] + \
        [argument.split("=", 1)[1] for argument in arguments if argument.startswith(flag + "=")]


def _whole_data(value: str) -> yaml.Node | None:
    """``--data``'s value as read (a class's settings given whole: a file, or YAML / JSON text), or None for a class
    name."""
    try:
        text = Path(value).expanduser().read_text(encoding="utf-8-sig") if Path(value).expanduser().is_file() else value
        node = yaml.compose(text)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return node if isinstance(node, yaml.MappingNode) else None


def read_yaml(text: str):
    """A YAML value as jsonargparse reads it: ``3e-4`` is a number (PyYAML's own loader reads text)."""
    return get_loader("yaml")(text)


def generation_kept(arguments: list[str]) -> list[str]:
    """``arguments`` with the ``model.generation`` settings an earlier config file gives and a later one's
    ``generation`` leaves out given again right after that later file: a mapping setting is replaced whole by a later
    file (``num_beams: 3`` of configs/caption.yaml fell back to greedy under a file giving only ``max_new_tokens``),
    where the settings of every other section are merged."""
    out: list[str] = []
    earlier: dict = {}  # what the files and the command line gave so far (a --model.generation.num_beams 5 between files)
    for index, argument in enumerate(arguments):
        out.append(argument)
        flag, equals, text = argument.partition("=")
        if flag.startswith("--model.generation.") and (equals or index + 1 < len(arguments)):
            with contextlib.suppress(yaml.YAMLError, ValueError):
                earlier[flag.removeprefix("--model.generation.")] = read_yaml(text if equals else arguments[index + 1])
        name = argument[9:] if argument.startswith("--config=") else (
            argument if index and arguments[index - 1] in ("--config", "-c") else None)
        node = _composed(Path(name).expanduser()) if name else None
        section, _ = _node_at(node, "model.generation") if node is not None else (None, None)
        if isinstance(section, yaml.MappingNode):
            given = read_yaml(text := yaml.serialize(section))  # as jsonargparse reads it: 3e-4 a number (PyYAML's is text)
            given = given if isinstance(given, dict) else yaml.safe_load(text)  # (a key left empty, `top_k:`, it returns text)
            out += [part for key, value in earlier.items() if key not in given for part in (f"--model.generation.{key}", json.dumps(value))]
            earlier = {**earlier, **given}
    return out


def written_text(arguments: list[str], key: str) -> str | None:
    """The text a setting was given as, where the value read comes from: its last occurrence on the command line, else
    the last config file that writes it (a YAML scalar as typed: ``1`` or ``1.0``); ``None`` when neither gives it."""
    flag, text = f"--{key}", None
    for index, argument in enumerate(arguments):
        if argument == flag and index + 1 < len(arguments):
            text = arguments[index + 1]
        elif argument.startswith(flag + "="):
            text = argument.split("=", 1)[1]
    if text is not None:
        return text
    for name in config_files(arguments):
        node = _composed(Path(name).expanduser())
        value, _ = _node_at(node, key) if node is not None else (None, None)
        text = value.value if isinstance(value, yaml.ScalarNode) else text
    return text
