"""Success rate of a policy on an environment's evaluation split (fixed seeds, group size 1)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from envs import Task
from spear_stream.rollout.engine import RolloutEngine
from spear_stream.rollout.worker import RolloutWorker


@dataclass
class EvalResult:
    episodes: int
    success_rate: float
    reward_mean: float

    @property
    def stderr(self) -> float:
        p = self.success_rate
        return (p * (1 - p) / max(self.episodes, 1)) ** 0.5


def evaluate(
    worker: RolloutWorker,
    engine: RolloutEngine,
    *,
    episodes: int,
    temperature: float,
    seed: int,
    split: str,
    batch_size: int,
    top_p: float = 1.0,
) -> EvalResult:
    sampling = replace(worker.sampling, temperature=temperature, top_p=top_p)
    eval_worker = RolloutWorker(
        worker.fmt, worker.env_name, worker.env_params, sampling, worker.max_seq_len, worker.worker_id
    )
    policy = eval_worker.engine_policy(engine)
    successes: list[bool] = []
    rewards: list[float] = []
    for start in range(0, episodes, batch_size):
        tasks = [
            Task(task_id=i, seed=seed + i, split=split)
            for i in range(start, min(start + batch_size, episodes))
        ]
        for group in eval_worker.run_groups(tasks, 1, policy):
            successes += group.successes
            rewards += group.rewards
    n = max(len(successes), 1)
    return EvalResult(len(successes), sum(successes) / n, sum(rewards) / n)


def evaluate_model_dir(cfg, model_dir, temperatures: dict[str, float]) -> dict[str, EvalResult]:
    """Load ``model_dir`` and evaluate it on ``cfg.env``'s evaluation split at each named temperature.

    Tasks are ``Task(task_id=i, seed=cfg.eval.seed + i)`` for i < ``cfg.eval.episodes``; environments with a fixed
    problem list (AIME) index problems by ``task_id % n``, so ``episodes = k * n`` gives avg@k.
    """
    from spear_stream.models import load_model, load_tokenizer
    from spear_stream.rollout.chat import ChatFormat
    from spear_stream.rollout.engine import SamplingParams
    from spear_stream.rollout.hf import HFEngine

    tokenizer = load_tokenizer(model_dir)
    fmt = ChatFormat(tokenizer)
    r = cfg.rollout
    sampling = SamplingParams(r.max_new_tokens, cfg.eval.temperature, cfg.eval.top_p, r.top_k, fmt.stop_ids)
    worker = RolloutWorker(fmt, cfg.env.name, cfg.env.params, sampling, r.max_seq_len)
    engine = HFEngine(
        load_model(model_dir, cfg.model.dtype), seed=cfg.eval.seed, pad_id=tokenizer.pad_token_id or 0
    )
    return {
        name: evaluate(
            worker,
            engine,
            episodes=cfg.eval.episodes,
            temperature=t,
            seed=cfg.eval.seed,
            split=cfg.env.eval_split,
            batch_size=r.batch_size,
            top_p=cfg.eval.top_p,
        )
        for name, t in temperatures.items()
    }
