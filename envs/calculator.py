"""Calculator arithmetic (ReTool-lite, docs/environments.md 4.2): tool use is necessary to succeed.

A task is an integer expression with 2-3 digit operands that a tiny model cannot compute in its head:
``a*b`` (difficulty 1), ``a*b+c`` (2) or ``a*b+c*d`` (3). Each assistant turn is one of

* ``<call>calc EXPR</call>``: EXPR is evaluated by a safe AST evaluator (integers, + - * // and parentheses
  only; never ``eval``); the tool message is the value, e.g. ``10063``, or ``error: REASON``. Both count as a
  tool call;
* ``\\boxed{N}`` (anywhere in the text; the last one counts): ends the episode with +1 if N equals the value,
  else -1 (math_dapo semantics).

No boxed answer within ``max_turns`` turns: reward -1 and ``info.extra["incomplete"] = True``. Unparseable
output is an invalid step (the trainer applies the penalty from ``info.action_valid``) answered by the user
message ``invalid action``; the episode goes on unless ``end_on_invalid``. Stepping before ``reset`` or after
the episode ended raises RuntimeError.
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass
from typing import Any

from envs.base import Env, Message, Observation, StepInfo, StepResult, Task
from envs.config_fields import spec
from envs.parsing import (
    INVALID_FEEDBACK,
    boxed_answers,
    call_blocks,
    function_schema,
    parse_int,
    size_error,
    split_call,
    system_message,
    tool_message,
    user_message,
)

MAX_EXPR_CHARS = 64
MAX_ABS_VALUE = 10**30  # any literal or intermediate value beyond this is an error (bounds the work per call)
_EXPR_CHARS_RE = re.compile(r"[0-9+\-*/() ]*", re.ASCII)
_BINARY_OPS = {
    ast.Add: int.__add__,
    ast.Sub: int.__sub__,
    ast.Mult: int.__mul__,
    ast.FloorDiv: int.__floordiv__,
}


class CalcError(ValueError):
    """A bad calculator expression; the message becomes the tool reply ``error: <message>``."""


def safe_eval(expr: str) -> int:
    """Evaluate an integer expression of + - * // and parentheses; raise CalcError on anything else."""
    expr = expr.strip()
    if not expr:
        raise CalcError("empty expression")
    if len(expr) > MAX_EXPR_CHARS:
        raise CalcError("expression too long")
    if not _EXPR_CHARS_RE.fullmatch(expr):
        raise CalcError("only integers and + - * // ( ) allowed")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalcError("bad expression") from None
    return _eval_node(tree.body)


def _eval_node(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        value = node.value
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _eval_node(node.operand)
        value = -operand if isinstance(node.op, ast.USub) else operand
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left, right = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.FloorDiv) and right == 0:
            raise CalcError("division by zero")
        value = _BINARY_OPS[type(node.op)](left, right)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        raise CalcError("use // for division")
    else:
        raise CalcError("unsupported syntax")
    if abs(value) > MAX_ABS_VALUE:
        raise CalcError("number too large")
    return value


# A plan step of the expert: (left, operator, right); an operand is a literal int or "#i", the i-th tool result.
Operand = int | str
PlanStep = tuple[Operand, str, Operand]


@dataclass
class CalculatorParams:
    difficulty: int = spec(2, lo=1, hi=3, help="1: a*b, 2: a*b+c, 3: a*b+c*d (expert calls: 1, 2, 3)")
    max_operand_digits: int = spec(3, lo=2, hi=9, help="operands are uniform in 10 .. 10^digits - 1")
    max_turns: int = spec(4, lo=1, hi=64)
    correct_reward: float = 1.0
    wrong_reward: float = -1.0  # also for no answer within max_turns (math_dapo semantics)
    end_on_invalid: bool = False
    expert_skip_tool: float = spec(0.2, lo=0.0, hi=1.0, help="expert noise: box a guess without calling")
    expert_typo: float = spec(0.2, lo=0.0, hi=1.0, help="expert noise per call: one operand digit wrong")


