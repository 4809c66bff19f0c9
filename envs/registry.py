"""Environment registry: name -> class, plus validation of the ``env.params`` config table.

Classes are imported lazily (by "module:Class" path) so that listing or validating never imports every
environment's dependencies.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from typing import Any

from envs.base import Env
from envs.config_fields import ConfigError, check_ranges, coerce

_REGISTRY: dict[str, str] = {
    "guess_number": "envs.guess_number:GuessNumberEnv",
    "calculator": "envs.calculator:CalculatorEnv",
    "math_code": "envs.math_code:MathCodeEnv",
    "minihouse": "envs.minihouse:MiniHouseEnv",
    "sokoban": "envs.sokoban:SokobanEnv",
    "webshop": "envs.webshop:WebShopLiteEnv",
    "alfworld": "envs.alfworld:AlfWorldEnv",
    "gym_text": "envs.adapters.gymnasium_text:GymnasiumTextEnv",
    "textworld": "envs.adapters.textworld_games:TextWorldEnv",
    "longtail": "envs.longtail:LongTailEnv",
}


def register(name: str, target: str | type[Env]) -> None:
    """Register an environment by import path ("pkg.module:Class") or class; user envs call this."""
    _REGISTRY[name] = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def env_names() -> list[str]:
    return sorted(_REGISTRY)


def env_class(name: str) -> type[Env]:
    if name not in _REGISTRY:
        raise ConfigError(
            f"config key 'env.name' = {name!r} is not a registered environment; known: {env_names()}"
        )
    module, _, attr = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def build_params(name: str, params: dict[str, Any]) -> Any:
    """The env's ``Params`` dataclass from a config table; unknown keys and bad values name ``env.params.X``."""
    cls = env_class(name).Params
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in params.items():
        if key not in known:
            raise ConfigError(
                f"unknown config key 'env.params.{key}' for env {name!r} (known: {sorted(known)})"
            )
        values[key] = coerce(value, hints[key], f"env.params.{key}")
    out = cls(**values)
    check_ranges(out, "env.params.")
    return out


def check_params(name: str, params: dict[str, Any]) -> None:
    build_params(name, params)


def make_env(name: str, params: dict[str, Any] | None = None) -> Env:
    return env_class(name)(build_params(name, params or {}))
