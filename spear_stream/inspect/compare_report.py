"""The report half of ``tools/compare_recipes.py``: read finished runs' ``metrics.jsonl`` into curves and timings,
summarise them per recipe over seeds, and write the markdown table and the PNG of success curves."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from spear_stream.inspect.charts import _rolling_mean
from spear_stream.metrics import read_metrics

SUCCESS = "rollout/success_rate"
EVAL_AFTER, EVAL_BEFORE = "eval/after/sampled", "eval/before/sampled"
FRESH_GROUPS = "learner/fresh_groups"  # fresh groups trained on per learner step (both trainers log it)


class Labelled(Protocol):
    """What the report needs of a recipe (the tool's ``Recipe``): its label."""

    @property
    def label(self) -> str: ...


@dataclass
class RunResult:
    seed: int
    run_dir: Path
    steps: list[int] = field(default_factory=list)
    success: list[float] = field(default_factory=list)
    env_steps: list[float] = field(default_factory=list)  # cumulative, x axis of the curves
    eval_after: float | None = None
    eval_before: float | None = None
    wall_s_per_step: float | None = None
    learner_s_per_step: float | None = None
    learner_s_total: float | None = None  # every step, start-up included: the run's whole learner bill
    error: str = ""


# ------------------------------------------------------------------------------------------------ reading


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def read_run(run_dir: Path, seed: int, per_step: int, per_group: int) -> RunResult:
    """One run's curves and timings; nominal env steps count the fresh groups each step trained on."""
    res = RunResult(seed, run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        res.error = f"no metrics in {run_dir}"
        return res
    walls, learns = [], []
    total_env = 0.0
    for r in rows:
        if r.get(SUCCESS) is not None:
            res.steps.append(int(r["step"]))
            res.success.append(float(r[SUCCESS]))
            if r.get(FRESH_GROUPS) is not None:
                total_env += float(r[FRESH_GROUPS]) * per_group
            else:  # runs from before the trainers logged their fresh groups
                total_env = float(r["step"]) * per_step
            res.env_steps.append(total_env)
        if r.get("time/step_s") is not None:  # the learner waited time/wait_s of it for data
            walls.append(float(r["time/step_s"]))
            learns.append(float(r["time/step_s"]) - float(r.get("time/wait_s") or 0.0))
        res.eval_after = r.get(EVAL_AFTER, res.eval_after)
        res.eval_before = r.get(EVAL_BEFORE, res.eval_before)
    # The first steps include start-up (model load, first batch): skip them when there are enough.
    skip = 2 if len(walls) > 4 else 0
    res.wall_s_per_step, res.learner_s_per_step = _mean(walls[skip:]), _mean(learns[skip:])
    res.learner_s_total = sum(learns) if learns else None
    return res


def final_train_success(res: RunResult) -> float | None:
    """Mean rollout success over the last 10% of learner steps (at least one, at most ten)."""
    k = min(10, max(1, len(res.success) // 10))
    return _mean(res.success[-k:])


def _fmt(values: list[float | None], pct: bool = True) -> str:
    """``mean ± std`` over seeds (sample std; no ± for a single seed); ``-`` when nothing was measured."""
    xs = [v for v in values if v is not None]
    if not xs:
        return "-"
    scale, unit = (100.0, "%") if pct else (1.0, "")
    mean = statistics.fmean(xs) * scale
    if len(xs) == 1:
        return f"{mean:.1f}{unit}" if pct else f"{mean:.2f}"
    std = statistics.stdev(xs) * scale
    return f"{mean:.1f} ± {std:.1f}{unit}" if pct else f"{mean:.2f} ± {std:.2f}"


def baseline_of(label: str, labels: list[str]) -> str | None:
    """The recipe a ``*_spear`` recipe is compared with: the same name without ``_spear``."""
    if label.endswith("_spear") and label[: -len("_spear")] in labels:
        return label[: -len("_spear")]
    return None


def summarise(recipes: Sequence[Labelled], results: dict[str, list[RunResult]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for r in recipes:
        runs = [x for x in results.get(r.label, []) if not x.error]
        learner = _mean([x.learner_s_per_step for x in runs if x.learner_s_per_step is not None])
        wall = _mean([x.wall_s_per_step for x in runs if x.wall_s_per_step is not None])
        rows.append(
            {
                "recipe": r.label,
                "seeds": [x.seed for x in runs],
                "failed": [x.seed for x in results.get(r.label, []) if x.error],
                "learner_steps": max((x.steps[-1] for x in runs if x.steps), default=0),
                "env_steps_nominal": round(max((x.env_steps[-1] for x in runs if x.env_steps), default=0.0)),
                "eval_after": [x.eval_after for x in runs],
                "eval_before": [x.eval_before for x in runs],
                "train_final": [final_train_success(x) for x in runs],
                "wall_s_per_step": wall,
                "learner_s_per_step": learner,
                "learner_s_total": _mean([x.learner_s_total for x in runs if x.learner_s_total is not None]),
            }
        )
    by_label = {row["recipe"]: row for row in rows}
    for row in rows:
        base = baseline_of(row["recipe"], list(by_label))
        row["baseline"] = base
        b = by_label[base] if base else None
        for key, name in (
            ("learner_s_per_step", "learner_ratio"),
            ("wall_s_per_step", "wall_ratio"),
            ("learner_s_total", "learner_total_ratio"),
        ):
            row[name] = row[key] / b[key] if b is not None and row[key] is not None and b[key] else None
    return rows


def markdown_table(rows: list[dict[str, Any]], notes: list[str]) -> str:
    head = (
        "| recipe | seeds | learner steps | env steps (nominal) | eval success after | eval before | "
        "train success (last steps) | wall s/step | learner s/step | learner s/step vs baseline | "
        "learner s in all | learner s in all vs baseline |"
    )
    lines = [head, "|" + "---|" * 12]
    for row in rows:
        ratio = f"{row['learner_ratio']:.2f}x {row['baseline']}" if row["learner_ratio"] is not None else "-"
        total = row["learner_s_total"]
        total_ratio = row["learner_total_ratio"]
        seeds = ",".join(map(str, row["seeds"])) + (f" (failed: {row['failed']})" if row["failed"] else "")
        lines.append(
            f"| {row['recipe']} | {seeds or '-'} | {row['learner_steps']} | {row['env_steps_nominal']:,} | "
            f"{_fmt(row['eval_after'])} | {_fmt(row['eval_before'])} | {_fmt(row['train_final'])} | "
            f"{_fmt([row['wall_s_per_step']], pct=False)} | {_fmt([row['learner_s_per_step']], pct=False)} | {ratio} | "
            f"{'-' if total is None else f'{total:.0f}'} | {'-' if total_ratio is None else f'{total_ratio:.2f}x'} |"
        )
    legend = [
        "",
        "Success: mean ± sample std over seeds. *eval*: sampled success on the held-out split (eval.episodes episodes,",
        "eval.temperature) before and after RL. *train success*: rollout success over the last 10% of learner steps.",
        "*learner s/step*: learner time per step without waiting for rollouts (time/step_s - time/wait_s), mean",
        "over runs after the first two steps; the ratio compares a `*_spear` recipe",
        "with the same recipe without SPEAR. *learner s in all*: the learner time of a whole run (every step), mean over",
        "runs: at an equal environment-step budget a SPEAR recipe with fixed-size batches takes more, equally dear, steps.",
        "*env steps (nominal)*: fresh groups trained on x group_size x the environment's turn cap",
        "(tools/compare_recipes.py explains the budget).",
    ]
    return "\n".join(lines + legend + [f"\nNote: {n}" for n in notes]) + "\n"


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists)."""
    return _rolling_mean(values, window)


def plot_curves(results: dict[str, list[RunResult]], path: Path, window: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for label, runs in results.items():
        runs = [x for x in runs if x.success]
        if not runs:
            continue
        n = min(len(x.success) for x in runs)  # align seeds on their common learner steps
        curves = [smooth(x.success[:n], window) for x in runs]
        xs = runs[0].env_steps[:n]
        mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
        std = [statistics.stdev(c[i] for c in curves) if len(curves) > 1 else 0.0 for i in range(n)]
        (line,) = ax.plot(xs, mean, label=f"{label} (n={len(runs)})")
        ax.fill_between(
            xs,
            [m - s for m, s in zip(mean, std)],
            [m + s for m, s in zip(mean, std)],
            color=line.get_color(),
            alpha=0.2,
        )
    ax.set_xlabel("environment steps (nominal: episodes x turn cap)")
    ax.set_ylabel(f"rollout success rate (moving average over {window} steps)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
