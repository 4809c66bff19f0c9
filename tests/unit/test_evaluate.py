"""Evaluation samples with its own settings (eval.temperature, eval.top_p), not the training rollout's."""

from types import SimpleNamespace

from spear_stream.rollout import evaluate as ev
from spear_stream.rollout.engine import SamplingParams


def test_evaluate_samples_with_the_eval_temperature_and_top_p(monkeypatch):
    seen: list[SamplingParams] = []

    class RecordingWorker:
        def __init__(self, fmt, env_name, env_params, sampling, max_seq_len, worker_id=0):
            seen.append(sampling)

        def engine_policy(self, engine):
            return None

        def run_groups(self, tasks, group_size, policy):
            return []

    monkeypatch.setattr(ev, "RolloutWorker", RecordingWorker)
    training = SimpleNamespace(
        sampling=SamplingParams(16, 1.0, 1.0, 0, [2]), fmt=None, env_name="x", env_params={}, max_seq_len=64,
        worker_id=0,
    )  # fmt: skip
    result = ev.evaluate(
        training, None, episodes=0, temperature=0.4, seed=0, split="test", batch_size=4, top_p=0.6
    )
    assert result.episodes == 0
    assert (seen[0].temperature, seen[0].top_p, seen[0].max_new_tokens) == (0.4, 0.6, 16)
