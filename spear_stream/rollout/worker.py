"""The multi-turn agent loop: G rollouts per task against an environment, lockstep over a batch of episodes.

Each turn gathers the prompts of all live episodes, generates them in one engine call, then steps every
environment concurrently (``asyncio.gather``: slow environments such as sandboxes overlap). Rows come out per
completed group, ready for the transport or a local learner.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tensordict import TensorDict

from envs import Task, make_env
from envs.base import Env
from spear_stream.algo.filters import is_repetitive, is_unreadable
from spear_stream.rollout.chat import ChatFormat
from spear_stream.rollout.engine import Generation, RolloutEngine, SamplingParams
from spear_stream.rollout.episode import EpisodeRecorder, RowIds
from spear_stream.schema import env_id_of


@dataclass
class Episode:
    env: Env
    task: Task
    recorder: EpisodeRecorder
    reward: float = 0.0
    success: bool = False
    n_tool_calls: int = 0
    incomplete: bool = False
    terminated: bool = False


@dataclass
class GroupResult:
    task: Task
    group_id: int
    rows: list[TensorDict]
    rewards: list[float]
    successes: list[bool]
    generated_tokens: int


# A policy maps the live episodes to one generation each (an engine, or a scripted expert for SFT).
Policy = Callable[[list[Episode]], list[Generation]]


class RolloutWorker:
    def __init__(
        self,
        fmt: ChatFormat,
        env_name: str,
        env_params: dict | None,
        sampling: SamplingParams,
        max_seq_len: int,
        worker_id: int = 0,
        ngram: tuple[int, int] = (20, 10),
    ) -> None:
        self.fmt = fmt
        self.env_name, self.env_params = env_name, dict(env_params or {})
        self.sampling = sampling
        self.max_seq_len = max_seq_len
        self.worker_id = worker_id
        self.ngram = ngram
        self.groups_started = 0

    def engine_policy(
        self, engine: RolloutEngine, between_chunks: Callable[[], None] | None = None
    ) -> Policy:
        def act(episodes: list[Episode]) -> list[Generation]:
            prompts = [e.recorder.prompt() for e in episodes]
            return engine.generate(prompts, self.sampling, between_chunks)

        return act

    def expert_policy(self, rng: random.Random) -> Policy:
        """Scripted expert as a policy: its text tokenised as if generated (log-prob 0, version 0)."""

        def act(episodes: list[Episode]) -> list[Generation]:
            out = []
            for e in episodes:
                ids = self.fmt.text_ids(e.env.expert_action(rng))[: self.sampling.max_new_tokens - 1]
                ids.append(self.fmt.im_end)
                out.append(Generation(ids, [0.0] * len(ids), [0] * len(ids), "stop"))
            return out

        return act

    def next_group_ids(self, n: int) -> list[int]:
        # Unique across workers: worker id in the high bits, a local counter below.
        ids = [(self.worker_id << 32) | (self.groups_started + i) for i in range(n)]
        self.groups_started += n
        return ids

    def run_groups(self, tasks: list[Task], group_size: int, policy: Policy) -> list[GroupResult]:
        return asyncio.run(self.run_groups_async(tasks, group_size, policy))

    async def run_groups_async(self, tasks: list[Task], group_size: int, policy: Policy) -> list[GroupResult]:
        group_ids = self.next_group_ids(len(tasks))
        env_id = env_id_of(self.env_name)
        episodes: list[Episode] = []
        for task, gid in zip(tasks, group_ids):
            for i in range(group_size):
                env = make_env(self.env_name, self.env_params)
                ids = RowIds(gid, gid * 1024 + i, task.task_id, env_id, self.worker_id)
                rec = EpisodeRecorder(self.fmt, env.prompt_mode, self.max_seq_len, ids)
                episodes.append(Episode(env, task, rec))
        try:
            observations = await asyncio.gather(*(e.env.reset(e.task) for e in episodes))
            for e, obs in zip(episodes, observations):
                e.recorder.start(obs)
            await self._play(episodes, policy)
        finally:
            for e in episodes:
                e.env.close()
        return self._collect(tasks, group_ids, group_size, episodes)

    async def _play(self, episodes: list[Episode], policy: Policy) -> None:
        max_turns = max(e.env.max_turns for e in episodes)
        for _ in range(max_turns):
            live = [e for e in episodes if not e.recorder.done]
            for e in live:
                if not e.recorder.fits(self.sampling.max_new_tokens):
                    e.recorder.cut()
                    e.incomplete = True
            live = [e for e in live if not e.recorder.done]
            if not live:
                return
            generations = policy(live)
            texts = [self.fmt.decode(g.token_ids) for g in generations]
            results = await asyncio.gather(*(e.env.step(t) for e, t in zip(live, texts)))
            for e, gen, text, result in zip(live, generations, texts, results):
                e.recorder.generated_texts.append(text)
                e.recorder.add_turn(gen, result)
                e.reward += result.reward
                e.n_tool_calls = result.info.n_tool_calls
                if result.done:
                    e.success = result.info.won
                    e.terminated = result.terminated
                    e.incomplete = e.incomplete or bool(result.info.extra.get("incomplete", False))
        for e in episodes:  # the env's own limit should have ended them; guard against envs that don't
            if not e.recorder.done:
                e.recorder.cut()
                e.incomplete = True

    def _collect(
        self, tasks: list[Task], group_ids: list[int], group_size: int, episodes: list[Episode]
    ) -> list[GroupResult]:
        results = []
        for g, (task, gid) in enumerate(zip(tasks, group_ids)):
            members = episodes[g * group_size : (g + 1) * group_size]
            rows: list[TensorDict] = []
            n_generated = 0
            for e in members:
                generated = [t for ids in e.recorder.generated_ids for t in ids]
                n_generated += len(generated)
                rows += e.recorder.rows(
                    outcome_reward=e.reward,
                    success=e.success,
                    n_tool_calls=e.n_tool_calls,
                    incomplete=e.incomplete,
                    repetitive=is_repetitive(torch.tensor(generated), *self.ngram) if generated else False,
                    unreadable=any(is_unreadable(t) for t in e.recorder.generated_texts),
                )
            results.append(
                GroupResult(
                    task, gid, rows, [e.reward for e in members], [e.success for e in members], n_generated
                )
            )
        return results
