"""Math with a Python code interpreter (ReTool / SPEAR math setting, docs/environments.md section 3).

``chat`` mode. ``reset`` returns a system message (the ``code_interpreter`` tool in Hermes format) and the
problem followed by SPEAR's answer-format suffix. Each assistant turn is one of

* one or more Hermes tool calls (``hermes.py``): each ``code_interpreter`` call runs in the sandbox
  (``envs.tools.sandbox``) and its output (stdout, or the traceback / error, like SandboxFusion) comes back as a
  ``tool`` message ``<tool_response>\\n...\\n</tool_response>``; the turn counts once in ``info.n_tool_calls``;
* a malformed call (bad JSON, unbalanced tags, unknown tool, no string ``code``, too many calls): an invalid
  step (``info.action_valid = False``) answered by a ``tool`` message with the error; nothing runs;
* anything else is the final answer and ends the episode: +1 if the strict last ``\\boxed{}`` (``eval.py``)
  equals the answer, else -1. No box: -1 and ``info.extra["incomplete"] = True``, except that, as in SPEAR's
  reward (``tool_calls_clear_incomplete``), an episode that made tool calls stays a plain negative.

After ``max_turns`` assistant turns without a final answer the episode is truncated with -1 (the calls of that
last turn are counted but not run). Splits: ``train`` / ``test`` are generated problems (``problems.py``; the
task seed picks the problem), ``aime24`` / ``aime25`` are the AIME sets (``Task.task_id`` indexes them, modulo
30); ``test_set`` can make ``test`` serve an AIME set. Stepping before ``reset`` or after the end raises.
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from envs.base import Env, Message, Observation, StepInfo, StepResult, Task
from envs.config_fields import spec
from envs.math_code.eval import boxed_answer
from envs.math_code.hermes import format_tool_call, parse_tool_calls, tool_response, tools_system_prompt
from envs.math_code.problems import AIME_SPLITS, FAMILIES, Problem, aime_problems, generated_problem
from envs.tools.sandbox import SandboxLimits, check_packages, run_python

ANSWER_FORMAT_SUFFIX = (
    "\nThe answer format must be: \\boxed{'The final answer goes here.'}"  # SPEAR retool.py
)
TOOL_NAME = "code_interpreter"
SYSTEM_PREFACE = (
    "You are a helpful assistant that solves math problems step by step. You can run Python code with the "
    "code_interpreter tool; print every value you need to see. When you know the answer, reply without a tool "
    "call and end with the final answer in \\boxed{}."
)
DEFAULT_PREAMBLE = "import math\nimport itertools\nimport functools\nimport collections\nimport fractions"
_PLAIN_INTEGER_RE = re.compile(r"-?[0-9]+", re.ASCII)


@dataclass
class MathCodeParams:
    max_turns: int = spec(8, lo=1, hi=64, help="assistant turns per episode (SPEAR: 8)")
    families: list[str] = field(default_factory=list)  # generated problem families; empty = all
    test_set: Literal["generated", "aime24", "aime25"] = "generated"  # what the `test` split serves
    correct_reward: float = 1.0
    wrong_reward: float = -1.0  # also no box, and the turn limit
    tool_calls_clear_incomplete: bool = True  # SPEAR: a no-box rollout that called tools is not "incomplete"
    max_calls_per_turn: int = spec(4, lo=1, help="more calls in one turn make the turn invalid")
    # sandbox (envs/tools/sandbox.py)
    timeout_s: float = spec(10.0, lo=0.0, lo_open=True)
    cpu_s: int = spec(10, lo=1)
    memory_mb: int = spec(1024, lo=64)
    max_processes: int = spec(8, lo=1)
    max_concurrent_calls: int = spec(
        0, lo=0, help="sandbox calls at once on the host (0 = sized to its memory)"
    )
    host_memory_fraction: float = spec(
        0.5, lo=0.0, hi=1.0, lo_open=True, help="host memory sandbox calls may use"
    )
    max_output_bytes: int = spec(4096, lo=64, help="stdout and stderr each, per call")
    preamble: str = DEFAULT_PREAMBLE
    packages: list[str] = field(default_factory=list)  # e.g. ["numpy", "sympy", "mpmath"]
    isolation: Literal["auto", "namespaces", "none"] = "auto"
    expert_skip_tool: float = spec(0.0, lo=0.0, hi=1.0, help="expert noise: box a wrong guess at once")


class MathCodeEnv(Env):
    name = "math_code"
    prompt_mode = "chat"
    Params = MathCodeParams
    tools = [  # noqa: RUF012 - a ClassVar in the base class
        {
            "type": "function",
            "function": {
                "name": TOOL_NAME,
                "description": "A tool for executing code.",
                "parameters": {
                    "type": "object",
                    "properties": {"code": {"type": "string", "description": "The code to execute."}},
                    "required": ["code"],
                },
            },
        }
    ]

    def __init__(self, params: MathCodeParams | None = None) -> None:
        super().__init__(params)
        self.params: MathCodeParams
        p = self.params
        unknown = sorted(set(p.families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"math_code: unknown problem families {unknown}; known: {sorted(FAMILIES)}")
        check_packages(p.packages)
        self.limits = SandboxLimits(
            timeout_s=p.timeout_s,
            cpu_s=p.cpu_s,
            memory_mb=p.memory_mb,
            max_processes=p.max_processes,
            max_concurrent_calls=p.max_concurrent_calls,
            host_memory_fraction=p.host_memory_fraction,
            max_output_bytes=p.max_output_bytes,
            preamble=p.preamble,
            packages=tuple(p.packages),
            isolation=p.isolation,
        )
        self.problem = Problem("", "")
        self._started = self._done = False
        self._turn = self._n_calls = 0
        self._last_output: str | None = None  # output of the latest successful call (the expert boxes it)

    @property
    def max_turns(self) -> int:
        return self.params.max_turns

    def problem_for(self, task: Task) -> Problem:
        split = (
            self.params.test_set
            if task.split == "test" and self.params.test_set != "generated"
            else task.split
        )
        if split in AIME_SPLITS:
            problems = aime_problems(split)
            return problems[task.task_id % len(problems)]
        return generated_problem(split, task.seed, self.params.families or None)

    async def reset(self, task: Task) -> Observation:
        self.problem = self.problem_for(task)
        self._started, self._done = True, False
        self._turn = self._n_calls = 0
        self._last_output = None
        question = self.problem.text + ANSWER_FORMAT_SUFFIX
        messages: list[Message] = [
            {"role": "system", "content": tools_system_prompt(SYSTEM_PREFACE, self.tools)},
            {"role": "user", "content": question},
        ]
        return Observation(messages, self.problem.text)

    async def step(self, action_text: str) -> StepResult:
        if not self._started:
            raise RuntimeError(f"{self.name}: step() before reset()")
        if self._done:
            raise RuntimeError(f"{self.name}: step() after the episode ended; call reset() first")
        self._turn += 1
        last_turn = self._turn >= self.max_turns
        parsed = parse_tool_calls(action_text)
        if not parsed.has_tags:
            return self._final_answer(action_text)

        error = parsed.error or self._call_error(parsed.calls)
        if error is not None:
            message = f"Error: {error}. Call the tool as " + format_tool_call(
                TOOL_NAME, {"code": "print(1 + 1)"}
            )
            return self._finish(
                [tool_response(message)], message, valid=False, truncated=last_turn, error=error
            )

        self._n_calls += 1
        if last_turn:  # no turn is left to read the output: do not run it
            return self._finish([], "", truncated=True)
        messages, outputs, failures = [], [], 0
        for call in parsed.calls:
            result = await asyncio.to_thread(run_python, call.arguments["code"], limits=self.limits)
            messages.append(tool_response(result.text))
            outputs.append(result.text)
            failures += not result.ok
            if result.ok:
                self._last_output = result.stdout
        return self._finish(messages, "\n".join(outputs), tool_failures=failures)

    def expert_action(self, rng: random.Random) -> str:
        """Run the problem's reference program, then box the integer it printed (generated problems only).

        Noise: ``expert_skip_tool`` boxes a wrong guess on the first turn without calling the tool.
        """
        if self.problem.code is None:
            raise NotImplementedError(f"{self.name}: no scripted expert for {self.problem.family} problems")
        if self._turn == 0 and rng.random() < self.params.expert_skip_tool:
            return f"I estimate the answer directly.\n\n\\boxed{{{self._wrong_guess(rng)}}}"
        printed = (self._last_output or "").strip()
        if _PLAIN_INTEGER_RE.fullmatch(printed):
            return f"The program printed {printed}, so the answer is\n\n\\boxed{{{printed}}}"
        if self._turn + 1 >= self.max_turns:  # no turn left for a call: guess rather than be truncated
            return f"\\boxed{{{self._wrong_guess(rng)}}}"
        call = format_tool_call(TOOL_NAME, {"code": self.problem.code})
        return f"Let me compute this exactly with Python.\n{call}"

    # ------------------------------------------------------------------------------------------- internals

    def _call_error(self, calls: tuple[Any, ...]) -> str | None:
        if len(calls) > self.params.max_calls_per_turn:
            return f"at most {self.params.max_calls_per_turn} tool calls per turn"
        for call in calls:
            if call.name != TOOL_NAME:
                return f"unknown tool {call.name[:40]!r} (the only tool is {TOOL_NAME})"
            if not isinstance(call.arguments.get("code"), str):
                return f'{TOOL_NAME} needs a string argument "code"'
        return None

    def _final_answer(self, text: str) -> StepResult:
        predicted = boxed_answer(text)
        won = predicted is not None and predicted == self.problem.answer.strip()
        reward = self.params.correct_reward if won else self.params.wrong_reward
        return self._finish([], "", reward=reward, terminated=True, won=won, predicted=predicted)

    def _finish(
        self,
        messages: list[Message],
        obs_text: str,
        *,
        reward: float = 0.0,
        terminated: bool = False,
        truncated: bool = False,
        valid: bool = True,
        won: bool = False,
        predicted: str | None = None,
        error: str | None = None,
        tool_failures: int = 0,
    ) -> StepResult:
        extra: dict[str, Any] = {}
        if error is not None:
            extra["error"] = error
        if tool_failures:
            extra["tool_failures"] = tool_failures
        if terminated or truncated:
            self._done = True
            if truncated:
                reward = self.params.wrong_reward
            no_box = predicted is None
            cleared = self.params.tool_calls_clear_incomplete and self._n_calls > 0
            extra.update(
                reason="answer" if terminated else "turn_limit",
                predicted=predicted,
                answer=self.problem.answer,
                no_box=no_box,
                incomplete=no_box and not cleared,
            )
        info = StepInfo(won=won, action_valid=valid, n_tool_calls=self._n_calls, extra=extra)
        return StepResult(Observation(messages, obs_text), reward, terminated, truncated, info)

    def _wrong_guess(self, rng: random.Random) -> int:
        answer = int(self.problem.answer)
        return answer + rng.choice((-1, 1)) * rng.randint(1, 99)
