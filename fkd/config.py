"""YAML config files for the command lines, timm-style: ``-c FILE.yaml`` gives defaults, flags win.

Runs are long and have many settings; a config file makes them repeatable, and ``save_args``
writes the fully resolved settings next to the outputs so any run can be re-run exactly with
``-c args.yaml``. Config keys are the parser's destinations (``-`` or ``_`` both accepted).
"""

from __future__ import annotations

import argparse
import difflib
import enum
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

_CONFIG_DEST = "config"
_APPEND_ACTIONS = (argparse._AppendAction, argparse._ExtendAction)


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``-c/--config`` unless the parser has it already."""
    if "--config" in parser._option_string_actions:
        return
    flags = ["--config"] if "-c" in parser._option_string_actions else ["-c", "--config"]
    parser.add_argument(
        *flags, dest=_CONFIG_DEST, metavar="FILE.yaml", default=None,
        help="YAML file of option defaults (keys are option names, '-' or '_'); flags on the command line override it",
    )


def parse_args_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with the defaults of the ``-c/--config`` YAML file, if one is given.

    Repeatable (append) options given on the command line replace the config's list instead of
    extending it, so a flag always overrides the file.
    """
    add_config_arg(parser)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(*parser._option_string_actions["--config"].option_strings, dest=_CONFIG_DEST, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is None:
        return parser.parse_args(argv)

    values = _resolve_config(parser, _load_config(parser, known.config), known.config)
    actions = {a.dest: a for a in parser._actions}
    appended = {dest: v for dest, v in values.items() if isinstance(actions[dest], _APPEND_ACTIONS)}
    originals = {dest: parser.get_default(dest) for dest in appended}
    for dest in values:
        if actions[dest].required:  # the file provides it
            actions[dest].required = False
    parser.set_defaults(**{d: v for d, v in values.items() if d not in appended})
    args = parser.parse_args(argv)
    for dest, value in appended.items():
        if getattr(args, dest) is originals[dest]:  # the flag was not given: the file's list holds
            setattr(args, dest, value)
    return args


def _load_config(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        parser.error(f"cannot read config file {path}: {e}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        parser.error(f"config file {path} must be a mapping of option names to values, got {type(data).__name__}")
    return data


def _resolve_config(parser: argparse.ArgumentParser, data: dict[str, Any], path: str) -> dict[str, Any]:
    """Map config keys to parser destinations, apply each option's ``type`` to strings and check
    ``choices`` (argparse checks neither for defaults)."""
    actions = {a.dest: a for a in parser._actions if a.dest not in (argparse.SUPPRESS, "help")}
    values: dict[str, Any] = {}
    unknown = []
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest == _CONFIG_DEST:  # a saved args.yaml names its own source config: not a nested include
            continue
        if dest not in actions:
            unknown.append(str(key))
            continue
        values[dest] = _convert(parser, actions[dest], value, f"config file {path}: {key}")
    if unknown:
        hints = [
            f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k.replace("-", "_"), actions, n=1)) else k
            for k in unknown
        ]
        parser.error(f"unknown key(s) in config file {path}: {', '.join(hints)}")
    return values


def _convert(parser: argparse.ArgumentParser, action: argparse.Action, value: Any, where: str) -> Any:
    items = value if isinstance(value, list) else [value]
    converted = []
    for item in items:
        if isinstance(item, str) and callable(action.type):
            try:
                item = action.type(item)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
                parser.error(f"{where}: invalid value {item!r}: {e}")
        if action.choices is not None and item is not None and item not in action.choices:
            parser.error(f"{where}: invalid choice {item!r} (choose from {', '.join(map(str, action.choices))})")
        converted.append(item)
    return converted if isinstance(value, list) else converted[0]


def save_args(values: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write resolved option values, keyed by the parser's destinations (``vars(namespace)``, or a
    typed config flattened back), as YAML reloadable with ``-c``."""
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump({k: _plain(v) for k, v in values.items()}, f, sort_keys=False)


def _plain(value: Any) -> Any:
    """YAML-safe form: paths and enums as strings, tuples as lists."""
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
