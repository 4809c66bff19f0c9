"""Train two or more recipes on one environment with several seeds under an equal environment-step budget, then
write a markdown table and a PNG of the success curves.

    OMP_NUM_THREADS=1 .venv/bin/python tools/compare_recipes.py \
        --recipes configs/cpu/guess_number/grpo.toml configs/cpu/guess_number/grpo_spear.toml \
        --seeds 0 1 2 --env-steps 400000 --sft --out docs/results/guess_grpo_vs_spear

Environment steps. One environment step is one call of ``env.step(action)``: one assistant turn acting in the
environment (a tool call, a move, an answer). Episodes end early when solved, so the steps a run actually takes
depend on its policy; the budget is therefore billed at the *nominal* rate: every episode costs its environment's
turn cap, so a trained group costs ``group_size x max_turns`` environment steps, whatever the policy does. With
``--env-steps E`` each recipe trains until it has consumed ``floor(E / that)`` fresh groups (``learner.max_groups``),
however many learner steps that takes: recipes with different batch geometry, or a SPEAR recipe whose fixed-size
batches give a ``sil_fraction`` share to replay (``sil.stream_batch = "fixed"``, fewer fresh groups per step), all get
the same budget. ``--steps N`` fixes the learner steps instead (and warns if that gives unequal budgets). Only trained-on episodes count: groups that an asynchronous run generated and then dropped as stale
are not billed (they are in each run's ``metrics.jsonl``), and self-imitation replay reuses stored samples, so it
costs backward passes, never environment steps.

Outputs in ``--out``: ``runs/<recipe>/seed<S>/`` (run directories, each with ``train.log``), ``table.md``,
``success.png``, ``summary.json``. ``--reuse`` rebuilds the report from existing run directories without training;
``--run-dirs`` reports on any run directories (grouped by the ``name`` in their ``config.toml``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spear_stream.config import Config, load_config
from spear_stream.metrics import read_metrics

SUCCESS = "rollout/success_rate"
EVAL_AFTER, EVAL_BEFORE = "eval/after/sampled", "eval/before/sampled"
ACTUAL_ENV_STEPS = "rollout/env_steps"  # used for the x axis when the trainer logs it (per learner step)
FRESH_GROUPS = "learner/fresh_groups"  # fresh groups trained on per learner step (both trainers log it)


@dataclass
class Recipe:
    label: str  # the recipe's `name` (unique within a comparison)
    path: Path | None
    cfg: Config
    env_steps_per_learner_step: int  # nominal: groups_per_step x group_size x turn cap
    learner_steps: int = 0
    max_groups: int = 0  # the fresh-group budget (--env-steps); 0: learner_steps decides

    @property
    def env_steps_per_group(self) -> int:
        return self.env_steps_per_learner_step // self.cfg.env.groups_per_step


@dataclass
class RunResult:
    seed: int
    run_dir: Path
    steps: list[int] = field(default_factory=list)
    success: list[float] = field(default_factory=list)
    env_steps: list[float] = field(default_factory=list)  # cumulative, x axis of the curves
    actual_env_steps: bool = False
    eval_after: float | None = None
    eval_before: float | None = None
    wall_s_per_step: float | None = None
    learner_s_per_step: float | None = None
    learner_s_total: float | None = None  # every step, start-up included: the run's whole learner bill
    error: str = ""


# ------------------------------------------------------------------------------------------------ budget


def turn_cap(cfg: Config) -> int:
    """Assistant turns (environment steps) an episode may take at most: the environment's own limit."""
    from envs import make_env

    return int(make_env(cfg.env.name, cfg.env.params).max_turns)


def env_steps_per_learner_step(cfg: Config) -> int:
    return cfg.env.groups_per_step * cfg.env.group_size * turn_cap(cfg)


