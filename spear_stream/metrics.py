"""Run metrics: one ``metrics.jsonl`` per run (a line per learner step) and optional TensorBoard events.

Names are ``stage/name`` (``rollout/tokens_per_s``, ``loss/clip_frac``, ``curriculum/mu`` ...).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends a line per step. ``resume_step``: the run continues from that step's checkpoint, so lines of later
    steps (logged before a crash or a stop) are dropped first: each step appears once, as it was finally trained.
    """

    def __init__(
        self, run_dir: str | Path, tensorboard: bool = False, resume_step: int | None = None
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self._file = self.path.open("a", buffering=1)  # line-buffered: readers see whole lines
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # lazy: heavy import

            # purge_step: TensorBoard hides its own events of the steps being redone
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge)

    def _truncate_after(self, step: int) -> None:
        """Rewrite the file (atomically) without lines of steps after ``step`` or half-written lines."""
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line + "\n")
            except (json.JSONDecodeError, AttributeError):
                continue
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        tmp.replace(self.path)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        clean = {k: (float(v) if isinstance(v, int | float) else v) for k, v in metrics.items()}
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in clean.items()}
        self._file.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, float):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All complete lines of a run's metrics (tolerates a half-written last line of a live run)."""
    path = Path(run_dir) / "metrics.jsonl"
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
