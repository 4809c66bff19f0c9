"""End-to-end streaming runs on the tiny model: learner + worker processes, async/sync, faults, resume, 2 ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spear_stream.metrics import read_metrics

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _train_cmd(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "spear_stream.cli.main",
        "train",
        "--config",
        str(ROOT / "configs/tiny_guess.toml"),
        "--model.path",
        str(model_dir),
        "--run_dir",
        str(run_dir),
        "--eval.episodes",
        "0",
        "--log.progress",
        "false",
        "--env.groups_per_step",
        "4",
        "--env.group_size",
        "4",
        "--rollout.batch_size",
        "32",
        "--sync.timeout_s",
        "60",
        *extra,
    ]


def _run(cmd: list[str], timeout: float = 400) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # only the process group this test started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_async_run_trains_within_staleness_bound(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    result = _run(
        _train_cmd(
            tiny_model_dir,
            run,
            "--learner.steps",
            "6",
            "--curriculum.max_staleness",
            '{"kind": "constant", "start": 1, "end": 1}',
        )
    )
    assert result.returncode == 0, result.stdout[-3000:]
    metrics = [m for m in read_metrics(run) if "staleness/max" in m]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    # rows older than max_staleness versions are never trained on (oldest token_version of each trained row)
    assert max(m["staleness/max"] for m in metrics) <= 1
    assert metrics[-1]["learner/version"] == 6
    assert (run / "final" / "model.safetensors").exists()
    assert json.loads((run / "summary.json").read_text())["version"] == 6
    assert not list((run / "logs").glob("*.log")) or "Traceback" not in "".join(
        p.read_text() for p in (run / "logs").glob("*.log")
    )


def test_sync_mode_is_on_policy(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    result = _run(_train_cmd(tiny_model_dir, run, "--learner.steps", "4", "--sync.mode", "sync"))
    assert result.returncode == 0, result.stdout[-3000:]
    metrics = [m for m in read_metrics(run) if "staleness/max" in m]
    assert len(metrics) == 4 and all(m["staleness/max"] == 0 for m in metrics)


def test_two_fsdp_ranks_plus_worker(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    result = _run(_train_cmd(tiny_model_dir, run, "--learner.steps", "3", "--learner.world_size", "2"))
    assert result.returncode == 0, result.stdout[-3000:]
    assert [m["step"] for m in read_metrics(run) if "loss/policy" in m] == [1, 2, 3]
    assert (run / "final" / "model.safetensors").exists()


def test_killed_worker_is_replaced_and_accepted_groups_kept(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    cmd = _train_cmd(tiny_model_dir, run, "--learner.steps", "14")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len([m for m in read_metrics(run) if "loss/policy" in m]) < 3:
            time.sleep(0.5)
        before = [m for m in read_metrics(run) if "loss/policy" in m]
        assert len(before) >= 3, "learner made no progress"
        workers = [
            p for p in _children_of(proc.pid) if "rollout.main" in Path(f"/proc/{p}/cmdline").read_text()
        ]
        assert workers, "no worker process found"
        accepted_before = before[-1]["rollout/groups_received"]
        os.kill(workers[0], signal.SIGKILL)
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    metrics = [m for m in read_metrics(run) if "loss/policy" in m]
    assert metrics[-1]["step"] == 14  # the learner kept training
    assert metrics[-1]["rollout/worker_restarts"] >= 1  # a replacement worker was started
    # groups accepted before the kill were trained on, not lost: consumption only grows
    assert metrics[-1]["replay/consumed_groups"] >= accepted_before


SIL_ON = [
    "--sil.enabled",
    "true",
    "--curriculum.gamma",
    '{"kind": "constant", "start": 1, "end": 1}',
    "--curriculum.sil_fraction",
    '{"kind": "constant", "start": 0.25, "end": 0.25}',
]


def test_stream_sil_batches_mix_the_configured_fraction(demo_like_model_dir, tmp_path):
    run = tmp_path / "run"
    result = _run(
        _train_cmd(demo_like_model_dir, run, "--learner.steps", "5", *SIL_ON, "--sil.stream_batch", "extra")
    )
    assert result.returncode == 0, result.stdout[-3000:]
    metrics = [m for m in read_metrics(run) if "loss/policy" in m]
    mixed = [m for m in metrics if m.get("replay/sil_rows_in_batch", 0) > 0]
    assert mixed, "no batch drew from the SIL buffer"
    for m in mixed:
        # 16 fresh rows and sil_fraction 0.25: round(0.25 * 16 / 0.75) = 5 replay rows, 5 / 21 of the batch
        assert m["replay/sil_rows_in_batch"] == 5
        assert abs(m["replay/sil_batch_fraction"] - 0.25) < 0.02
        assert "loss_sil/policy" in m and m["curriculum/gamma"] == 1.0


def test_fixed_stream_batches_keep_their_size_and_a_group_budget_stops_training(
    demo_like_model_dir, tmp_path
):
    run = tmp_path / "run"
    budget = ["--learner.steps", "50", "--learner.max_groups", "13"]
    result = _run(_train_cmd(demo_like_model_dir, run, *budget, *SIL_ON, "--sil.stream_batch", "fixed"))
    assert result.returncode == 0, result.stdout[-3000:]
    metrics = [m for m in read_metrics(run) if "loss/policy" in m]
    mixed = [m for m in metrics if m.get("replay/sil_rows_in_batch", 0) > 0]
    assert mixed, "no batch drew from the SIL buffer"
    for m in mixed[:-1]:  # (the last step may be cut short by the budget)
        # 4 groups of 4 per step, sil_fraction 0.25: 1 group's worth (4 rows) replayed, 3 fresh groups
        assert m["replay/fresh_groups_in_batch"] == 3 and m["replay/sil_rows_in_batch"] == 4
        assert m["replay/sil_batch_fraction"] == 0.25
    # the budget: exactly 13 fresh groups, however many learner steps that took
    assert metrics[-1]["replay/fresh_groups_trained"] == 13
    assert sum(m["learner/fresh_groups"] for m in metrics) == 13
    assert len(metrics) < 50 and (run / "final" / "model.safetensors").exists()


def test_resume_continues_step_version_and_parameters(demo_like_model_dir, tmp_path):
    from spear_stream.replay.sil import read_sil_meta

    run = tmp_path / "run"
    first = _run(_train_cmd(demo_like_model_dir, run, "--learner.steps", "3", *SIL_ON))
    assert first.returncode == 0, first.stdout[-3000:]
    from safetensors.torch import load_file

    saved = load_file(run / "final" / "model.safetensors")
    sil_before = read_sil_meta(run / "replay")
    # Resume for 0 more steps: the restored parameters must equal the saved ones exactly.
    again = _run(
        [
            sys.executable,
            "-m",
            "spear_stream.cli.main",
            "train",
            "--resume",
            str(run),
            "--learner.steps",
            "3",
            "--eval.episodes",
            "0",
        ]
    )
    assert again.returncode == 0, again.stdout[-3000:]
    assert "resumed from" in again.stdout and "step 3, policy version 3" in again.stdout
    restored = load_file(run / "final" / "model.safetensors")
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    # the SIL buffer, its baseline FIFO and the learner step it has seen come back from the checkpoint
    sil_after = read_sil_meta(run / "replay")
    assert sil_before is not None and sil_after is not None and sil_before["len"] > 0
    for key in ("len", "baseline_len", "p50", "step"):
        assert sil_after[key] == sil_before[key], key
    assert [e[:3] for e in sil_after["live"]] == [e[:3] for e in sil_before["live"]]
    more = _run(
        [
            sys.executable,
            "-m",
            "spear_stream.cli.main",
            "train",
            "--resume",
            str(run),
            "--learner.steps",
            "5",
            "--eval.episodes",
            "0",
        ]
    )
    assert more.returncode == 0, more.stdout[-3000:]
    steps = [m["step"] for m in read_metrics(run) if "loss/policy" in m]
    assert steps == [1, 2, 3, 4, 5]
    assert json.loads((run / "summary.json").read_text())["version"] == 5
