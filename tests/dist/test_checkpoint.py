"""Checkpoint/resume: a resumed run ends where an uninterrupted one does; extra state and RNG round-trip;
incomplete checkpoints are never picked."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from spear_stream.learner.checkpoint import (
    COMPLETE_MARKER,
    checkpoint_path,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)

from . import helpers

EXTRA_AT_2 = {
    "learner": {"step": 2, "policy_version": 102},
    "curriculum": {"mu": 0.5, "history": [1, 2, 3]},
    "replay": {"sizes": torch.arange(4)},
}


# ---------------------------------------------------------------------------------------------------------
# Directory protocol (no processes)
# ---------------------------------------------------------------------------------------------------------


def _fake_checkpoint(run_dir: Path, step: int, complete: bool) -> Path:
    path = checkpoint_path(run_dir, step)
    path.mkdir(parents=True)
    (path / "__0_0.distcp").write_bytes(b"partial")
    if complete:
        (path / COMPLETE_MARKER).write_text("{}")
    return path


def test_latest_checkpoint_skips_half_written(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    good = _fake_checkpoint(tmp_path, 2, complete=True)
    assert latest_checkpoint(tmp_path) == good  # no pointer: highest complete step
    _fake_checkpoint(tmp_path, 6, complete=False)  # crashed before the marker
    tmp = good.parent / ".step_00000004.tmp"  # an interrupted save in progress
    tmp.mkdir()
    (tmp / COMPLETE_MARKER).write_text("{}")  # even with a marker, a .tmp directory is never a checkpoint
    assert latest_checkpoint(tmp_path) == good
    (good.parent / "latest").write_text("step_00000006")  # pointer to an incomplete one: fall back
    assert latest_checkpoint(tmp_path) == good
    newer = _fake_checkpoint(tmp_path, 8, complete=True)
    (good.parent / "latest").write_text("step_00000002")  # the pointer wins over a higher step
    assert latest_checkpoint(tmp_path) == good
    (good.parent / "latest").write_text(newer.name)
    assert latest_checkpoint(tmp_path) == newer
    assert complete_checkpoints(tmp_path) == [good, newer]
    assert prune_checkpoints(tmp_path, keep_last=1) == [good]
    assert complete_checkpoints(tmp_path) == [newer]


def test_save_load_in_one_process_round_trips_everything(tiny_model_dir, tmp_path):
    """No process group: the same functions work for a plain single-process model."""
    from spear_stream.models import load_model

    with torch.random.fork_rng():
        model = load_model(tiny_model_dir)
        optimizer = helpers.make_optimizer(model)
        helpers.train_steps(model, optimizer, 0, 1)
        random.seed(7)
        np.random.seed(7)
        torch.manual_seed(7)
        path = save_checkpoint(checkpoint_path(tmp_path, 1), model, optimizer, EXTRA_AT_2)
        expected_draws = (random.random(), float(np.random.rand()), float(torch.rand(())))
        assert latest_checkpoint(tmp_path) == path
        assert not list(path.parent.glob(".*.tmp"))

        fresh = load_model(tiny_model_dir)
        fresh_opt = helpers.make_optimizer(fresh)
        extra = load_checkpoint(path, fresh, fresh_opt)
        assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected_draws
    assert extra.keys() == EXTRA_AT_2.keys()
    assert extra["learner"] == EXTRA_AT_2["learner"] and extra["curriculum"] == EXTRA_AT_2["curriculum"]
    assert torch.equal(extra["replay"]["sizes"], EXTRA_AT_2["replay"]["sizes"])
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight  # loading kept the tie
    saved, loaded = optimizer.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert saved.keys() == loaded.keys()
    for key in saved:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(saved[key][name], loaded[key][name])
    model_only = load_model(tiny_model_dir)  # e.g. evaluation or export: no optimizer
    load_checkpoint(path, model_only, restore_rng=False)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model_only.parameters(), strict=True))
    # Saving again at the same step replaces the checkpoint atomically.
    assert save_checkpoint(path, model, optimizer, {"learner": {"step": 1}}) == path
    assert load_checkpoint(path, fresh, fresh_opt)["learner"] == {"step": 1}


def test_tensordicts_in_extra_get_files_of_their_own(tmp_path):
    """Bulk state (replay rows) is memory-mapped beside extra.pt, not pickled into it, and comes back in RAM."""
    from tensordict import TensorDict

    model = torch.nn.Linear(2, 2)
    rows = TensorDict({"tokens": torch.arange(40_000).reshape(100, 400)}, batch_size=[100])
    extra = {"step": 3, "replay": {"fresh": {"rows": rows, "group_sizes": [50, 50]}, "sil": None}}
    path = save_checkpoint(checkpoint_path(tmp_path, 3), model, None, extra, save_rng=False)
    assert (path / "extra.pt").stat().st_size < 4096  # 320 kB of tokens live elsewhere
    assert (path / "tensordicts" / "replay.fresh.rows").is_dir()
    loaded = load_checkpoint(path, torch.nn.Linear(2, 2), restore_rng=False)
    assert (
        loaded["step"] == 3
        and loaded["replay"]["sil"] is None
        and loaded["replay"]["fresh"]["group_sizes"] == [50, 50]
    )
    back = loaded["replay"]["fresh"]["rows"]
    assert torch.equal(back["tokens"], rows["tokens"]) and not back.is_memmap()  # a RAM copy: pruning is safe


# ---------------------------------------------------------------------------------------------------------
# Resume across processes (world size 1 and 2), and with a different world size
# ---------------------------------------------------------------------------------------------------------


def _run(model_dir: Path, out: Path, nproc: int, run_dir: Path, *, resume: bool) -> dict:
    args = ["--model", str(model_dir), "--out", str(out), "--steps", "4", "--run-dir", str(run_dir)]
    args += ["--resume"] if resume else ["--save-at", "2"]
    helpers.launch(args, nproc=nproc, log_dir=out.parent / f"{out.name}_log")
    return json.loads((out / "history.json").read_text())


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _check_resumed(straight: Path, resumed: Path, tolerance: float) -> None:
    assert _max_abs_diff(torch.load(straight / "params.pt"), torch.load(resumed / "params.pt")) <= tolerance
    extra = torch.load(resumed / "extra.pt", weights_only=False)
    assert extra["learner"] == EXTRA_AT_2["learner"] and extra["curriculum"] == EXTRA_AT_2["curriculum"]
    assert torch.equal(extra["replay"]["sizes"], EXTRA_AT_2["replay"]["sizes"])


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2])
def test_resumed_run_matches_uninterrupted(tiny_model_dir, tmp_path, world_size):
    run_dir = tmp_path / "run"
    straight = _run(tiny_model_dir, tmp_path / "straight", world_size, run_dir, resume=False)
    assert latest_checkpoint(run_dir) == checkpoint_path(run_dir, 2)
    assert json.loads((checkpoint_path(run_dir, 2) / COMPLETE_MARKER).read_text())["world_size"] == world_size
    resumed = _run(tiny_model_dir, tmp_path / "resumed", world_size, run_dir, resume=True)
    assert resumed["world_size"] == world_size and len(resumed["history"]) == 2
    # Same advantages drawn after resume (RNG restored) and the same losses as the uninterrupted run.
    assert resumed["history"] == straight["history"][2:]
    _check_resumed(tmp_path / "straight", tmp_path / "resumed", tolerance=1e-6)


@pytest.mark.dist
@pytest.mark.slow
def test_two_rank_checkpoint_resumes_on_one_rank(tiny_model_dir, tmp_path):
    """DCP reshards on load: saved by 2 ranks, continued by 1 (fp32 sums in another order: 1e-5)."""
    run_dir = tmp_path / "run"
    _run(tiny_model_dir, tmp_path / "straight", 2, run_dir, resume=False)
    _run(tiny_model_dir, tmp_path / "resumed", 1, run_dir, resume=True)
    _check_resumed(tmp_path / "straight", tmp_path / "resumed", tolerance=1e-5)
