"""The environment interface (docs/design.md section 6).

One episode per env object; the trainer vectorises and groups. The environment parses the model's text into an
action (never raising on malformed text: that is an invalid step) and reports facts in :class:`StepInfo`; the
trainer turns those facts into shaped rewards and penalties. Environments import no torch.

Prompt modes (docs/algorithm.md section 1):
* ``chat``: ``reset`` returns the opening messages (system + user); each ``step`` returns the *new* messages to
  append to the conversation (tool responses, feedback). One training row per trajectory.
* ``window``: every observation carries the *complete* prompt for that step (task, the last H (observation,
  action) pairs, the current observation), rendered by the environment. One training row per step.
"""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Message = dict[str, str]  # {"role": "system"|"user"|"assistant"|"tool", "content": str}


@dataclass(frozen=True)
class Task:
    """What a group shares: the G rollouts of a group get the same task (same seed, same initial state)."""

    task_id: int
    seed: int
    split: str = "train"


@dataclass
class Observation:
    messages: list[Message]
    text: str = ""  # raw observation without history or template (GiGPO anchor state, logs)


@dataclass
class StepInfo:
    won: bool = False
    action_valid: bool = True
    n_tool_calls: int = 0  # episode total so far
    admissible_actions: list[str] | None = None
    anchor: str | None = None  # raw observation text the action was taken in (GiGPO)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    observation: Observation
    reward: float
    terminated: bool
    truncated: bool
    info: StepInfo

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


class Env(abc.ABC):
    """Base class. Subclasses set ``name``, ``prompt_mode``, ``Params`` and implement ``reset``/``step``."""

    name: ClassVar[str]
    prompt_mode: ClassVar[Literal["chat", "window"]]
    Params: ClassVar[type]  # a dataclass of the environment's own options (config table ``env.params``)
    tools: ClassVar[list[dict[str, Any]]] = []  # OpenAI-style function schemas

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @property
    @abc.abstractmethod
    def max_turns(self) -> int:
        """Hard limit on assistant turns per episode (the env truncates at this many steps)."""

    @abc.abstractmethod
    async def reset(self, task: Task) -> Observation: ...

    @abc.abstractmethod
    async def step(self, action_text: str) -> StepResult:
        """Apply the model's text. Malformed text is an invalid step (``info.action_valid=False``), never an
        exception. Calling ``step`` before ``reset`` or after the episode ended raises ``RuntimeError``;
        ``reset`` starts a new episode on the same object."""

    def expert_action(self, rng: random.Random) -> str:
        """The scripted expert's next assistant output for the current state (for SFT warm starts)."""
        raise NotImplementedError(f"{self.name} has no scripted expert")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (subprocesses, servers)."""
