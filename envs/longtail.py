"""Long-tail relay: a synthetic multi-turn environment whose episodes and steps take very different times.

Each turn the user names a number and the agent must reply with exactly that number. How many turns an episode
has is drawn from the task seed with a heavy tail (``1 + floor(Pareto(shape))``, capped at ``max_turns``), and
every step sleeps for a log-normal time (median ``step_ms``, spread ``step_sigma``), as a tool call or a web
page would. A wrong reply is an invalid action, answered with the same request; the episode is won when every
turn was answered correctly.

It exists to measure and test the agent loop (``tools/bench_rollout.py``, ``tests/unit/test_agent_loop.py``):
with lockstep turns every episode waits for the slowest step and the longest episode of its batch; with one task
per episode only the episode itself does.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from envs.base import Env, Observation, StepInfo, StepResult, Task
from envs.config_fields import spec
from envs.parsing import INVALID_FEEDBACK, size_error, system_message, user_message


@dataclass
class LongTailParams:
    max_turns: int = spec(16, lo=1, hi=256, help="cap on an episode's turns")
    shape: float = spec(1.2, lo=0.1, help="Pareto shape of the turn count (smaller: longer tail)")
    step_ms: float = spec(20.0, lo=0.0, help="median latency of one environment step, milliseconds")
    step_sigma: float = spec(1.0, lo=0.0, help="log-normal spread of the step latency")
    success_reward: float = spec(10.0, lo=0.0)


SYSTEM = "Relay: each turn the user names a number; reply with exactly that number and nothing else."


class LongTailEnv(Env):
    name = "longtail"
    prompt_mode = "chat"
    Params = LongTailParams

    def __init__(self, params: LongTailParams | None = None) -> None:
        super().__init__(params)
        self.params: LongTailParams
        self._latency = random.Random()  # step latencies vary between episodes; observations do not
        self._turns = 0
        self._numbers: list[int] = []
        self._turn = 0
        self._correct = 0
        self._started = self._done = False

    @property
    def max_turns(self) -> int:
        return self.params.max_turns

    def _ask(self) -> str:
        return f"Turn {self._turn + 1} of {self._turns}: {self._numbers[self._turn]}"

    async def reset(self, task: Task) -> Observation:
        rng = random.Random(task.seed)
        self._turns = min(self.params.max_turns, int(rng.paretovariate(self.params.shape)))  # >= 1
        self._numbers = [rng.randrange(100) for _ in range(self._turns)]
        self._turn = self._correct = 0
        self._started, self._done = True, False
        text = self._ask()
        return Observation([system_message(SYSTEM), user_message(text)], text=text)

    async def step(self, action_text: str) -> StepResult:
        if not self._started or self._done:
            raise RuntimeError("longtail: step() before reset() or after the episode ended")
        p = self.params
        if p.step_ms > 0:
            await asyncio.sleep(self._latency.lognormvariate(0.0, p.step_sigma) * p.step_ms / 1000)
        valid = size_error(action_text) is None and action_text.strip() == str(self._numbers[self._turn])
        self._correct += valid
        self._turn += 1
        self._done = self._turn >= self._turns
        won = self._done and self._correct == self._turns
        reply = "" if self._done else self._ask()
        if not valid and not self._done:
            reply = f"{INVALID_FEEDBACK} {reply}"
        messages = [] if self._done else [user_message(reply)]
        info = StepInfo(won=won, action_valid=valid, n_tool_calls=self._turn)
        return StepResult(
            Observation(messages, text=reply), p.success_reward if won else 0.0, self._done, False, info
        )

    def expert_action(self, rng: random.Random) -> str:
        return str(self._numbers[self._turn])
