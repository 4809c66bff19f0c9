"""The SGLang client against SGLang's own HTTP layer (the stand-in server): the contract as SGLang's code parses,
validates and answers it, with real tokens and log-probs from the in-process engine underneath."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch
from standin import sglang_field_names, standins

from spear_stream.learner.forward import token_logprobs
from spear_stream.models import load_model
from spear_stream.rollout.engine import EngineError, SamplingParams
from spear_stream.rollout.sglang import SGLangEngine, generate_body, parse_generations

PROMPTS = [[1, 5, 9, 13, 20, 31], [2, 7], [4, 4, 4, 40]]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    with standins(tiny_model_dir, tmp_path_factory.mktemp("standin"), 1) as (one,):
        yield one


def test_every_field_the_client_sends_is_one_sglang_defines():
    request_fields, sampling_fields = sglang_field_names()
    body = generate_body([1, 2, 3], SamplingParams(16, 0.7, 0.9, 5, (2,)), "r" * 32)
    assert set(body) <= request_fields and set(body["sampling_params"]) <= sampling_fields
    # token ids in, never text; log-probs requested; every sampling knob explicit (no server-side defaults)
    assert body["input_ids"] == [1, 2, 3] and "text" not in body and body["return_logprob"] is True
    knobs = {"temperature", "top_p", "top_k", "min_p", "max_new_tokens", "stop_token_ids", "no_stop_trim"}
    assert knobs <= set(body["sampling_params"])
    assert body["sampling_params"]["top_k"] == 5
    assert (
        generate_body([1], SamplingParams(4, top_k=0), "x")["sampling_params"]["top_k"] == -1
    )  # whole vocab


def test_logprobs_match_the_learners_recompute(server, tiny_model_dir):
    model = load_model(tiny_model_dir)
    engine = SGLangEngine.connect([server.url])

    async def run(temperature):
        params = SamplingParams(24, temperature=temperature)
        try:
            return await asyncio.gather(*(engine.generate(p, params) for p in PROMPTS))
        finally:
            await engine.close()

    for temperature in (1.0, 0.7):
        for prompt, gen in zip(PROMPTS, asyncio.run(run(temperature))):
            seq = torch.tensor([prompt + gen.token_ids])
            logp, _ = token_logprobs(model, seq, torch.ones_like(seq), temperature)
            assert len(gen.token_ids) == 24 and gen.versions == [0] * 24
            assert (logp[0, len(prompt) :] - torch.tensor(gen.logprobs)).abs().max() < 1e-4


def test_batch_responses_are_matched_by_id_not_position(server):
    single = [
        parse_generations(
            httpx.post(f"{server.url}/generate", json=generate_body(p, SamplingParams(6, 0.0), rid)).json(),
            [rid],
        )[0]
        for p, rid in zip(PROMPTS[:2], ("aa" * 16, "bb" * 16))
    ]
    batch = {
        "rid": ["aa" * 16, "bb" * 16],
        "input_ids": PROMPTS[:2],
        "sampling_params": generate_body([1], SamplingParams(6, 0.0), "x")["sampling_params"],
        "return_logprob": True,
    }
    answered = httpx.post(f"{server.url}/generate", json=batch).json()
    assert isinstance(answered, list) and len(answered) == 2
    reversed_order = parse_generations(answered, ["bb" * 16, "aa" * 16])  # asked in the other order
    assert (
        reversed_order[0].token_ids == single[1].token_ids
        and reversed_order[1].token_ids == single[0].token_ids
    )
    with pytest.raises(EngineError, match="answered ids"):
        parse_generations(answered, ["aa" * 16, "cc" * 16])


def test_sglang_400s_surface_as_clear_errors(server):
    engine = SGLangEngine([server.url])

    async def run(params):
        try:
            return await engine.generate([1, 2, 3], params)
        finally:
            await engine.close()

    with pytest.raises(EngineError, match="temperature must be a non-negative finite number"):
        asyncio.run(run(SamplingParams(4, temperature=-1.0)))
    assert engine.counters["engine/retries"] == 0  # a refusal is not retried


def test_pause_aborts_with_partial_tokens_and_a_resumed_request_continues_under_the_new_version(server):
    engine = SGLangEngine([server.url])
    prompt = [1, 2, 3]

    async def run():
        first = asyncio.create_task(engine.generate(prompt, SamplingParams(1500, 1.0)))
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient() as http:
            await http.post(f"{server.url}/pause_generation", json={"mode": "abort"})
            cut = await first
            await http.post(
                f"{server.url}/update_weight_version", json={"new_version": "5", "abort_all_requests": False}
            )
            await http.post(f"{server.url}/continue_generation", json={})
        rest = await engine.generate(prompt + cut.token_ids, SamplingParams(1500 - len(cut.token_ids), 1.0))
        await engine.close()
        return cut, rest

    cut, rest = asyncio.run(run())
    assert cut.finish_reason == "abort" and 0 < len(cut.token_ids) < 1500 and set(cut.versions) == {0}
    assert rest.finish_reason == "length" and len(cut.token_ids) + len(rest.token_ids) == 1500
    assert set(rest.versions) == {5}
    assert engine.counters["engine/aborted"] == 1
