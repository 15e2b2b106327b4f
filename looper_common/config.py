"""Stage configs are dataclasses; this turns one into CLI flags, and a YAML file plus flags into one."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

import yaml


def help_text(text: str) -> dict:
    """Field metadata that `add_config_args` turns into the flag's help: `field(default=..., metadata=help_text(...))`."""
    return {"help": text}


def scalar_type(tp):
    """The parser for a field annotation: bool/int/float/str, Optional unwrapped, Literal as str."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return scalar_type(args[0])
    if origin is typing.Literal:
        return str
    if origin in (list, tuple):
        return list
    return tp


def add_config_args(parser: argparse.ArgumentParser, cls, repeatable: tuple[str, ...] = ()) -> None:
    """A flag per field of `cls`; the fields named in `repeatable` collect a list (the command splits it up)."""
    parser.add_argument("--config", help="YAML file with any of the fields below; flags override it")
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        kind = scalar_type(hints[field.name])
        doc = field.metadata.get("help", "")
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if default is not dataclasses.MISSING and "default" not in doc:  # flags default to None: say the field's
            doc = f"{doc} (default: {default})".strip()
        if field.name in repeatable:
            parser.add_argument(flag, dest=field.name, action="append", default=None, help=doc)
        elif kind is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=doc)
        elif kind is list:
            parser.add_argument(flag, dest=field.name, default=None, help=f"{doc} (comma-separated)")
        else:
            choices = (
                typing.get_args(hints[field.name]) if typing.get_origin(hints[field.name]) is typing.Literal else None
            )
            parser.add_argument(flag, dest=field.name, type=kind, choices=choices, default=None, help=doc)


def config_from_args(cls, args: argparse.Namespace):
    values: dict = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            raise SystemExit(f"looper: config file {path} does not exist")
        values.update(yaml.safe_load(path.read_text()) or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise SystemExit(f"looper: unknown config field(s) {', '.join(sorted(unknown))} for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    for name in names:
        value = getattr(args, name, None)
        if value is None:
            continue
        if scalar_type(hints[name]) is list and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"looper: invalid {cls.__name__}: {exc}") from None
