"""Reading, overriding, validating and serialising a :class:`~spear_stream.config.sections.Config`.

* A TOML file may start with ``extends = "other.toml"`` (relative to itself) to inherit a preset.
* Overrides are ``--section.key value`` pairs applied after the files, parsed with the field's type.
* Unknown keys and out-of-range values raise :class:`ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from envs.config_fields import ConfigError, check_ranges, coerce, range_text
from spear_stream.config.sections import Config, ScheduleConfig


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _merge(obj: Any, data: dict[str, Any], prefix: str) -> None:
    """Write ``data`` into dataclass ``obj`` in place, recursing into sub-sections."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = _hints(type(obj))
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{dotted}' (known keys here: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if isinstance(value, str) and value.lstrip().startswith("{"):  # --section '{"key": value}'
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"config key '{dotted}': invalid JSON table {value!r}: {exc}") from exc
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' is a section; expected a table, got {value!r}")
            _merge(current, value, dotted + ".")
        else:
            setattr(obj, key, coerce(value, hints[key], dotted))


def _read_toml(path: Path, seen: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """The chain of tables from the root preset to ``path`` (``extends`` resolved)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config 'extends' cycle through {path}")
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    parent = data.pop("extends", None)
    chain = _read_toml(path.parent / parent, (*seen, path)) if parent else []
    return [*chain, data]


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--learner.lr", "1e-5", "--sil.enabled=true"]`` -> nested dict of raw strings."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"expected --section.key, got {arg!r}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"config key '{arg[2:]}' has no value")
            key, value = arg[2:], args[i + 1]
            i += 2
        node = out
        *parents, leaf = key.replace("-", "_").split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML chain of ``path``, then ``overrides``; validated."""
    cfg = Config()
    if path is not None:
        for table in _read_toml(Path(path)):
            _merge(cfg, table, "")
    if overrides:
        _merge(cfg, parse_overrides(overrides), "")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    check_ranges(cfg)
    server_sync = cfg.sync.method.startswith("sglang")
    if cfg.rollout.engine == "sglang" and not (cfg.rollout.sglang_urls or cfg.rollout.sglang_launch):
        raise ConfigError("rollout.engine = 'sglang' needs rollout.sglang_urls or rollout.sglang_launch")
    if (cfg.rollout.engine == "sglang") != server_sync:
        raise ConfigError(
            f"config key 'sync.method' = {cfg.sync.method!r} does not fit rollout.engine = {cfg.rollout.engine!r}: "
            "SGLang servers are updated with sglang_disk or sglang_nccl; the in-process engine with dist, disk or shm"
        )
    if cfg.rollout.sglang_launch and cfg.rollout.engine != "sglang":
        raise ConfigError("config key 'rollout.sglang_launch' needs rollout.engine = 'sglang'")
    if cfg.rollout.sglang_launch and not (cfg.rollout.sglang_servers or cfg.rollout.sglang_gpus):
        raise ConfigError(
            "config key 'rollout.sglang_launch' needs rollout.sglang_servers >= 1 or rollout.sglang_gpus"
        )
    if cfg.rollout.engine == "sglang" and cfg.rollout.num_workers == 0:
        raise ConfigError(
            "rollout.engine = 'sglang' needs rollout.num_workers >= 1 (workers drive the servers)"
        )
    ports = cfg.sync.port_range
    if len(ports) != 2 or not 1 <= ports[0] <= ports[1] <= 65535:
        raise ConfigError(f"config key 'sync.port_range' must be [first, last] ports, got {ports}")
    if len(cfg.learner.betas) != 2:
        raise ConfigError(f"config key 'learner.betas' needs two values, got {cfg.learner.betas}")
    if cfg.algo.loss.clip_low >= 1.0:
        raise ConfigError("config key 'algo.loss.clip_low' must be < 1")
    for name in ("mu", "gamma", "sil_fraction", "sync_every", "max_staleness"):
        sched: ScheduleConfig = getattr(cfg.curriculum, name)
        if name == "sil_fraction" and not (
            min(sched.start, sched.end) >= 0.0 and max(sched.start, sched.end) <= 1.0
        ):
            raise ConfigError("config key 'curriculum.sil_fraction' must stay within [0, 1]")
        if name in ("sync_every",) and min(sched.start, sched.end) < 1:
            raise ConfigError("config key 'curriculum.sync_every' must stay >= 1")
        if name == "max_staleness" and min(sched.start, sched.end) < 0:
            raise ConfigError("config key 'curriculum.max_staleness' must stay >= 0")
    from envs.registry import check_params  # envs import no torch

    check_params(cfg.env.name, cfg.env.params)


def describe(cfg: Any, prefix: str = "") -> list[str]:
    """One line per config key: ``--section.key VALUE  type, allowed range; help`` (for ``COMMAND --help``)."""
    lines: list[str] = []
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, dotted = getattr(cfg, f.name), f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(value) and not isinstance(value, ScheduleConfig):
            lines += describe(value, dotted + ".")
            continue
        if isinstance(value, ScheduleConfig):
            shown, kind = json.dumps(dataclasses.asdict(value)), "schedule (JSON table)"
        else:
            plain = isinstance(value, str) and value and " " not in value
            shown = value if plain else json.dumps(value)  # TOML-like: true/false, "" for an empty string
            kind = (
                " | ".join(map(repr, get_args(tp)))
                if get_origin(tp) is Literal
                else getattr(tp, "__name__", str(tp))
            )
        allowed = range_text(f.metadata)
        if allowed:
            kind += f", {allowed}"
        note = f.metadata.get("help", "")
        lines.append(f"  --{dotted} {shown}  ({kind}){'; ' + note if note else ''}")
    return lines


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_toml(cfg: Any) -> str:
    """Serialise a config tree to TOML (enough for our types: scalars, lists, tables)."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items()) + "}"
        raise TypeError(v)

    lines: list[str] = []

    def emit(d: dict[str, Any], prefix: str) -> None:
        tables = {k: v for k, v in d.items() if isinstance(v, dict) and k != "params"}
        for k, v in d.items():
            if k not in tables:
                lines.append(f"{k} = {scalar(v)}")
        for k, v in tables.items():
            lines.append(f"\n[{prefix}{k}]")
            emit(v, f"{prefix}{k}.")

    emit(to_dict(cfg), "")
    return "\n".join(lines) + "\n"
