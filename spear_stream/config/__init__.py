"""One typed configuration tree, loaded from TOML with command-line overrides.

Imports no torch: the CLI, the launcher and the replay inspector read configs without paying for it.

* Every field has a type and, where it matters, an allowed range (``spec(lo=..., hi=..., choices=...)``).
* Unknown keys and out-of-range values raise :class:`ConfigError` naming the dotted key.
* A TOML file may start with ``extends = "other.toml"`` (relative to itself) to inherit a preset.
* Overrides are ``--section.key value`` pairs applied after the files, parsed with the field's type.
"""

from spear_stream.config.loader import (
    _hints,
    _merge,
    _read_toml,
    describe,
    load_config,
    parse_overrides,
    to_dict,
    to_toml,
    validate,
)
from spear_stream.config.sections import (
    AdvantageConfig,
    AlgoConfig,
    CheckpointConfig,
    Config,
    ConfigError,
    CovConfig,
    CurriculumConfig,
    EnvConfig,
    EvalConfig,
    FilterConfig,
    LearnerConfig,
    LogConfig,
    LossConfig,
    ModelConfig,
    ReplayConfig,
    RewardConfig,
    RolloutConfig,
    ScheduleConfig,
    SFTConfig,
    SILConfig,
    SyncConfig,
    TransportConfig,
    spec,
)

__all__ = [
    "AdvantageConfig",
    "AlgoConfig",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "CovConfig",
    "CurriculumConfig",
    "EnvConfig",
    "EvalConfig",
    "FilterConfig",
    "LearnerConfig",
    "LogConfig",
    "LossConfig",
    "ModelConfig",
    "ReplayConfig",
    "RewardConfig",
    "RolloutConfig",
    "SFTConfig",
    "SILConfig",
    "ScheduleConfig",
    "SyncConfig",
    "TransportConfig",
    # private helpers
    "_hints",
    "_merge",
    "_read_toml",
    # the loader API
    "describe",
    "load_config",
    "parse_overrides",
    "spec",
    "to_dict",
    "to_toml",
    "validate",
]
