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
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from spear_stream.config import Config, load_config
from spear_stream.inspect.compare_report import (
    FRESH_GROUPS,
    RunResult,
    markdown_table,
    plot_curves,
    read_run,
    summarise,
)
from spear_stream.inspect.compare_report import smooth as smooth  # re-exported for tests/unit/test_recipes.py
from spear_stream.metrics import read_metrics


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
