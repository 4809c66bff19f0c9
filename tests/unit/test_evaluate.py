"""Evaluation samples with its own settings (eval.temperature, eval.top_p), not the training rollout's."""

import asyncio

from spear_stream.rollout import evaluate as ev
from spear_stream.rollout.engine import Generation, SamplingParams


class RecordingEngine:
    def __init__(self) -> None:
        self.seen: list[SamplingParams] = []

    async def generate(self, prompt_ids, params):
        self.seen.append(params)
        return Generation([], [], [], "stop")


class OneTurnLoop:
    """Stands in for AgentLoop.run_groups: one generation per task, a success every other task."""

    def engine_policy(self, engine, **overrides):
        from dataclasses import replace

        sampling = replace(SamplingParams(16, 1.0, 1.0, 0, (2,)), **overrides)
        return lambda episode: engine.generate([1], sampling)

    async def run_groups(self, tasks, group_size, policy, max_concurrent):
        from types import SimpleNamespace

        out = []
        for t in tasks:
            await policy(None)
            out.append(SimpleNamespace(successes=[t.task_id % 2 == 0], rewards=[float(t.seed)]))
        return out


def test_evaluate_samples_with_the_eval_temperature_and_top_p():
    engine = RecordingEngine()
    result = asyncio.run(
        ev.evaluate(OneTurnLoop(), engine, episodes=4, temperature=0.4, seed=10, split="test", top_p=0.6)
    )
    assert [(p.temperature, p.top_p, p.max_new_tokens) for p in engine.seen] == [(0.4, 0.6, 16)] * 4
    assert (result.episodes, result.success_rate, result.reward_mean) == (4, 0.5, 11.5)  # seeds 10..13
