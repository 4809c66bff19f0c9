"""A run that is stopped and resumed, and one whose workers keep dying: every accepted group is accounted for.

Accounting, at every logged step: ``transport/accepted_groups`` (what the receiver accepted) equals what the
replay took in (``replay/added_groups`` + ``replay/refused_groups``), and that equals what was trained
(``replay/consumed_groups``) + dropped (``replay/dropped_*_groups``) + still buffered (``replay/fresh_groups``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_pipeline import ROOT, _children_of, _run, _train_cmd

from spear_stream.learner import checkpoint as ckpt
from spear_stream.metrics import read_metrics

pytestmark = pytest.mark.slow


def step_lines(run) -> list[dict]:
    return [m for m in read_metrics(run) if "loss/policy" in m]


def assert_every_accepted_group_is_accounted_for(m: dict) -> None:
    dropped = sum(v for k, v in m.items() if k.startswith("replay/dropped_") and k.endswith("_groups"))
    assert m["transport/accepted_groups"] == m["replay/added_groups"] + m.get("replay/refused_groups", 0)
    assert m["replay/added_groups"] == m["replay/consumed_groups"] + dropped + m["replay/fresh_groups"]
    assert m.get("transport/rejected/no_credit", 0) == 0  # nothing a worker delivered was refused


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def wait_for_steps(proc: subprocess.Popen, run, n: int, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while len(step_lines(run)) < n:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, "the learner made no progress"
        time.sleep(0.2)


def finish(proc: subprocess.Popen, timeout_s: float = 400) -> str:
    try:
        return proc.communicate(timeout=timeout_s)[0]
    finally:
        if proc.poll() is None:  # only the process group this test started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize(
    ("signum", "ranks"),
    [(signal.SIGTERM, "1"), (signal.SIGINT, "2")],  # a scheduler's preemption; Ctrl-C through torchrun
    ids=["sigterm-1-rank", "ctrl-c-2-ranks"],
)
def test_a_stop_saves_a_checkpoint_and_resume_trains_each_step_once(tiny_model_dir, tmp_path, signum, ranks):
    run = tmp_path / "run"
    budget = ["--learner.steps", "8", "--learner.max_groups", "30", "--learner.world_size", ranks]
    proc = start(_train_cmd(tiny_model_dir, run, *budget))  # 7 steps of 4 groups, then 2
    wait_for_steps(proc, run, 3)
    os.kill(proc.pid, signum)  # the command the user started, alone
    out = finish(proc)
    if ranks == "1":
        assert proc.returncode == 128 + signum, out[-3000:]
    else:  # torchrun reports its own code for a signalled job; the ranks exited after their checkpoint
        assert proc.returncode != 0 and "stopped at step" in out, out[-3000:]
    assert "stopped at step" in out and not (run / "summary.json").exists()
    stopped_at = len(step_lines(run))
    assert 3 <= stopped_at < 8
    latest = ckpt.latest_checkpoint(run)  # checkpoint.every = 0: the stop wrote the only checkpoint
    assert latest == ckpt.checkpoint_path(run, stopped_at)
    assert_every_accepted_group_is_accounted_for(step_lines(run)[-1])
    groups_at_stop = step_lines(run)[-1]["rollout/groups_received"]

    # a crash after the checkpoint (lines of later steps already written) must not duplicate steps either
    with (run / "metrics.jsonl").open("a") as f:
        f.write(f'{{"step": {stopped_at + 1}, "loss/policy": 0.0}}\n{{"step": {stopped_at + 2}, "loss/pol')
    resumed = _run([*_train_cmd(tiny_model_dir, run, *budget), "--resume", str(run)])
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"step {stopped_at}, policy version {stopped_at}" in resumed.stdout
    lines = step_lines(run)
    assert [m["step"] for m in lines] == list(range(1, 9))  # each step once
    # exactly the budget, as an uninterrupted run trains (see test_pipeline's budget test): 7 x 4 + 2
    assert lines[-1]["replay/fresh_groups_trained"] == 30
    assert sum(m["learner/fresh_groups"] for m in lines) == 30
    assert_every_accepted_group_is_accounted_for(lines[-1])
    # rates cover the resumed segment: the trajectories received since the resume, over a clock started before
    # its first step (restored counts over a restarted clock would read several times higher)
    first, last = lines[stopped_at], lines[-1]
    since_resume = 4 * (last["rollout/groups_received"] - groups_at_stop)  # groups of 4 trajectories
    assert 0 < last["rollout/trajectories_per_s"] <= 1.05 * since_resume / (last["time"] - first["time"])


def test_three_worker_sigkills_lose_no_accepted_group(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    proc = start(_train_cmd(tiny_model_dir, run, "--learner.steps", "14", "--rollout.num_workers", "2"))
    try:
        for kill, after_step in enumerate((3, 6, 9)):
            wait_for_steps(proc, run, after_step)
            workers = [
                p for p in _children_of(proc.pid) if "rollout.main" in Path(f"/proc/{p}/cmdline").read_text()
            ]
            assert workers, "no worker process found"
            os.kill(sorted(workers)[kill % len(workers)], signal.SIGKILL)
    finally:
        out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    lines = step_lines(run)
    assert [m["step"] for m in lines] == list(range(1, 15))
    assert lines[-1]["rollout/worker_restarts"] >= 3
    for m in lines:
        assert_every_accepted_group_is_accounted_for(m)
