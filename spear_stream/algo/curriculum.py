"""The curriculum: one object maps the learner step t to every scheduled value (docs/algorithm.md section 7).

Early training explores (tool bonus mu high, frequent weight syncs), late training exploits (SIL weight gamma
up, bonus gone). The learner asks ``at(t)`` once per step and logs ``metrics(t)``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

from spear_stream.algo.schedules import schedule_value
from spear_stream.config import CurriculumConfig, ScheduleConfig

SCHEDULE_NAMES = ("mu", "gamma", "sil_fraction", "sync_every", "max_staleness")


@dataclass(frozen=True)
class CurriculumValues:
    mu: float  # intrinsic tool-reward coefficient
    gamma: float  # SIL loss weight
    sil_fraction: float  # share of SIL rows in a stream-mode batch
    sync_every: int  # learner steps between weight publications (>= 1)
    max_staleness: int  # oldest policy version lag still trained on (>= 0)


def _round_half_up(x: float) -> int:
    # Python's round() is banker's rounding (2.5 -> 2); schedules read better rounding half up.
    return math.floor(x + 0.5)


def _schedule_dict(cfg: ScheduleConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


class Curriculum:
    """Schedules of ``CurriculumConfig`` evaluated at a learner step; remembers the last step asked for."""

    def __init__(self, cfg: CurriculumConfig) -> None:
        self.cfg = cfg
        self.step = 0

    def at(self, t: int) -> CurriculumValues:
        self.step = int(t)
        value = {name: schedule_value(getattr(self.cfg, name), t) for name in SCHEDULE_NAMES}
        return CurriculumValues(
            mu=value["mu"],
            gamma=value["gamma"],
            sil_fraction=min(max(value["sil_fraction"], 0.0), 1.0),
            sync_every=max(1, _round_half_up(value["sync_every"])),
            max_staleness=max(0, _round_half_up(value["max_staleness"])),
        )

    def metrics(self, t: int) -> dict[str, float]:
        values = self.at(t)
        return {f"curriculum/{name}": float(getattr(values, name)) for name in SCHEDULE_NAMES}

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "schedules": {name: _schedule_dict(getattr(self.cfg, name)) for name in SCHEDULE_NAMES},
        }

    def load_state_dict(self, state: dict[str, Any]) -> list[str]:
        """Restore the step; return (and warn about) schedules that differ from the checkpoint's.

        A resume with a changed schedule is allowed (the current config wins) but never silent.
        """
        self.step = int(state["step"])
        changes: list[str] = []
        saved = state.get("schedules", {})
        for name in SCHEDULE_NAMES:
            now = _schedule_dict(getattr(self.cfg, name))
            before = saved.get(name)
            if before is None:
                changes.append(f"curriculum.{name}: not in checkpoint, using {now}")
            elif before != now:
                diff = ", ".join(
                    f"{k} {before.get(k)!r} -> {v!r}" for k, v in now.items() if before.get(k) != v
                )
                changes.append(f"curriculum.{name}: {diff}")
        if changes:
            warnings.warn("resumed with a different curriculum: " + "; ".join(changes), stacklevel=2)
        return changes