class CalculatorEnv(Env):
    name = "calculator"
    prompt_mode = "chat"
    Params = CalculatorParams
    tools = [  # noqa: RUF012 - a ClassVar in the base class
        function_schema(
            "calc",
            "Evaluate an integer expression with + - * // and parentheses.",
            "expr",
            "string",
            "the expression, e.g. 347*29+518",
        )
    ]

    def __init__(self, params: CalculatorParams | None = None) -> None:
        super().__init__(params)
        self.params: CalculatorParams
        self._started = False
        self._done = False
        self._expression = ""
        self._answer = 0
        self._plan: list[PlanStep] = []
        self._results: list[int] = []  # values returned by successful calc calls, in order
        self._turn = 0
        self._n_calls = 0
        self._obs_text = ""

    @property
    def max_turns(self) -> int:
        return self.params.max_turns

    def system_prompt(self) -> str:
        return (
            "Tools: <call>calc EXPR</call> -> value (integers, + - * // ( )). "
            f"Finish: \\boxed{{N}}. Turns: {self.max_turns}."
        )

    async def reset(self, task: Task) -> Observation:
        rng = random.Random(f"{self.name}/{task.split}/{task.seed}")  # the split makes test != train
        self._expression, self._plan = self._make_problem(rng)
        self._answer = safe_eval(self._expression)
        self._results = []
        self._turn = self._n_calls = 0
        self._started, self._done = True, False
        self._obs_text = f"Compute {self._expression}."
        return Observation(
            [system_message(self.system_prompt()), user_message(self._obs_text)], self._obs_text
        )

    async def step(self, action_text: str) -> StepResult:
        if not self._started:
            raise RuntimeError(f"{self.name}: step() before reset()")
        if self._done:
            raise RuntimeError(f"{self.name}: step() after the episode ended; call reset() first")
        self._turn += 1
        anchor = self._obs_text
        last_turn = self._turn >= self.max_turns
        kind, payload = self._parse(action_text)

        if kind == "answer":
            value = parse_int(payload.replace(",", ""), max_digits=40)
            won = value == self._answer
            reward = self.params.correct_reward if won else self.params.wrong_reward
            return self._finish([], "", anchor, reward=reward, terminated=True, won=won)
        if kind == "call":
            self._n_calls += 1
            try:
                value = safe_eval(payload)
            except CalcError as exc:
                reply = f"error: {exc}"
            else:
                self._results.append(value)
                reply = str(value)
            return self._finish([tool_message(reply)], reply, anchor, truncated=last_turn)
        ends = self.params.end_on_invalid
        return self._finish(
            [user_message(INVALID_FEEDBACK)],
            INVALID_FEEDBACK,
            anchor,
            reward=self.params.wrong_reward if ends else 0.0,
            terminated=ends,
            truncated=last_turn and not ends,
            valid=False,
            extra={"error": payload},
        )

    def expert_action(self, rng: random.Random) -> str:
        """Call calc on each sub-expression of the plan in order, then box the last result.

        Noise: ``expert_skip_tool`` boxes a (wrong) guess on the first turn; ``expert_typo`` miscopies one digit
        of an operand in a call, so the boxed result is wrong. Progress is the number of successful calc
        results so far, so the expert is meant to play whole episodes (SFT data, the conformance suite).
        """
        if self._turn == 0 and rng.random() < self.params.expert_skip_tool:
            return f"\\boxed{{{self._guess(rng)}}}"
        next_step = len(self._results)
        if next_step >= len(self._plan) or self._turn + 1 >= self.max_turns:
            return f"\\boxed{{{self._results[-1] if self._results else self._guess(rng)}}}"
        left, op, right = self._plan[next_step]
        operands = [self._resolve(left), self._resolve(right)]
        if rng.random() < self.params.expert_typo:
            which = rng.randrange(2)
            operands[which] = _miscopy_digit(operands[which], rng)
        return f"<call>calc {operands[0]}{op}{operands[1]}</call>"

    # ------------------------------------------------------------------------------------------- internals

    def _make_problem(self, rng: random.Random) -> tuple[str, list[PlanStep]]:
        top = 10**self.params.max_operand_digits - 1
        a, b, c, d = (rng.randint(10, top) for _ in range(4))
        if self.params.difficulty == 1:
            return f"{a}*{b}", [(a, "*", b)]
        if self.params.difficulty == 2:
            return f"{a}*{b}+{c}", [(a, "*", b), ("#0", "+", c)]
        return f"{a}*{b}+{c}*{d}", [(a, "*", b), (c, "*", d), ("#0", "+", "#1")]

    def _resolve(self, operand: Operand) -> int:
        return self._results[int(operand[1:])] if isinstance(operand, str) else operand

    def _guess(self, rng: random.Random) -> int:
        """A plausible but wrong answer: the true value off by a small nonzero amount."""
        return self._answer + rng.choice((-1, 1)) * rng.randint(1, 99)

    def _parse(self, text: str) -> tuple[str, str]:
        """("call", EXPR), ("answer", BOXED_CONTENT) or ("invalid", REASON)."""
        if error := size_error(text):
            return "invalid", error
        calls = call_blocks(text)
        boxed = boxed_answers(text)
        if calls is None:
            return "invalid", "unbalanced <call> tags"
        if len(calls) > 1:
            return "invalid", "several calls"
        if calls and boxed:
            return "invalid", "a call and an answer in one turn"
        if calls:
            call = split_call(calls[0])
            if call is None or call.name != "calc":
                return "invalid", "unknown tool (use calc)"
            return "call", call.args
        if boxed:
            return "answer", boxed[-1]
        return "invalid", "no <call> or \\boxed{}"

    def _finish(
        self,
        messages: list[Message],
        obs_text: str,
        anchor: str,
        *,
        reward: float = 0.0,
        terminated: bool = False,
        truncated: bool = False,
        valid: bool = True,
        won: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> StepResult:
        extra = dict(extra or {})
        if truncated:  # out of turns without an answer
            reward = self.params.wrong_reward
            extra["incomplete"] = True
        if terminated or truncated:
            self._done = True
            extra["reason"] = "answer" if valid and terminated else "invalid" if terminated else "turn_limit"
        self._obs_text = obs_text
        info = StepInfo(won=won, action_valid=valid, n_tool_calls=self._n_calls, anchor=anchor, extra=extra)
        return StepResult(Observation(messages, obs_text), reward, terminated, truncated, info)


def _miscopy_digit(value: int, rng: random.Random) -> int:
    """``value`` with one digit replaced by a different one (never a leading zero)."""
    digits = list(str(abs(value)))
    position = rng.randrange(len(digits))
    leading = position == 0 and len(digits) > 1
    choices = [d for d in "0123456789" if d != digits[position] and not (leading and d == "0")]
    digits[position] = rng.choice(choices)
    return int("".join(digits)) * (-1 if value < 0 else 1)
