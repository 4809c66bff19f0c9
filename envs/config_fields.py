"""Typed config fields, shared by the trainer's config (``spear_stream.config``) and every environment's
``Params`` dataclass (``envs.registry``).

This module is the lowest layer: it imports only the standard library, and both packages import it, so imports
flow one way (``spear_stream`` -> ``envs`` -> here) and an environment never needs the trainer's internals.

* :func:`spec` records a field's allowed range and help text in the dataclass field's metadata.
* :func:`coerce` converts a TOML value or a command-line string to the field's annotated type.
* :func:`check_ranges` enforces the ranges of a whole dataclass tree.
Every failure is a :class:`ConfigError` that names the dotted key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import field
from typing import Any, Literal, get_args, get_origin


class ConfigError(ValueError):
    """A config key is unknown, mistyped or out of range; the message names the key."""


def spec(
    default: Any = dataclasses.MISSING,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    help: str = "",
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with a documented allowed range (``lo <= v <= hi``; ``lo < v`` if ``lo_open``)."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "help": help}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _json(text: str, key: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config key '{key}': invalid JSON {text!r}: {exc}") from exc


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a TOML value or a command-line string to the annotated type, or raise naming ``key``."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}' = {value!r} is not one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None or (value == "none" and type(None) in get_args(tp)):
            return None
        return coerce(value, args[0], key)
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, str):
            value = _json(value, key) if value.startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = _json(value, key)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a table, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | str | float):
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError as exc:
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}") from exc
        if not as_float.is_integer():
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        try:
            out = float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}") from exc
        if isinstance(value, bool) or not math.isfinite(out):
            raise ConfigError(f"config key '{key}' expects a finite number, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}' has unsupported type {tp}")


def range_text(meta: Any) -> str | None:
    """A field's allowed range from its ``spec`` metadata, ``[lo, hi]`` / ``(lo, hi]``; None when unbounded."""
    lo, hi, lo_open = meta.get("lo"), meta.get("hi"), meta.get("lo_open", False)
    if lo is None and hi is None:
        return None
    return f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"


def check_ranges(obj: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        dotted = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_ranges(value, dotted + ".")
            continue
        lo, hi, lo_open = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("lo_open", False)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
        bad_hi = hi is not None and value > hi
        if bad_lo or bad_hi:
            raise ConfigError(
                f"config key '{dotted}' = {value!r} is out of range; allowed {range_text(f.metadata)}"
            )
