"""The hf engine: exact behaviour log-probs under continuous batching, stop conditions, versions, sampling."""

import asyncio
import time

import torch

from spear_stream.learner.forward import token_logprobs
from spear_stream.models import load_model
from spear_stream.rollout.engine import SamplingParams
from spear_stream.rollout.hf import HFEngine, sample_tokens


def recompute(model, prompt: list[int], tokens: list[int], temperature: float) -> torch.Tensor:
    seq = torch.tensor([prompt + tokens])
    logp, _ = token_logprobs(model, seq, torch.ones_like(seq), temperature)
    return logp[0, len(prompt) :]


async def after_steps(engine: HFEngine, n: int) -> None:
    while engine.decode_steps < n:
        await asyncio.sleep(0.001)


def slow_forward(model, seconds: float) -> None:
    """Make every forward pass take at least ``seconds`` (so tests can act between decode chunks)."""
    model.register_forward_hook(lambda *_: time.sleep(seconds))


def test_logprobs_match_teacher_forced_recompute_for_requests_joining_a_running_batch(tiny_model_dir):
    model = load_model(tiny_model_dir)
    engine = HFEngine(model, seed=3, chunk_size=2)
    prompts = [
        [1, 5, 9, 13, 20, 31],
        [2, 7],
        [4, 4, 4, 40],
    ]  # ragged: exercises left padding and cache merges

    async def run(temperature: float):
        params = SamplingParams(max_new_tokens=24, temperature=temperature)
        first = asyncio.create_task(engine.generate(prompts[0], params))
        await after_steps(engine, 3)  # the first request is decoding: the others join its batch
        rest = [engine.generate(p, params) for p in prompts[1:]]
        return [await first, *await asyncio.gather(*rest)]

    for temperature in (1.0, 0.7):
        for prompt, gen in zip(prompts, asyncio.run(run(temperature))):
            # includes the first generated token (torchrl's wrapper zeroes it; docs/design.md section 10)
            assert len(gen.token_ids) == 24
            err = (
                (recompute(model, prompt, gen.token_ids, temperature) - torch.tensor(gen.logprobs))
                .abs()
                .max()
            )
            assert err < 1e-4


def test_short_requests_finish_without_waiting_for_long_ones(tiny_model_dir):
    model = load_model(tiny_model_dir)
    slow_forward(model, 0.002)
    engine = HFEngine(model, seed=0, chunk_size=4)
    order: list[str] = []

    async def one(name: str, n: int) -> None:
        await engine.generate([1, 2, 3], SamplingParams(max_new_tokens=n, temperature=1.0))
        order.append(name)

    async def main() -> None:
        await asyncio.gather(one("long", 60), one("short", 3))

    asyncio.run(main())
    assert order == ["short", "long"]


def test_stop_ids_and_versions(tiny_model_dir):
    engine = HFEngine(load_model(tiny_model_dir), seed=0)
    engine.version = 7
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    first = asyncio.run(engine.generate([1, 2, 3], greedy))
    stop_token = first.token_ids[2]
    stop = SamplingParams(max_new_tokens=12, temperature=0.0, stop_ids=(stop_token,))
    stopped = asyncio.run(engine.generate([1, 2, 3], stop))  # a new event loop: the engine follows it
    assert stopped.finish_reason == "stop" and stopped.token_ids[-1] == stop_token
    assert len(stopped.token_ids) <= 3 and stopped.versions == [7] * len(stopped.token_ids)
    assert first.finish_reason == "length" and len(first.token_ids) == 12


def test_weight_update_lands_between_chunks_and_later_tokens_carry_the_new_version(tiny_model_dir):
    model = load_model(tiny_model_dir)
    slow_forward(model, 0.003)
    engine = HFEngine(model, seed=0, chunk_size=4)
    new_weights = {k: v.clone() for k, v in model.state_dict().items()}

    async def main():
        task = asyncio.create_task(
            engine.generate([1, 2], SamplingParams(max_new_tokens=40, temperature=1.0))
        )
        await after_steps(engine, 2)
        engine.load_weights(new_weights, 1)  # queued: the running chunk finishes under version 0
        return await task

    gen = asyncio.run(main())
    old = gen.versions.count(0)
    assert gen.versions == [0] * old + [1] * (40 - old)
    assert old > 0 and old % 4 == 0 and old < 40  # switched at a chunk boundary, mid-generation
    assert engine.version == 1


def test_weight_update_with_wrong_keys_is_refused(tiny_model_dir):
    engine = HFEngine(load_model(tiny_model_dir))
    try:
        engine.load_weights({"not.a.weight": torch.zeros(1)}, 1)
    except ValueError as exc:
        assert "not.a.weight" in str(exc)
    else:
        raise AssertionError("expected a ValueError")
    assert engine.version == 0


def test_top_k_and_top_p_restrict_support():
    logits = torch.tensor([[3.0, 2.0, 1.0, -5.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    tokens, _ = sample_tokens(logits, SamplingParams(1, temperature=1.0, top_k=2), g)
    assert set(tokens.tolist()) <= {0, 1}
    tokens, logp = sample_tokens(logits, SamplingParams(1, temperature=1.0, top_p=0.5), g)
    assert set(tokens.tolist()) == {0}  # p(0) = 0.66 already covers 0.5
    assert torch.allclose(logp, torch.log_softmax(logits[0], -1)[0].expand(2000))


def test_a_turn_that_extends_its_episode_reuses_the_cached_prefix_and_stays_exact(tiny_model_dir):
    model = load_model(tiny_model_dir)
    engine = HFEngine(model, seed=5, chunk_size=4)
    params = SamplingParams(max_new_tokens=10, temperature=1.0)

    async def episode(key: int, prompt: list[int]) -> list[tuple[list[int], list[int], list[float]]]:
        turns = []
        for turn in range(3):
            gen = await engine.generate(prompt, params, affinity=key)
            turns.append((prompt, gen.token_ids, gen.logprobs))
            prompt = prompt + gen.token_ids + [7, 8, 9 + turn]  # the environment's reply, then the next turn
        return turns

    async def main():
        return await asyncio.gather(episode(1, [1, 5, 9]), episode(2, [2, 7, 11, 13, 17]))

    for turns in asyncio.run(main()):
        for prompt, tokens, logprobs in turns:
            assert (recompute(model, prompt, tokens, 1.0) - torch.tensor(logprobs)).abs().max() < 1e-4
    assert engine.prefix_cache.hits == 4  # turns 2 and 3 of both episodes
    # a weight update drops every cached prefix: old keys and values must not seed the new policy
    engine.load_weights({k: v.clone() for k, v in model.state_dict().items()}, 1)
    assert len(engine.prefix_cache) == 0


def test_an_abort_that_lands_during_a_chunks_last_decode_step_still_ends_the_request(tiny_model_dir):
    """The abort comes from the event loop while the worker thread decodes; it must not be lost in between."""
    engine = HFEngine(load_model(tiny_model_dir), seed=0, chunk_size=4)
    decode = engine._decode_step
    calls = []

    def decode_then_abort(batch):
        decode(batch)
        calls.append(1)
        if len(calls) == 4:  # the last decode step of the first chunk
            engine.abort("r")

    engine._decode_step = decode_then_abort  # type: ignore[method-assign]

    async def main():
        return await asyncio.wait_for(
            engine.generate([1, 2, 3], SamplingParams(40, 1.0), rid="r"), timeout=30
        )

    gen = asyncio.run(main())
    assert gen.finish_reason == "abort" and len(gen.token_ids) == 4