def groups_for_budget(env_steps: int, per_group: int) -> int:
    """The most fresh groups whose nominal cost stays within ``env_steps`` (at least one)."""
    return max(1, env_steps // per_group)


def plan_budget(recipes: list[Recipe], steps: int | None, env_steps: int | None) -> list[str]:
    """Set each recipe's budget (fresh groups, or learner steps); return warnings about unequal budgets."""
    for r in recipes:
        if env_steps is not None:
            r.max_groups = groups_for_budget(env_steps, r.env_steps_per_group)
            r.learner_steps = (
                r.max_groups
            )  # an upper bound: every learner step trains at least one fresh group
        else:
            r.max_groups = 0
            r.learner_steps = steps if steps is not None else r.cfg.learner.steps
    budgets = {
        r.label: r.max_groups * r.env_steps_per_group
        if r.max_groups
        else r.learner_steps * r.env_steps_per_learner_step
        for r in recipes
    }
    warnings = []
    if len(set(budgets.values())) > 1:
        detail = ", ".join(f"{k}: {v}" for k, v in budgets.items())
        warnings.append(f"unequal environment-step budgets ({detail}); use --env-steps to equalise them")
    envs = {(r.cfg.env.name, json.dumps(r.cfg.env.params, sort_keys=True)) for r in recipes}
    if len(envs) > 1:
        warnings.append(f"the recipes use different environments or env.params: {sorted(envs)}")
    return warnings


# ------------------------------------------------------------------------------------------------ training


def load_recipes(paths: list[str], extra: list[str]) -> list[Recipe]:
    recipes: list[Recipe] = []
    seen: dict[str, int] = {}
    for p in paths:
        cfg = load_config(p, extra)
        label = cfg.name
        if label in seen:  # the same recipe twice (e.g. under different --extra): keep both apart
            seen[label] += 1
            label = f"{label}.{seen[label]}"
        seen.setdefault(label, 0)
        recipes.append(Recipe(label, Path(p), cfg, env_steps_per_learner_step(cfg)))
    return recipes


def cli_command() -> list[str]:
    return [sys.executable, "-m", "spear_stream.cli.main"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # several processes share the cores: one thread each is faster
    return env


def train_command(recipe: Recipe, seed: int, run_dir: Path, model: str | None, extra: list[str]) -> list[str]:
    assert recipe.path is not None
    cmd = [
        *cli_command(),
        "train",
        "--config",
        str(recipe.path),
        "--seed",
        str(seed),
        "--run_dir",
        str(run_dir),
        "--learner.steps",
        str(recipe.learner_steps),
        "--learner.max_groups",
        str(recipe.max_groups),
        "--log.progress",
        "false",
    ]
    if model:
        cmd += ["--model.path", model]
    return cmd + extra


def is_complete(run_dir: Path, recipe: Recipe) -> bool:
    rows = read_metrics(run_dir)
    last = max((int(r.get("step", 0)) for r in rows), default=0)
    groups = sum(float(r.get(FRESH_GROUPS) or 0.0) for r in rows)
    done = last >= recipe.learner_steps or (recipe.max_groups > 0 and groups >= recipe.max_groups)
    return done and (run_dir / "final").exists()


def run_one(cmd: list[str], run_dir: Path) -> str:
    """Train into a fresh ``run_dir`` (metrics are appended, so a half-finished run must not be reused)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    with (run_dir / "train.log").open("w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), check=False
        ).returncode
    return "" if rc == 0 else f"exit code {rc} (see {run_dir / 'train.log'})"


def warm_start(recipe: Recipe, out: Path, extra: list[str]) -> str:
    """One SFT warm start shared by every run (identical initial policy), reused if present."""
    sft_dir = out / "sft"
    if (sft_dir / "config.json").exists():
        return str(sft_dir)
    assert recipe.path is not None
    cmd = [
        *cli_command(),
        "sft",
        "--config",
        str(recipe.path),
        "--sft.out",
        str(sft_dir),
        "--log.progress",
        "false",
        *extra,
    ]
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, env=child_env(), check=True)
    return str(sft_dir)


def check_models(recipes: list[Recipe], model: str | None) -> None:
    """Fail before launching anything if an initial model directory is missing (the usual first-run error)."""
    for path in {model} if model else {r.cfg.model.path for r in recipes}:
        if not (Path(path) / "config.json").exists():
            hint = (
                f" (build it: spear-stream models build-tiny --out {path})" if "models/tiny" in path else ""
            )
            raise SystemExit(f"model directory {path} not found{hint}; see docs/recipes.md")


def train_all(
    recipes: list[Recipe],
    seeds: list[int],
    out: Path,
    model: str | None,
    extra: list[str],
    jobs: int,
    dry_run: bool,
) -> dict[tuple[str, int], str]:
    todo = []
    for r in recipes:
        for s in seeds:
            run_dir = out / "runs" / r.label / f"seed{s}"
            if is_complete(run_dir, r):
                print(f"{r.label} seed {s}: complete, reused", flush=True)
                continue
            todo.append((r.label, s, train_command(r, s, run_dir, model, extra), run_dir))
    for label, s, cmd, _ in todo:
        print(f"{label} seed {s}: $ {shlex.join(cmd)}", flush=True)
    if dry_run:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {(label, s): pool.submit(run_one, cmd, run_dir) for label, s, cmd, run_dir in todo}
        errors = {key: f.result() for key, f in futures.items()}
    for (label, s), err in errors.items():
        print(f"{label} seed {s}: {'ok' if not err else 'FAILED: ' + err}", flush=True)
    return {k: v for k, v in errors.items() if v}


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
            if r.get(ACTUAL_ENV_STEPS) is not None:
                res.actual_env_steps = True
                total_env += float(r[ACTUAL_ENV_STEPS])
            elif r.get(FRESH_GROUPS) is not None:
                total_env += float(r[FRESH_GROUPS]) * per_group
            else:  # runs from before the trainers logged their fresh groups
                total_env = float(r["step"]) * per_step
            res.env_steps.append(total_env)
        if r.get("time/step_s") is not None:  # streaming trainer: the learner waited time/wait_s for data
            walls.append(float(r["time/step_s"]))
            learns.append(float(r["time/step_s"]) - float(r.get("time/wait_s") or 0.0))
        elif r.get("time/train_s") is not None:  # in-process trainer: rollout, then train
            walls.append(float(r["time/train_s"]) + float(r.get("time/rollout_s") or 0.0))
            learns.append(float(r["time/train_s"]))
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


def summarise(recipes: list[Recipe], results: dict[str, list[RunResult]]) -> list[dict[str, Any]]:
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
        "*learner s/step*: learner time per step without waiting for rollouts (streaming: time/step_s - time/wait_s;",
        "in-process: time/train_s), mean over runs after the first two steps; the ratio compares a `*_spear` recipe",
        "with the same recipe without SPEAR. *learner s in all*: the learner time of a whole run (every step), mean over",
        "runs: at an equal environment-step budget a SPEAR recipe with fixed-size batches takes more, equally dear, steps.",
        "*env steps (nominal)*: fresh groups trained on x group_size x the environment's turn cap",
        "(tools/compare_recipes.py explains the budget).",
    ]
    return "\n".join(lines + legend + [f"\nNote: {n}" for n in notes]) + "\n"


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


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
    actual = any(x.actual_env_steps for runs in results.values() for x in runs)
    ax.set_xlabel("environment steps" + ("" if actual else " (nominal: episodes x turn cap)"))
    ax.set_ylabel(f"rollout success rate (moving average over {window} steps)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ main


def recipes_from_run_dirs(dirs: list[str]) -> tuple[list[Recipe], dict[str, list[RunResult]]]:
    """Existing run directories of any origin, grouped by the ``name`` in their resolved ``config.toml``."""
    recipes: dict[str, Recipe] = {}
    results: dict[str, list[RunResult]] = {}
    for d in dirs:
        cfg = load_config(Path(d) / "config.toml")
        if cfg.name not in recipes:
            recipes[cfg.name] = Recipe(cfg.name, None, cfg, env_steps_per_learner_step(cfg))
        results.setdefault(cfg.name, []).append(
            read_run(
                Path(d),
                cfg.seed,
                recipes[cfg.name].env_steps_per_learner_step,
                recipes[cfg.name].env_steps_per_group,
            )
        )
    return list(recipes.values()), results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=[], help="recipe TOML files (two or more)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps", type=int, help="learner steps per run (default: each recipe's learner.steps)"
    )
    budget.add_argument("--env-steps", type=int, help="nominal environment-step budget per run (see above)")
    ap.add_argument("--out", default="docs/results/comparison", help="output directory")
    ap.add_argument(
        "--extra", default="", help='overrides for every run and the warm start, e.g. "--eval.episodes 64"'
    )
    ap.add_argument(
        "--jobs", type=int, default=1, help="runs in parallel (each is a learner + worker processes)"
    )
    ap.add_argument(
        "--sft",
        action="store_true",
        help="one shared SFT warm start in OUT/sft, the initial policy of all runs",
    )
    ap.add_argument("--model", help="initial policy of all runs (model.path), e.g. an existing SFT directory")
    ap.add_argument("--reuse", action="store_true", help="report on OUT/runs as they are; never train")
    ap.add_argument("--run-dirs", nargs="+", default=[], help="report on these run directories; never train")
    ap.add_argument(
        "--smooth", type=int, default=5, help="moving-average window of the curves, in learner steps"
    )
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    if not args.run_dirs and len(args.recipes) < 1:
        ap.error("give --recipes (or --run-dirs)")
    if args.sft and args.model:
        ap.error("--sft and --model both set the initial policy; give one")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    extra = shlex.split(args.extra)
    notes: list[str] = []
    failed: dict[tuple[str, int], str] = {}
    if args.run_dirs:
        recipes, results = recipes_from_run_dirs(args.run_dirs)
    else:
        recipes = load_recipes(args.recipes, extra)
        notes += plan_budget(recipes, args.steps, args.env_steps)
        for n in notes:
            print(f"warning: {n}", file=sys.stderr)
        if not args.reuse:
            model = args.model
            if not args.dry_run:
                check_models(recipes, model)
            if args.sft:
                starts = {
                    (r.cfg.env.name, json.dumps(r.cfg.env.params, sort_keys=True), r.cfg.model.path)
                    for r in recipes
                }
                if len(starts) > 1:
                    raise SystemExit(f"--sft: the recipes differ in environment or model: {sorted(starts)}")
                model = str(out / "sft") if args.dry_run else warm_start(recipes[0], out, extra)
            failed = train_all(recipes, args.seeds, out, model, extra, args.jobs, args.dry_run)
            if args.dry_run:
                return 0
        results = {
            r.label: [
                read_run(
                    out / "runs" / r.label / f"seed{s}",
                    s,
                    r.env_steps_per_learner_step,
                    r.env_steps_per_group,
                )
                for s in args.seeds
            ]
            for r in recipes
        }
    for (label, seed), err in failed.items():
        for res in results.get(label, []):
            if res.seed == seed:
                res.error = err
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(recipes, results)
    table = markdown_table(rows, notes)
    (out / "table.md").write_text(table)
    (out / "summary.json").write_text(json.dumps(rows, indent=1, default=str))
    env = recipes[0].cfg.env.name if recipes else "?"
    plot_curves(
        results, out / "success.png", max(1, args.smooth), f"{env}: rollout success (mean ± std over seeds)"
    )
    print(table)
    print(f"wrote {out / 'table.md'}, {out / 'success.png'}, {out / 'summary.json'}")
    return 1 if failed or any(x.error for runs in results.values() for x in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
