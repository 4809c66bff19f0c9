"""The SGLang client and trainer against a real SGLang server (gpu marker; skipped unless SGLANG_URL is set).

Launch a server in SGLang's own environment (never this project's venv), e.g. on a GPU machine:

    python -m sglang.launch_server --model-path /models/SmolLM2-135M-Instruct --port 30000 \\
        --skip-tokenizer-init --sampling-defaults openai --weight-version 0 --disable-radix-cache

then, from this checkout (the same model directory, readable here, for the learner's recompute and training):

    SGLANG_URL=http://127.0.0.1:30000 SGLANG_MODEL=/models/SmolLM2-135M-Instruct pytest -m gpu tests/gpu

The same checks as the stand-in tests (tests/integration/test_sglang_client.py, test_sglang_training.py): every
field the client sends is one SGLang defines (the server silently ignores others, so this is checked against
the installed SGLang when it is importable), log-probs equal the learner's recompute, 400s are clear errors,
and a short training run with sglang_disk updates the server's weight_version to the learner's.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from spear_stream.learner.forward import token_logprobs
from spear_stream.models import load_model, load_tokenizer
from spear_stream.rollout.engine import EngineError, SamplingParams
from spear_stream.rollout.sglang import SGLangEngine

pytestmark = pytest.mark.gpu

URL = os.environ.get("SGLANG_URL", "")
MODEL = os.environ.get("SGLANG_MODEL", "")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> str:
    if not URL or not MODEL:
        pytest.skip("set SGLANG_URL (a running SGLang server) and SGLANG_MODEL (its model directory)")
    return URL


def test_logprobs_match_the_learners_recompute_on_a_real_server(server):
    tokenizer = load_tokenizer(MODEL)
    model = load_model(MODEL, "float32").to("cuda" if torch.cuda.is_available() else "cpu")
    prompt = tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    engine = SGLangEngine.connect([server])

    async def run():
        try:
            return await engine.generate(prompt, SamplingParams(32, temperature=1.0))
        finally:
            await engine.close()

    gen = asyncio.run(run())
    seq = torch.tensor([prompt + gen.token_ids], device=model.device)
    logp, _ = token_logprobs(model, seq, torch.ones_like(seq), 1.0)
    diff = (logp[0, len(prompt) :].cpu() - torch.tensor(gen.logprobs)).abs()
    # bf16 kernels on the server vs an fp32 recompute: a looser bound than the stand-in's 1e-4
    assert diff.mean() < 0.05 and len(gen.token_ids) == 32


def test_a_negative_temperature_is_a_clear_error(server):
    async def run():
        engine = SGLangEngine([server])
        try:
            await engine.generate([1, 2, 3], SamplingParams(4, temperature=-1.0))
        finally:
            await engine.close()

    with pytest.raises(EngineError, match="temperature"):
        asyncio.run(run())


def test_short_training_run_updates_the_servers_weights(server, tmp_path):
    cmd = [
        sys.executable, "-m", "spear_stream.cli.main", "train", "--config", str(ROOT / "configs/tiny_guess.toml"),
        "--model.path", MODEL, "--run_dir", str(tmp_path / "run"), "--rollout.engine", "sglang",
        "--rollout.sglang_urls", server, "--sync.method", "sglang_disk", "--learner.steps", "3",
        "--env.groups_per_step", "2", "--env.group_size", "4", "--eval.episodes", "0", "--log.progress", "false",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert httpx.get(f"{server}/model_info", timeout=10).json()["weight_version"] == "3"


@pytest.mark.parametrize("method", ["sglang_nccl", "sglang_disk"])
def test_weight_sync_into_a_real_server_changes_its_outputs_to_the_new_weights(server, tmp_path, method):
    """The learner's sync paths against a real server: NCCL needs the learner on a GPU the server can reach
    (same node: NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 if CUDA_VISIBLE_DEVICES differ); disk a shared path."""
    from spear_stream.weightsync.base import make_publisher

    model = load_model(MODEL, "float32")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    device = "cuda" if method == "sglang_nccl" and torch.cuda.is_available() else "cpu"
    state = {k: v.to(device) for k, v in model.state_dict().items()}
    publisher = make_publisher(
        method, run_dir=tmp_path, timeout_s=300, sglang_urls=[server], model_dir=MODEL,
        backend="nccl" if device == "cuda" else "gloo",
    )  # fmt: skip
    try:
        publisher.publish(state, 7)
    finally:
        publisher.close()
    assert httpx.get(f"{server}/model_info", timeout=10).json()["weight_version"] == "7"
    assert publisher.last_metrics["sync/server_update_failures"] == 0  # type: ignore[attr-defined]
