"""Success rate of a policy on an environment's evaluation split (fixed seeds, group size 1).

Evaluation runs the same agent loop and engine factory as training (``rollout.engine``: in-process or SGLang
servers), with its own sampling settings (``eval.temperature``, ``eval.top_p``, or greedy).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from envs import Task
from spear_stream.rollout.agent import AgentLoop
from spear_stream.rollout.engine import RolloutEngine


@dataclass
class EvalResult:
    episodes: int
    success_rate: float
    reward_mean: float

    @property
    def stderr(self) -> float:
        p = self.success_rate
        return (p * (1 - p) / max(self.episodes, 1)) ** 0.5


async def evaluate(
    loop: AgentLoop,
    engine: RolloutEngine,
    *,
    episodes: int,
    temperature: float,
    seed: int,
    split: str,
    top_p: float = 1.0,
    max_concurrent_episodes: int = 128,
) -> EvalResult:
    """Task i is ``Task(task_id=i, seed=seed + i, split=split)`` for i < ``episodes``, one episode each."""
    policy = loop.engine_policy(engine, temperature=temperature, top_p=top_p)
    tasks = [Task(task_id=i, seed=seed + i, split=split) for i in range(episodes)]
    groups = await loop.run_groups(tasks, 1, policy, max_concurrent_episodes)
    successes = [s for g in groups for s in g.successes]
    rewards = [r for g in groups for r in g.rewards]
    n = max(len(successes), 1)
    return EvalResult(len(successes), sum(successes) / n, sum(rewards) / n)


def evaluate_model_dir(cfg, model_dir, temperatures: dict[str, float]) -> dict[str, EvalResult]:
    """Evaluate the policy of ``model_dir`` on ``cfg.env``'s evaluation split at each named temperature.

    ``rollout.engine = "hf"`` loads ``model_dir``; a server engine evaluates whatever weights its servers hold
    (the trainer keeps them at the learner's). Environments with a fixed problem list (AIME) index problems by
    ``task_id % n``, so ``eval.episodes = k * n`` gives avg@k.
    """
    from spear_stream.models import load_tokenizer
    from spear_stream.rollout.chat import ChatFormat
    from spear_stream.rollout.engine import SamplingParams, make_engine

    fmt = ChatFormat(load_tokenizer(model_dir))
    r = cfg.rollout
    sampling = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k, tuple(fmt.stop_ids))
    loop = AgentLoop(fmt, cfg.env.name, cfg.env.params, sampling, r.max_seq_len)

    async def run_all() -> dict[str, EvalResult]:
        engine = make_engine(cfg, str(model_dir), seed=cfg.eval.seed)
        out: dict[str, EvalResult] = {}
        try:
            for name, temperature in temperatures.items():
                out[name] = await evaluate(
                    loop,
                    engine,
                    episodes=cfg.eval.episodes,
                    temperature=temperature,
                    seed=cfg.eval.seed,
                    split=cfg.env.eval_split,
                    top_p=cfg.eval.top_p,
                    max_concurrent_episodes=r.max_concurrent_episodes,
                )
        finally:
            await engine.close()
        return out

    return asyncio.run(run_all())
