"""Weights into SGLang servers (stand-ins: SGLang's HTTP layer over the in-process engine): partial rollouts
across an update, updates that fail, hang or kill the server, and servers started by the trainer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from standin import standins

from envs import Task
from spear_stream.learner.forward import token_logprobs
from spear_stream.metrics import read_metrics
from spear_stream.models import load_model, load_tokenizer
from spear_stream.rollout.agent import AgentLoop
from spear_stream.rollout.chat import ChatFormat
from spear_stream.rollout.engine import SamplingParams
from spear_stream.rollout.sglang import SGLangEngine
from spear_stream.weightsync.sglang_nccl import SGLangNCCLPublisher

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def perturbed_state(model_dir: Path, seed: int) -> dict[str, torch.Tensor]:
    model = load_model(model_dir)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return {k: v.clone() for k, v in model.state_dict().items()}


def model_with(model_dir: Path, state) -> torch.nn.Module:
    model = load_model(model_dir)
    if state is not None:
        model.load_state_dict(state, strict=False)
    return model


def play_through_an_update(tiny_model_dir, tmp_path, partial: str):
    """One relay episode of long turns on a stand-in; version 1 is broadcast (NCCL over gloo) mid-turn."""
    fmt = ChatFormat(load_tokenizer(tiny_model_dir))
    loop = AgentLoop(
        fmt, "longtail", {"max_turns": 2, "step_ms": 0}, SamplingParams(600, 1.0), 4096, partial=partial
    )
    new_weights = perturbed_state(tiny_model_dir, 1)
    with standins(tiny_model_dir, tmp_path, 1) as (server,):
        publisher = SGLangNCCLPublisher(
            [server.url], tmp_path / "weights", host="127.0.0.1", port_range=[29700, 29799], backend="gloo",
            model_dir=tiny_model_dir, timeout_s=60,
        )  # fmt: skip
        engine = SGLangEngine([server.url])

        def update_soon() -> None:
            time.sleep(0.4)  # the first turn (600 tokens) is being generated
            publisher.publish(new_weights, 1)

        thread = threading.Thread(target=update_soon)
        thread.start()

        async def run():
            try:
                return await loop.run_group(Task(task_id=0, seed=3), 1, loop.engine_policy(engine))
            finally:
                await engine.close()

        group = asyncio.run(run())
        thread.join()
        publisher.close()
    return group, loop, new_weights


def test_a_turn_cut_by_an_update_resumes_with_both_versions_and_exact_logprobs(tiny_model_dir, tmp_path):
    group, loop, new_weights = play_through_an_update(tiny_model_dir, tmp_path, "resume")
    (row,) = group.rows
    mask, versions = row["loss_mask"], row["token_version"]
    assert set(versions[mask].tolist()) == {0, 1}  # the turn spans the update
    assert loop.counters["agent/turns_resumed"] >= 1
    # every token's log-prob is that of the weights its version names (teacher-forced, fp32)
    tokens = row["tokens"][None]
    for version, state in ((0, None), (1, new_weights)):
        logp, _ = token_logprobs(model_with(tiny_model_dir, state), tokens, torch.ones_like(tokens))
        mine = mask & (versions == version)
        assert (logp[0][mine] - row["behavior_logp"][mine]).abs().max() < 1e-4


def test_with_partial_drop_the_group_is_played_again(tiny_model_dir, tmp_path):
    group, loop, _ = play_through_an_update(tiny_model_dir, tmp_path, "drop")
    (row,) = group.rows
    assert loop.counters["agent/groups_regenerated"] >= 1 and "agent/turns_resumed" not in loop.counters
    assert set(row["token_version"][row["loss_mask"]].tolist()) == {1}  # played again, after the update


# ------------------------------------------------------------------------------------------- training runs


def train(
    model_dir: Path, run: Path, urls: list[str], method: str, *extra: str
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "spear_stream.cli.main", "train", "--config", str(ROOT / "configs/tiny_guess.toml"),
        "--model.path", str(model_dir), "--run_dir", str(run), "--rollout.engine", "sglang",
        "--rollout.sglang_urls", ",".join(urls), "--sync.method", method, "--eval.episodes", "0",
        "--log.progress", "false", "--env.groups_per_step", "4", "--env.group_size", "4", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:  # only the process group this test started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def no_group_lost(steps: list[dict]) -> None:
    last = steps[-1]
    trained = sum(m["learner/fresh_groups"] for m in steps)
    dropped = last.get("replay/dropped_stale_groups", 0) + last.get("replay/dropped_overflow_groups", 0)
    assert last["transport/accepted_groups"] == trained + last["replay/fresh_groups"] + dropped


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; its parent just has not reaped it yet


def version_of(url: str) -> str:
    return httpx.get(f"{url}/model_info", timeout=10).json()["weight_version"]


@pytest.mark.parametrize("method", ["sglang_nccl", "sglang_disk"])
def test_servers_follow_the_learner_rows_carry_their_versions_and_success_rises(
    demo_like_model_dir, tmp_path, method
):
    """Two stand-ins, weights into both after every step. Guess-the-number over 1..4: the warm start (trained on
    1..15) rarely wins at first and learns fast (the in-process engine, same command: 3% over the first 5 steps,
    18% over the last 5)."""
    run = tmp_path / "run"
    with standins(demo_like_model_dir, tmp_path, 2) as servers:
        urls = [s.url for s in servers]
        result = train(demo_like_model_dir, run, urls, method, "--learner.steps", "20", "--env.params",
                       '{"n_max": 4}', "--env.groups_per_step", "16", "--env.group_size", "8")  # fmt: skip
        assert result.returncode == 0, result.stdout[-4000:]
        assert [version_of(u) for u in urls] == ["20", "20"]  # every server holds the learner's last version
    steps = [m for m in read_metrics(run) if "loss/policy" in m]
    assert [m["step"] for m in steps] == list(range(1, 21))
    assert steps[-1]["sync/server_updates"] == 40 and steps[-1]["sync/server_update_failures"] == 0
    assert all(m["staleness/max"] <= 2 for m in steps)  # the versions the servers stamped, within the bound
    # tokens made by the weights being trained: the stand-in's log-probs are the learner's (fp32, same kernels)
    assert max(m["loss/logprob_abs_diff"] for m in steps if "loss/logprob_abs_diff" in m) < 1e-4
    early = sum(m["rollout/success_rate"] for m in steps[:5]) / 5
    late = sum(m["rollout/success_rate"] for m in steps[-5:]) / 5
    assert late > early + 0.08, (early, late)  # success rises, as with the in-process engine
    no_group_lost(steps)


@pytest.mark.parametrize("fault", ["update_fail", "update_hang", "update_exit"])
def test_a_failed_hung_or_killed_update_is_recovered_counted_and_loses_nothing(
    tiny_model_dir, tmp_path, fault
):
    """Server 0 fails its 3rd weight update; the run goes on, with that server reloaded from disk (fail, hang)
    or gone (exit), and the other server in step."""
    run = tmp_path / "run"
    with (
        standins(tiny_model_dir, tmp_path, 1, "--fault", f"{fault}:3") as (bad,),
        standins(tiny_model_dir, tmp_path, 1) as (good,),
    ):
        result = train(tiny_model_dir, run, [bad.url, good.url], "sglang_disk", "--learner.steps", "6",
                       "--sync.timeout_s", "8")  # fmt: skip
        assert result.returncode == 0, result.stdout[-4000:]
        assert version_of(good.url) == "6"
        if fault == "update_exit":
            assert bad.proc.poll() == 17  # it died mid-update
        else:
            assert version_of(bad.url) == "6"  # recovered from disk, then updated as usual
    steps = [m for m in read_metrics(run) if "loss/policy" in m]
    last = steps[-1]
    assert [m["step"] for m in steps] == list(range(1, 7))
    assert last["sync/server_update_failures"] >= 1
    if fault == "update_exit":
        assert last["sync/servers_left_paused"] >= 1 and last["sync/servers_in_sync"] == 1
    else:
        assert last["sync/server_recoveries"] == 1 and last["sync/servers_in_sync"] == 2
    no_group_lost(steps)


def test_launched_servers_are_restarted_resynced_and_stopped_on_ctrl_c(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    template = f"env PYTHONPATH={ROOT / '.venv-sglang'} {{python}} {ROOT / 'tools/sglang_standin.py'} --model {{model}} --port {{port}}"
    cmd = [
        sys.executable, "-m", "spear_stream.cli.main", "train", "--config", str(ROOT / "configs/tiny_guess.toml"),
        "--model.path", str(tiny_model_dir), "--run_dir", str(run), "--rollout.engine", "sglang",
        "--rollout.sglang_launch", template, "--rollout.sglang_servers", "2", "--rollout.sglang_python",
        sys.executable, "--sync.method", "sglang_disk", "--eval.episodes", "0", "--log.progress", "false",
        "--env.groups_per_step", "4", "--env.group_size", "4", "--learner.steps", "1000", "--sync.timeout_s", "20",
    ]  # fmt: skip
    from standin import require_sglang

    require_sglang()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len([m for m in read_metrics(run) if "loss/policy" in m]) < 3:
            time.sleep(0.5)
        pids = json.loads((run / "servers.json").read_text())
        first = dict(pids)
        os.kill(first[sorted(first)[0]], signal.SIGKILL)  # one server dies mid-run
        while time.time() < deadline:
            steps = [m for m in read_metrics(run) if "loss/policy" in m]
            if (
                steps
                and steps[-1].get("sync/server_resyncs", 0) >= 1
                and steps[-1]["sync/servers_in_sync"] == 2
            ):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the killed server was not restarted and re-synced")
        restarted = json.loads((run / "servers.json").read_text())
        assert restarted[sorted(first)[0]] != first[sorted(first)[0]]  # a new process on the same URL
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not [pid for pid in restarted.values() if alive(pid)]  # every server the launcher started is gone
    steps = [m for m in read_metrics(run) if "loss/policy" in m]
    assert steps[-1]["rollout/server_restarts"] >= 1
