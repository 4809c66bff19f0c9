"""One typed configuration tree, loaded from TOML with command-line overrides.

Imports no torch: the CLI, the launcher and the replay inspector read configs without paying for it.

* Every field has a type and, where it matters, an allowed range (``spec(lo=..., hi=..., choices=...)``).
* Unknown keys and out-of-range values raise :class:`ConfigError` naming the dotted key.
* A TOML file may start with ``extends = "other.toml"`` (relative to itself) to inherit a preset.
* Overrides are ``--section.key value`` pairs applied after the files, parsed with the field's type.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
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


# ----------------------------------------------------------------------------------------------- sections


@dataclass
class ScheduleConfig:
    """A value as a function of the learner step t (ALGORITHM.md section 7).

    constant: start. linear: start -> end over horizon. cosine_down / cosine_up: half-cosine from start to end
    over horizon (identical shapes; the names say the intent). step: start before horizon, end from it on.
    After the horizon every schedule holds ``end`` (constant holds ``start``).
    """

    kind: Literal["constant", "linear", "cosine_up", "cosine_down", "step"] = "constant"
    start: float = 0.0
    end: float = 0.0
    horizon: int = spec(1, lo=1)


@dataclass
class ModelConfig:
    path: str = spec("runs/models/tiny", help="any local HF causal-LM directory")
    dtype: Literal["float32", "bfloat16"] = "float32"


@dataclass
class EnvConfig:
    name: str = "guess_number"
    params: dict[str, Any] = field(
        default_factory=dict
    )  # validated by the environment's own Params dataclass
    group_size: int = spec(8, lo=1, help="G: rollouts per task")
    groups_per_step: int = spec(16, lo=1, help="tasks per learner batch")
    eval_split: str = "test"


@dataclass
class RolloutConfig:
    engine: Literal["hf", "sglang"] = "hf"
    num_workers: int = spec(1, lo=0)
    temperature: float = spec(1.0, lo=0.0)
    top_p: float = spec(1.0, lo=0.0, hi=1.0, lo_open=True)
    top_k: int = spec(0, lo=0, help="0 = whole vocabulary")
    max_new_tokens: int = spec(32, lo=1, help="per assistant turn")
    max_seq_len: int = spec(1024, lo=8, help="whole row: prompt + all turns")
    batch_size: int = spec(128, lo=1, help="sequences decoded in lockstep")
    sglang_urls: list[str] = field(default_factory=list)
    num_threads: int = spec(1, lo=1)


@dataclass
class LearnerConfig:
    lr: float = spec(1e-4, lo=0.0, lo_open=True)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = spec(0.01, lo=0.0)
    grad_clip: float = spec(1.0, lo=0.0)
    steps: int = spec(200, lo=0)
    max_groups: int = spec(
        0, lo=0, help="also stop once this many fresh groups were trained on (equal-data budgets); 0 = off"
    )
    minibatches: int = spec(1, lo=1, help="optimizer steps per learner batch (one epoch)")
    micro_batch_tokens: int = spec(16384, lo=1)
    world_size: int = spec(1, lo=1)
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    mixed_precision: Literal["none", "bfloat16", "float16"] = (
        "none"  # FSDP2 param dtype; grads reduce in fp32
    )
    num_threads: int = spec(1, lo=1)
    seed: int = 0


@dataclass
class RewardConfig:
    invalid_penalty: float = spec(0.1, lo=0.0)
    tool_reward_per_call: float = spec(0.1, lo=0.0)
    tool_reward_cap: float = spec(1.0, lo=0.0)
    tool_reward_variant: Literal["episode", "correct_only"] = "episode"  # correct_only: Qwen3 math recipe


@dataclass
class AdvantageConfig:
    estimator: Literal["grpo", "gigpo"] = "grpo"
    std_norm: bool = True  # Dr.BoT trick 3 turns it off
    eps: float = spec(1e-6, lo=0.0)
    gigpo_gamma: float = spec(0.95, lo=0.0, hi=1.0)
    gigpo_omega: float = spec(1.0, lo=0.0)
    gigpo_mode: Literal["mean_std_norm", "mean_norm"] = "mean_std_norm"


@dataclass
class CovConfig:
    """Clip-Cov / KL-Cov token selection (arXiv 2505.22617)."""

    mode: Literal["none", "clip_cov", "kl_cov"] = "none"
    ratio: float = spec(2e-4, lo=0.0, hi=1.0)
    lb: float = 1.0
    ub: float = 5.0
    kl_coef: float = spec(0.1, lo=0.0)


@dataclass
class LossConfig:
    kind: Literal["ppo", "decoupled"] = "ppo"
    clip_low: float = spec(0.2, lo=0.0, hi=1.0)
    clip_high: float = spec(0.2, lo=0.0)
    dual_clip: float = spec(0.0, lo=0.0, help="c for A<0 (0 = off; Dr.BoT uses 10)")
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    norm_len: int = spec(0, lo=0, help="divisor for seq-mean-token-sum-norm; 0 = rollout.max_seq_len")
    is_cap: float = spec(5.0, lo=1.0, help="decoupled: truncate pi_prox/pi_behav at this cap")
    entropy_coef: float = spec(0.0, lo=0.0)
    kl_coef: float = spec(0.0, lo=0.0, help="KL to a frozen reference (0 = off, Dr.BoT trick 1)")
    cov: CovConfig = field(default_factory=CovConfig)


@dataclass
class FilterConfig:
    """Dr.BoT row filters 5-8 (zero the loss mask, keep the row in group stats) and the group filter 9."""

    overlong: bool = False
    incomplete: bool = False
    repetitive: bool = False
    unreadable: bool = False
    ngram: int = spec(20, lo=1)
    ngram_repeats: int = spec(10, lo=2)
    group_keep_ratio: float = spec(1.0, lo=0.0, hi=1.0, lo_open=True)


@dataclass
class AlgoConfig:
    reward: RewardConfig = field(default_factory=RewardConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)


@dataclass
class SILConfig:
    """Self-imitation replay (ALGORITHM.md section 6)."""

    enabled: bool = False
    mode: Literal["stream", "paper"] = "stream"
    # stream mode: "fixed" keeps the batch at groups_per_step groups' worth of rows, sil_fraction(t) of them replay
    # (fewer fresh groups per step, same learner cost per step); "extra" adds the replay rows on top of
    # groups_per_step fresh groups (each step costs 1 / (1 - sil_fraction) as much)
    stream_batch: Literal["fixed", "extra"] = "fixed"
    capacity: int = spec(2048, lo=1, help="B_sil")
    baseline_size: int = spec(10240, lo=1, help="D_R FIFO length")
    tolerate_steps: int = spec(5, lo=0)
    require_tool_call: bool = False  # math: entry needs at least one tool call
    replay_strict: bool = False  # False: replay A_tilde >= 0 (agent code); True: > 0 (math code)
    recalibrate_std: bool = False
    fire_factor: float = spec(1.5, lo=1.0)
    alpha: float = spec(1.0, lo=0.0)
    beta_start: float = spec(0.4, lo=0.0, hi=1.0)
    beta_steps: int = spec(200, lo=1)
    cov: CovConfig = field(default_factory=lambda: CovConfig(mode="clip_cov", ratio=0.02, lb=2.0, ub=60.0))


@dataclass
class CurriculumConfig:
    mu: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("constant", 0.0, 0.0, 1))
    gamma: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("cosine_up", 0.0, 1.0, 200))
    sil_fraction: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("constant", 0.25, 0.25, 1))
    sync_every: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("constant", 1.0, 1.0, 1))
    max_staleness: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("constant", 2.0, 2.0, 1))


@dataclass
class SyncConfig:
    mode: Literal["async", "sync"] = "async"
    method: Literal["dist", "disk", "shm"] = "disk"
    timeout_s: float = spec(120.0, lo=0.0, lo_open=True)


@dataclass
class TransportConfig:
    host: str = "127.0.0.1"
    port: int = spec(0, lo=0, hi=65535, help="0 = pick a free port")
    max_message_mb: float = spec(256.0, lo=0.0, lo_open=True)
    run_token: str = ""  # empty: a random token per run
    credits_per_worker: int = spec(4, lo=1)


@dataclass
class ReplayConfig:
    capacity: int = spec(8192, lo=1, help="rows in the fresh buffer")
    on_disk: bool = True


@dataclass
class CheckpointConfig:
    every: int = spec(0, lo=0, help="learner steps between checkpoints (0 = only at the end)")


@dataclass
class EvalConfig:
    episodes: int = spec(256, lo=0)
    temperature: float = spec(1.0, lo=0.0)
    greedy: bool = True
    seed: int = 12345
    before_after: bool = True


@dataclass
class SFTConfig:
    steps: int = spec(300, lo=0)
    lr: float = spec(1e-3, lo=0.0, lo_open=True)
    batch_episodes: int = spec(64, lo=1)
    demos: int = spec(3000, lo=1, help="expert episodes generated for the warm start")
    out: str = ""  # default: <run_dir>/sft


@dataclass
class LogConfig:
    every: int = spec(1, lo=1)
    tensorboard: bool = False
    progress: bool = True


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    run_dir: str = ""  # default runs/<name>
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    sil: SILConfig = field(default_factory=SILConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")


# ----------------------------------------------------------------------------------------------- loading


def _coerce(value: Any, tp: Any, key: str) -> Any:
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
        return _coerce(value, args[0], key)
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, str):
            value = json.loads(value) if value.startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = json.loads(value)
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
            setattr(obj, key, _coerce(value, hints[key], dotted))


def _check_ranges(obj: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        dotted = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_ranges(value, dotted + ".")
            continue
        lo, hi, lo_open = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("lo_open", False)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
        bad_hi = hi is not None and value > hi
        if bad_lo or bad_hi:
            left = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}"
            right = f"{hi if hi is not None else 'inf'}]"
            raise ConfigError(f"config key '{dotted}' = {value!r} is out of range; allowed {left}, {right}")


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
    _check_ranges(cfg)
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
