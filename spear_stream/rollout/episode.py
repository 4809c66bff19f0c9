"""Turning one episode (prompts, generations, environment replies) into schema rows.

``chat`` mode: one growing token sequence, one row; tool/environment tokens are masked out of the loss.
``window`` mode: each step's prompt is rendered afresh by the environment; one row per step.
Both keep the engine's token ids and log-probs untouched (never re-tokenise generated text).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tensordict import TensorDict

from envs.base import Observation, StepResult
from spear_stream.rollout.chat import ChatFormat
from spear_stream.rollout.engine import Generation
from spear_stream.schema import anchor_key_of, make_row


@dataclass
class _Segment:
    """One row under construction: tokens with per-token loss mask, behaviour log-prob and version."""

    tokens: list[int] = field(default_factory=list)
    loss_mask: list[bool] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    version: list[int] = field(default_factory=list)
    prompt_length: int = 0
    step_reward: float = 0.0
    action_valid: bool = True
    overlong: bool = False
    anchor: str = ""

    def add_context(self, ids: list[int]) -> None:
        self.tokens += ids
        self.loss_mask += [False] * len(ids)
        self.logp += [0.0] * len(ids)
        self.version += [-1] * len(ids)

    def add_generation(self, gen: Generation) -> None:
        self.tokens += gen.token_ids
        self.loss_mask += [True] * len(gen.token_ids)
        self.logp += gen.logprobs
        self.version += gen.versions


@dataclass
class RowIds:
    group_id: int
    traj_id: int
    task_id: int
    env_id: int
    worker_id: int


class EpisodeRecorder:
    """Records one episode in ``chat`` or ``window`` mode and emits its rows when it ends."""

    def __init__(self, fmt: ChatFormat, mode: str, max_seq_len: int, ids: RowIds) -> None:
        if mode not in ("chat", "window"):
            raise ValueError(f"unknown prompt mode {mode!r}")
        self.fmt, self.mode, self.max_seq_len, self.ids = fmt, mode, max_seq_len, ids
        self.segments: list[_Segment] = []
        self.done = False
        self.truncated_by_length = False
        self.generated_texts: list[str] = []
        self.generated_ids: list[list[int]] = []
        self.pending: Generation | None = None  # a turn cut short by the engine, being resumed

    # ---------------------------------------------------------------- building
    def start(self, obs: Observation) -> None:
        seg = _Segment(anchor=obs.text)
        seg.add_context(self.fmt.messages_ids(obs.messages) + self.fmt.generation_prompt)
        seg.prompt_length = len(seg.tokens)
        self.segments.append(seg)

    def prompt(self) -> list[int]:
        """The next request's tokens: the row so far, plus the partial turn being resumed (if any)."""
        tokens = self.segments[-1].tokens
        return tokens + self.pending.token_ids if self.pending is not None else tokens

    def fits(self, max_new_tokens: int) -> bool:
        """Whether another turn of ``max_new_tokens`` fits into ``max_seq_len`` (else the episode is cut)."""
        return len(self.segments[-1].tokens) + max_new_tokens <= self.max_seq_len

    def add_turn(self, gen: Generation, result: StepResult) -> None:
        seg = self.segments[-1]
        seg.add_generation(gen)
        self.generated_ids.append(gen.token_ids)
        seg.step_reward += result.reward
        seg.action_valid = seg.action_valid and result.info.action_valid
        if gen.finish_reason == "length":
            seg.overlong = True
            seg.add_context([self.fmt.im_end])  # close the turn so the conversation stays well-formed
        if result.done:
            self.done = True
            return
        if self.mode == "chat":
            seg.add_context(self.fmt.newline + self.fmt.messages_ids(result.observation.messages))
            seg.add_context(self.fmt.generation_prompt)
        else:
            self.start(result.observation)

    def cut(self) -> None:
        """End the episode because the sequence budget ran out (rows are kept, flagged overlong)."""
        self.done = True
        self.truncated_by_length = True
        if self.mode == "window" and self.segments and not any(self.segments[-1].loss_mask):
            self.segments.pop()  # a prompt with no response is not a row
        if self.segments:
            self.segments[-1].overlong = True

    # ---------------------------------------------------------------- rows
    def rows(
        self,
        *,
        outcome_reward: float,
        success: bool,
        n_tool_calls: int,
        incomplete: bool,
        repetitive: bool,
        unreadable: bool,
    ) -> list[TensorDict]:
        out = []
        for step_idx, seg in enumerate(s for s in self.segments if any(s.loss_mask)):
            row_incomplete = incomplete or (self.mode == "window" and not seg.action_valid)
            out.append(
                make_row(
                    tokens=seg.tokens,
                    loss_mask=seg.loss_mask,
                    behavior_logp=seg.logp,
                    token_version=seg.version,
                    prompt_length=seg.prompt_length,
                    outcome_reward=outcome_reward,
                    step_reward=seg.step_reward,
                    n_tool_calls=n_tool_calls,
                    action_valid=seg.action_valid,
                    success=success,
                    overlong=seg.overlong,
                    incomplete=row_incomplete,
                    repetitive=repetitive,
                    unreadable=unreadable,
                    group_id=self.ids.group_id,
                    traj_id=self.ids.traj_id,
                    step_idx=step_idx,
                    anchor_key=anchor_key_of(seg.anchor),
                    task_id=self.ids.task_id,
                    env_id=self.ids.env_id,
                    worker_id=self.ids.worker_id,
                )
            )
        return out
