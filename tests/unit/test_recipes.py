"""The recipe grid under configs/{cpu,paper}/<env>/: every variant sets what its name says, and two variants of an
environment differ only in the algorithm switches that tell them apart (so a comparison is controlled).
Also the pure parts of tools/compare_recipes.py (budget, metrics reading, summary)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from spear_stream.algo.schedules import schedule_value
from spear_stream.config import Config, load_config, to_dict

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
VARIANTS = (
    "grpo",
    "drbot_grpo",
    "grpo_spear",
    "drbot_grpo_spear",
    "gigpo",
    "drbot_gigpo",
    "gigpo_spear",
    "drbot_gigpo_spear",
)
ENV_DIRS = sorted(p.parent for p in CONFIGS.glob("*/*/base.toml"))
RECIPES = [d / f"{v}.toml" for d in ENV_DIRS for v in VARIANTS]
MATH_ENVS = ("math_code",)


def _id(path: Path) -> str:
    return "/".join(path.relative_to(CONFIGS).with_suffix("").parts)


def _load(path: Path) -> Config:
    return load_config(path)


def _flat(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and k != "params":
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(to_dict(cfg), "")
    return out


def _diff(a: Config, b: Config) -> set[str]:
    fa, fb = _flat(a), _flat(b)
    return {k for k in fa if fa[k] != fb[k]} - {"name"}


# ------------------------------------------------------------------------------------------------ the grid


def test_grid_is_complete():
    groups = {d.parent.name for d in ENV_DIRS}
    assert groups == {"cpu", "paper"}
    cpu = {d.name for d in ENV_DIRS if d.parent.name == "cpu"}
    paper = {d.name for d in ENV_DIRS if d.parent.name == "paper"}
    assert {"guess_number", "calculator", "minihouse"} <= cpu
    assert {"alfworld", "webshop", "math"} <= paper
    for d in ENV_DIRS:
        missing = [v for v in VARIANTS if not (d / f"{v}.toml").exists()]
        assert not missing, f"{d} lacks {missing}"


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_recipe_sets_what_its_name_says(path: Path):
    cfg = _load(path)
    group, env_dir, variant = path.parent.parent.name, path.parent.name, path.stem
    assert cfg.name == f"{group}-{env_dir}-{variant}"
    drbot, spear, gigpo = variant.startswith("drbot_"), variant.endswith("_spear"), "gigpo" in variant
    _check_estimator(cfg, gigpo, drbot)
    _check_drbot(cfg, drbot, paper=group == "paper")
    _check_spear(cfg, spear, drbot, group)


def _check_estimator(cfg: Config, gigpo: bool, drbot: bool) -> None:
    adv = cfg.algo.advantage
    if gigpo:
        assert adv.estimator == "gigpo"
        assert (adv.gigpo_gamma, adv.gigpo_omega) == (0.95, 1.0)
        assert adv.gigpo_mode == ("mean_norm" if drbot else "mean_std_norm")
    else:
        assert adv.estimator == "grpo"


def _check_drbot(cfg: Config, drbot: bool, paper: bool) -> None:
    adv, loss, f = cfg.algo.advantage, cfg.algo.loss, cfg.algo.filters
    filters = (f.overlong, f.incomplete, f.repetitive, f.unreadable)
    if drbot:
        assert adv.std_norm is False and loss.kl_coef == 0.0
        assert (loss.clip_low, loss.clip_high, loss.dual_clip) == (0.2, 0.28, 10.0)
        assert loss.aggregation == "seq-mean-token-sum-norm" and loss.norm_len > 0
        assert all(filters) and f.group_keep_ratio == 0.75
    else:
        assert adv.std_norm is True
        # verl-agent's GRPO/GiGPO baselines keep a KL to the initial policy (not wired in the learner yet).
        assert loss.kl_coef == (0.01 if paper else 0.0)
        assert (loss.clip_low, loss.clip_high, loss.dual_clip) == (0.2, 0.2, 0.0)
        assert loss.aggregation == "token-mean"
        assert not any(filters) and f.group_keep_ratio == 1.0


def _check_spear(cfg: Config, spear: bool, drbot: bool, group: str) -> None:
    sil, cur, loss = cfg.sil, cfg.curriculum, cfg.algo.loss
    math_env = cfg.env.name in MATH_ENVS
    if not spear:
        assert not sil.enabled and loss.cov.mode == "none" and loss.entropy_coef == 0.0
        assert all(schedule_value(cur.mu, t) == 0.0 for t in (0, 50, 500))  # no tool-call bonus
        return
    assert sil.enabled and sil.mode == ("paper" if group == "paper" else "stream")
    t_mu = 200 if group == "paper" else 100
    t_gamma = 300 if math_env and group == "paper" else t_mu  # CPU: one horizon, scaled to the short runs
    assert (cur.mu.kind, cur.mu.start, cur.mu.end, cur.mu.horizon) == ("cosine_down", 1.0, 0.0, t_mu)
    gamma = (cur.gamma.kind, cur.gamma.start, cur.gamma.end, cur.gamma.horizon)
    assert gamma == ("cosine_up", 0.0, 1.0, t_gamma)
    assert (loss.cov.mode, loss.cov.ratio, loss.cov.lb, loss.cov.ub) == ("clip_cov", 2e-4, 1.0, 5.0)
    assert (sil.cov.mode, sil.cov.ratio, sil.cov.lb, sil.cov.ub) == ("clip_cov", 0.02, 2.0, 60.0)
    assert (sil.capacity, sil.baseline_size, sil.tolerate_steps) == (2048, 10240, 5)
    assert loss.entropy_coef == (0.0 if math_env else 0.001)
    assert sil.require_tool_call is math_env and sil.replay_strict is math_env
    # The replay's A_tilde is normalised like the on-policy advantages: by the std unless Dr.BoT removed it.
    assert sil.recalibrate_std is (not drbot)


# ------------------------------------------------------------------------------------------------ controlled


ALGO_PREFIXES = ("algo.advantage.", "algo.loss.", "algo.filters.", "sil.", "curriculum.mu.", "curriculum.gamma.",
                 "curriculum.sil_fraction.")  # fmt: skip
SPEAR_KEYS = {"algo.loss.entropy_coef", "algo.loss.cov.mode", "algo.loss.cov.ratio", "algo.loss.cov.lb",
              "algo.loss.cov.ub"}  # fmt: skip
SPEAR_PREFIXES = ("sil.", "curriculum.mu.", "curriculum.gamma.", "curriculum.sil_fraction.")
DRBOT_KEYS = {"algo.advantage.std_norm", "algo.loss.kl_coef", "algo.loss.clip_low", "algo.loss.clip_high",
              "algo.loss.dual_clip", "algo.loss.aggregation", "algo.filters.overlong", "algo.filters.incomplete",
              "algo.filters.repetitive", "algo.filters.unreadable", "algo.filters.group_keep_ratio",
              "algo.advantage.gigpo_mode", "sil.recalibrate_std"}  # fmt: skip
GIGPO_KEYS = {"algo.advantage.estimator", "algo.advantage.gigpo_gamma", "algo.advantage.gigpo_omega",
              "algo.advantage.gigpo_mode"}  # fmt: skip


@pytest.mark.parametrize("env_dir", ENV_DIRS, ids=lambda d: f"{d.parent.name}/{d.name}")
def test_variants_share_everything_but_the_algorithm(env_dir: Path):
    base = _load(env_dir / "grpo.toml")
    for v in VARIANTS[1:]:
        extra = {k for k in _diff(_load(env_dir / f"{v}.toml"), base) if not k.startswith(ALGO_PREFIXES)}
        assert not extra, f"{v} differs from grpo outside the algorithm: {sorted(extra)}"


def _pairs(suffix_from: str, suffix_to: str) -> list[tuple[Path, Path]]:
    out = []
    for d in ENV_DIRS:
        for v in VARIANTS:
            w = v.replace(suffix_from, suffix_to, 1) if suffix_from else suffix_to + v
            if w != v and w in VARIANTS:
                out.append((d / f"{v}.toml", d / f"{w}.toml"))
    return out


@pytest.mark.parametrize("base,spear", [(b, b.with_name(b.stem + "_spear.toml")) for b in RECIPES
                                        if not b.stem.endswith("_spear")], ids=lambda p: _id(p))  # fmt: skip
def test_spear_adds_only_spear_switches(base: Path, spear: Path):
    diff = _diff(_load(spear), _load(base))
    assert diff and all(k in SPEAR_KEYS or k.startswith(SPEAR_PREFIXES) for k in diff), sorted(diff)


@pytest.mark.parametrize("plain,drbot", _pairs("", "drbot_"), ids=lambda p: _id(p))
def test_drbot_adds_only_drbot_switches(plain: Path, drbot: Path):
    diff = _diff(_load(drbot), _load(plain))
    assert diff and diff <= DRBOT_KEYS, sorted(diff - DRBOT_KEYS)


@pytest.mark.parametrize("grpo,gigpo", _pairs("grpo", "gigpo"), ids=lambda p: _id(p))
def test_gigpo_changes_only_the_estimator(grpo: Path, gigpo: Path):
    diff = _diff(_load(gigpo), _load(grpo))
    assert diff and diff <= GIGPO_KEYS, sorted(diff - GIGPO_KEYS)


# ------------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("env_dir", [d for d in ENV_DIRS if d.parent.name == "paper"], ids=lambda d: d.name)
def test_paper_settings_follow_algorithm_md_section_8(env_dir: Path):
    cfg = _load(env_dir / "drbot_grpo_spear.toml")
    assert cfg.rollout.engine == "sglang" and cfg.rollout.temperature == 1.0
    assert cfg.learner.lr == 1e-6 and cfg.model.dtype == "bfloat16"
    if cfg.env.name in MATH_ENVS:
        assert (cfg.env.groups_per_step, cfg.env.group_size) == (128, 16)
        assert cfg.env.params["max_turns"] == 8 and cfg.rollout.max_seq_len == 2048 + 16384
        variant = "correct_only" if env_dir.name == "math_qwen3" else "episode"
        assert cfg.algo.reward.tool_reward_variant == variant
        assert (cfg.eval.temperature, cfg.eval.top_p, cfg.eval.episodes) == (1.0, 0.6, 960)  # avg@32 on AIME
    else:
        assert (cfg.env.groups_per_step, cfg.env.group_size) == (32, 8)
        assert cfg.rollout.max_new_tokens == 512 and cfg.eval.temperature == 0.4
        steps, max_steps = {"alfworld": (200, 50), "webshop": (350, 15)}[cfg.env.name]
        assert cfg.learner.steps == steps and cfg.env.params["max_steps"] == max_steps


@pytest.mark.parametrize("env_dir", [d for d in ENV_DIRS if d.parent.name == "cpu"], ids=lambda d: d.name)
def test_cpu_recipes_are_small(env_dir: Path):
    cfg = _load(env_dir / "drbot_gigpo_spear.toml")
    assert cfg.rollout.engine == "hf" and cfg.model.path.startswith("runs/models/tiny")
    assert cfg.learner.steps <= 300 and cfg.env.groups_per_step * cfg.env.group_size <= 128
    assert cfg.learner.lr == 1e-4


# ------------------------------------------------------------------------------------------------ compare tool


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_recipes", ROOT / "tools" / "compare_recipes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_budget_is_billed_at_the_turn_cap(compare):
    cfg = _load(CONFIGS / "cpu" / "guess_number" / "grpo.toml")
    assert compare.turn_cap(cfg) == math.ceil(math.log2(15 + 1)) + 1  # N = 15: 5 turns
    per_step = compare.env_steps_per_learner_step(cfg)
    assert per_step == 16 * 8 * 5
    per_group = 8 * 5
    assert compare.groups_for_budget(10 * per_group + 1, per_group) == 10
    assert compare.groups_for_budget(1, per_group) == 1


def test_equal_env_step_budget_across_batch_geometries(compare):
    a = compare.Recipe("a", None, load_config(None, ["--env.groups_per_step", "16"]), 0)
    b = compare.Recipe("b", None, load_config(None, ["--env.groups_per_step", "8"]), 0)
    for r in (a, b):
        r.env_steps_per_learner_step = compare.env_steps_per_learner_step(r.cfg)
    assert compare.plan_budget([a, b], None, 100 * a.env_steps_per_learner_step) == []
    # the same fresh-group budget (1600 groups), whatever the groups per step; steps are only an upper bound
    assert (a.max_groups, b.max_groups) == (1600, 1600)
    a.path = Path("a.toml")
    cmd = compare.train_command(a, 0, Path("run"), None, [])
    assert cmd[cmd.index("--learner.max_groups") + 1] == "1600"
    assert compare.plan_budget([a, b], 10, None)  # equal learner steps, unequal budgets: a warning


def _write_run(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_reads_runs_and_reports_the_spear_overhead(compare, tmp_path: Path):
    def run(label: str, seed: int, success: float, learn_s: float) -> None:
        # the SPEAR recipe trains fewer fresh groups per step (a fixed-size batch shared with replay)
        groups = 12 if label.endswith("_spear") else 16
        rows = [{"step": t, "rollout/success_rate": success, "time/step_s": learn_s + 1.0, "time/wait_s": 1.0,
                 "learner/fresh_groups": groups} for t in range(1, 8)]  # fmt: skip
        rows.append({"step": 7, "eval/before/sampled": 0.1, "eval/after/sampled": success})
        _write_run(tmp_path / label / f"seed{seed}", rows)

    for seed, s in ((0, 0.5), (1, 0.7)):
        run("x-grpo", seed, s, 2.0)
        run("x-grpo_spear", seed, s + 0.1, 2.5)
    cfg = load_config(None)
    recipes = [compare.Recipe(label, None, cfg, 640) for label in ("x-grpo", "x-grpo_spear")]
    results = {r.label: [compare.read_run(tmp_path / r.label / f"seed{s}", s, 640, 40) for s in (0, 1)]
               for r in recipes}  # fmt: skip
    rows = compare.summarise(recipes, results)
    assert rows[0]["learner_s_per_step"] == pytest.approx(2.0)
    assert rows[1]["learner_ratio"] == pytest.approx(1.25) and rows[1]["baseline"] == "x-grpo"
    assert rows[1]["learner_s_total"] == pytest.approx(7 * 2.5) and rows[1][
        "learner_total_ratio"
    ] == pytest.approx(1.25)
    assert rows[1]["eval_after"] == pytest.approx([0.6, 0.8]) and rows[0]["env_steps_nominal"] == 7 * 640
    assert rows[1]["env_steps_nominal"] == 7 * 12 * 40  # billed by the fresh groups actually trained on
    table = compare.markdown_table(rows, [])
    assert "60.0 ± 14.1%" in table and "70.0 ± 14.1%" in table and "1.25x x-grpo" in table
    assert "| 18 | 1.25x |" in table  # 17.5 s of learner time in all, rounded
    compare.plot_curves(results, tmp_path / "success.png", 3, "test")
    assert (tmp_path / "success.png").stat().st_size > 0


def test_smooth_is_a_trailing_mean(compare):
    assert compare.smooth([0.0, 1.0, 2.0, 3.0], 2) == [0.0, 0.5, 1.5, 2.5]
