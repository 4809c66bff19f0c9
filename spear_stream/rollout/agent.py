"""The multi-turn agent loop: every episode is its own asyncio task (generate, step its environment, repeat).

A slow environment step or a long episode holds up only its own episode; the engine batches whatever requests
are waiting. A group is complete when its G episodes are, and its rows go out at once (to the transport or the
in-process source). ``docs/algorithm.md`` section 1 describes the rows; :mod:`spear_stream.rollout.episode`
builds them.

A policy maps an episode to its next generation: an engine (:meth:`AgentLoop.engine_policy`), or the scripted
expert for SFT (:meth:`AgentLoop.expert_policy`).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace

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
    generated_tokens: int = 0


@dataclass
class GroupResult:
    task: Task
    group_id: int
    rows: list[TensorDict]
    rewards: list[float]
    successes: list[bool]
    generated_tokens: int


Policy = Callable[[Episode], Awaitable[Generation]]


class TurnAborted(Exception):
    """A turn was cut short by the engine (a weight update) and ``rollout.partial = "drop"``."""


class AgentLoop:
    def __init__(
        self,
        fmt: ChatFormat,
        env_name: str,
        env_params: dict | None,
        sampling: SamplingParams,
        max_seq_len: int,
        worker_id: int = 0,
        ngram: tuple[int, int] = (20, 10),
        partial: str = "resume",
    ) -> None:
        if partial not in ("resume", "drop"):
            raise ValueError(f"rollout.partial must be 'resume' or 'drop', got {partial!r}")
        self.partial = partial
        self.counters: Counter[str] = Counter()  # turns resumed, groups regenerated (reported by workers)
        self.fmt = fmt
        self.env_name, self.env_params = env_name, dict(env_params or {})
        self.sampling = sampling
        self.max_seq_len = max_seq_len
        self.worker_id = worker_id
        self.ngram = ngram
        self.groups_started = 0

    # ------------------------------------------------------------------ policies
    def engine_policy(self, engine: RolloutEngine, **overrides) -> Policy:
        """Generate with ``engine``; ``overrides`` change sampling (e.g. ``temperature=0`` for greedy eval)."""
        sampling = replace(self.sampling, **overrides) if overrides else self.sampling

        async def act(episode: Episode) -> Generation:
            partial = episode.recorder.pending  # a turn cut short: continue it with the tokens it has left
            params = sampling
            if partial is not None:
                params = replace(sampling, max_new_tokens=sampling.max_new_tokens - len(partial.token_ids))
            return await engine.generate(
                episode.recorder.prompt(), params, affinity=episode.recorder.ids.traj_id
            )

        return act

    def expert_policy(self, rng: random.Random) -> Policy:
        """Scripted expert as a policy: its text tokenised as if generated (log-prob 0, version 0)."""

        async def act(episode: Episode) -> Generation:
            ids = self.fmt.text_ids(episode.env.expert_action(rng))[: self.sampling.max_new_tokens - 1]
            ids.append(self.fmt.im_end)
            return Generation(ids, [0.0] * len(ids), [0] * len(ids), "stop")

        return act

    # ------------------------------------------------------------------ episodes and groups
    def next_group_id(self) -> int:
        # Unique across workers: worker id in the high bits, a local counter below.
        gid = (self.worker_id << 32) | self.groups_started
        self.groups_started += 1
        return gid

    async def run_episode(self, task: Task, ids: RowIds, policy: Policy) -> Episode:
        env = make_env(self.env_name, self.env_params)
        episode = Episode(env, task, EpisodeRecorder(self.fmt, env.prompt_mode, self.max_seq_len, ids))
        rec = episode.recorder
        try:
            rec.start(await env.reset(task))
            for _ in range(env.max_turns):
                if not rec.fits(self.sampling.max_new_tokens):
                    break
                gen = await self._generate(policy, episode)
                text = self.fmt.decode(gen.token_ids)
                result = await env.step(text)
                rec.generated_texts.append(text)
                rec.add_turn(gen, result)
                episode.generated_tokens += len(gen.token_ids)
                episode.reward += result.reward
                episode.n_tool_calls = result.info.n_tool_calls
                if result.done:
                    episode.success = result.info.won
                    episode.terminated = result.terminated
                    episode.incomplete = bool(result.info.extra.get("incomplete", False))
                    break
            if not rec.done:  # the sequence budget or the env's own turn limit ran out
                rec.cut()
                episode.incomplete = True
        finally:
            env.close()
        return episode

    async def _generate(self, policy: Policy, episode: Episode) -> Generation:
        """The policy's generation, resumed while an engine returns it cut short (``abort``: a weight update).

        The resumed request continues from the tokens so far with the remaining token budget, so one turn can
        carry several policy versions, each token tagged with its own.
        """
        gen = await policy(episode)
        while gen.finish_reason == "abort" and len(gen.token_ids) < self.sampling.max_new_tokens:
            if self.partial == "drop":
                raise TurnAborted
            self.counters["agent/turns_resumed"] += 1
            episode.recorder.pending = gen  # prompt() now ends with the partial turn
            more = await policy(episode)
            episode.recorder.pending = None
            gen = Generation(
                gen.token_ids + more.token_ids,
                gen.logprobs + more.logprobs,
                gen.versions + more.versions,
                more.finish_reason,
            )
        if gen.finish_reason == "abort":
            gen.finish_reason = "length"
        return gen

    async def run_group(self, task: Task, group_size: int, policy: Policy) -> GroupResult:
        """The task's G episodes; with ``partial = "drop"`` a group with a turn cut short is played again
        (its other episodes are cancelled: a group is trained whole or not at all)."""
        env_id = env_id_of(self.env_name)
        while True:
            gid = self.next_group_id()
            row_ids = [
                RowIds(gid, gid * 1024 + i, task.task_id, env_id, self.worker_id) for i in range(group_size)
            ]
            aborted = False
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(self.run_episode(task, ids, policy)) for ids in row_ids]
            except* TurnAborted:
                aborted = True
            if not aborted:
                return self._collect(task, gid, [t.result() for t in tasks])
            self.counters["agent/groups_regenerated"] += 1

    async def run_groups(
        self,
        tasks: Iterable[Task],
        group_size: int,
        policy: Policy,
        max_concurrent_episodes: int | None = None,
    ) -> list[GroupResult]:
        """Every task's group, in task order; at most ``max_concurrent_episodes`` episodes at once."""
        limit = asyncio.Semaphore(max(1, (max_concurrent_episodes or 1 << 30) // group_size))

        async def bounded(task: Task) -> GroupResult:
            async with limit:
                return await self.run_group(task, group_size, policy)

        return list(await asyncio.gather(*(bounded(t) for t in tasks)))

    def _collect(self, task: Task, gid: int, members: list[Episode]) -> GroupResult:
        rows: list[TensorDict] = []
        for e in members:
            generated = [t for ids in e.recorder.generated_ids for t in ids]
            rows += e.recorder.rows(
                outcome_reward=e.reward,
                success=e.success,
                n_tool_calls=e.n_tool_calls,
                incomplete=e.incomplete,
                repetitive=is_repetitive(torch.tensor(generated), *self.ngram) if generated else False,
                unreadable=any(is_unreadable(t) for t in e.recorder.generated_texts),
            )
        return GroupResult(
            task,
            gid,
            rows,
            [e.reward for e in members],
            [e.success for e in members],
            sum(e.generated_tokens for e in members),
        )
