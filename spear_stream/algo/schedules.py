"""Scalar schedules of the learner step t (docs/algorithm.md section 7).

``mu(t)`` of section 2 is ``cosine_down`` from 1 to 0 over T_mu; ``gamma(t)`` of section 6 is ``cosine_up``
from 0 to lambda over T_gamma. Both are the same half-cosine from ``start`` to ``end``:
``end + (start - end) * (1 + cos(pi * t / T)) / 2``.
"""

from __future__ import annotations

import math

from spear_stream.config import ScheduleConfig


def schedule_value(cfg: ScheduleConfig, t: int) -> float:
    """Value of the schedule at learner step ``t`` (negative t counts as 0).

    constant: ``start`` forever. linear / cosine_*: ``start`` at 0, ``end`` at ``horizon`` and after.
    step: ``start`` for ``t < horizon``, ``end`` from ``horizon`` on.
    """
    t = max(int(t), 0)
    horizon = max(int(cfg.horizon), 1)
    if cfg.kind == "constant":
        return float(cfg.start)
    if cfg.kind == "step":
        return float(cfg.start if t < horizon else cfg.end)
    if t >= horizon:
        return float(cfg.end)
    progress = t / horizon
    if cfg.kind == "linear":
        return float(cfg.start + (cfg.end - cfg.start) * progress)
    if cfg.kind in ("cosine_up", "cosine_down"):
        return float(cfg.end + (cfg.start - cfg.end) * (1.0 + math.cos(math.pi * progress)) / 2.0)
    raise ValueError(f"unknown schedule kind {cfg.kind!r}")
