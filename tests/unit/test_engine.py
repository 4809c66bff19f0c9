"""The hf engine: exact behaviour log-probs, stop conditions, version stamping, sampling options."""

import torch

from spear_stream.learner.forward import token_logprobs
from spear_stream.models import load_model
from spear_stream.rollout.engine import SamplingParams
from spear_stream.rollout.hf import HFEngine, sample_tokens


def test_sampled_logprobs_match_teacher_forced_recompute(tiny_model_dir):
    model = load_model(tiny_model_dir)
    engine = HFEngine(model, seed=3)
    prompts = [[1, 5, 9, 13, 20, 31], [2, 7], [4, 4, 4, 40]]  # ragged: exercises left padding
    for temperature in (1.0, 0.7):
        params = SamplingParams(max_new_tokens=24, temperature=temperature, stop_ids=[])
        for prompt, gen in zip(prompts, engine.generate(prompts, params)):
            seq = torch.tensor([prompt + gen.token_ids])
            logp, _ = token_logprobs(model, seq, torch.ones_like(seq), temperature)
            recomputed = logp[0, len(prompt) :]
            # includes the first generated token (torchrl's wrapper zeroes it; docs/design.md section 10)
            assert recomputed.shape[0] == len(gen.token_ids) == 24
            assert (recomputed - torch.tensor(gen.logprobs)).abs().max() < 1e-4


def test_stop_ids_and_versions(tiny_model_dir):
    model = load_model(tiny_model_dir)
    engine = HFEngine(model, seed=0)
    engine.version = 7
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    first = engine.generate([[1, 2, 3]], greedy)[0]
    stop_token = first.token_ids[2]
    stopped = engine.generate(
        [[1, 2, 3]], SamplingParams(max_new_tokens=12, temperature=0.0, stop_ids=[stop_token])
    )[0]
    assert stopped.finish_reason == "stop" and stopped.token_ids[-1] == stop_token
    assert len(stopped.token_ids) <= 3 and stopped.versions == [7] * len(stopped.token_ids)
    assert first.finish_reason == "length" and len(first.token_ids) == 12


def test_between_chunks_hook_bumps_versions(tiny_model_dir):
    model = load_model(tiny_model_dir)
    engine = HFEngine(model, seed=0, chunk_size=4)

    def swap():
        engine.load_weights(model.state_dict(), engine.version + 1)

    gen = engine.generate([[1, 2]], SamplingParams(max_new_tokens=10, temperature=1.0), between_chunks=swap)[
        0
    ]
    assert gen.versions == [0] * 4 + [1] * 4 + [2] * 2


def test_top_k_and_top_p_restrict_support():
    logits = torch.tensor([[3.0, 2.0, 1.0, -5.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    tokens, _ = sample_tokens(logits, SamplingParams(1, temperature=1.0, top_k=2), g)
    assert set(tokens.tolist()) <= {0, 1}
    tokens, logp = sample_tokens(logits, SamplingParams(1, temperature=1.0, top_p=0.5), g)
    assert set(tokens.tolist()) == {0}  # p(0) = 0.66 already covers 0.5
    assert torch.allclose(logp, torch.log_softmax(logits[0], -1)[0].expand(2000))
