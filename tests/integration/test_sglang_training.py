"""Training through SGLang's HTTP layer with a stand-in server killed mid-run: its requests fail over, nothing
accepted is lost. (Learning through stand-ins, with both sync methods: test_sglang_sync.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from standin import standins

from spear_stream.metrics import read_metrics

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def train_cmd(model_dir: Path, run_dir: Path, urls: list[str], *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "spear_stream.cli.main", "train", "--config", str(ROOT / "configs/tiny_guess.toml"),
        "--model.path", str(model_dir), "--run_dir", str(run_dir), "--rollout.engine", "sglang",
        "--rollout.sglang_urls", ",".join(urls), "--sync.method", "sglang_disk", "--eval.episodes", "0",
        "--log.progress", "false", "--sync.timeout_s", "60", *extra,
    ]  # fmt: skip


def run_to_end(cmd: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
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


def server_version(url: str) -> str:
    return httpx.get(f"{url}/model_info", timeout=10).json()["weight_version"]


def test_a_killed_server_fails_over_and_no_accepted_group_is_lost(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    with standins(tiny_model_dir, tmp_path, 2) as servers:
        cmd = train_cmd(tiny_model_dir, run, [s.url for s in servers], "--learner.steps", "14",
                        "--env.groups_per_step", "4", "--env.group_size", "4")  # fmt: skip
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            deadline = time.time() + 300
            while time.time() < deadline and len([m for m in read_metrics(run) if "loss/policy" in m]) < 4:
                time.sleep(0.2)
            servers[0].stop(signal.SIGKILL)  # mid-run: its in-flight requests must go to the other server
            out, _ = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == 0, out[-4000:]
        assert server_version(servers[1].url) == "14"
    steps = [m for m in read_metrics(run) if "loss/policy" in m]
    last = steps[-1]
    assert [m["step"] for m in steps] == list(range(1, 15))
    assert last["rollout/engine/failovers"] >= 1  # the failover is counted
    # every group the learner accepted was trained on or is still buffered: none lost
    accepted = last["transport/accepted_groups"]
    trained = sum(m["learner/fresh_groups"] for m in steps)
    assert accepted == trained + last["replay/fresh_groups"] + last.get("replay/dropped_stale_groups", 0)
    assert last["sync/server_update_failures"] >= 1  # the dead server's updates failed and were counted
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 14
