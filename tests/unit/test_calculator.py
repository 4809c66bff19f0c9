"""Rules, rewards, the safe evaluator and the noisy expert of calculator (envs/calculator.py)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from envs.base import StepResult, Task
from envs.calculator import MAX_ABS_VALUE, CalcError, CalculatorEnv, safe_eval
from envs.registry import make_env
from spear_stream.config import ConfigError

TASK = Task(task_id=0, seed=4)


def _problem(env: CalculatorEnv, task: Task = TASK) -> tuple[str, int]:
    """The expression of ``task`` (from the user message) and its value."""
    obs = asyncio.run(env.reset(task))
    text = obs.messages[1]["content"]
    assert text.startswith("Compute ") and text.endswith(".")
    expression = text[len("Compute ") : -1]
    return expression, safe_eval(expression)


def _play(env: CalculatorEnv, actions: list[str], task: Task = TASK) -> list[StepResult]:
    async def run() -> list[StepResult]:
        await env.reset(task)
        return [await env.step(a) for a in actions]

    return asyncio.run(run())


# ---------------------------------------------------------------------------------------------- evaluator


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("347*29", 10063),
        ("2+3*4", 14),
        ("(2+3)*4", 20),
        ("10-4-3", 3),
        ("2*3+4*5", 26),
        ("17//5", 3),
        ("-17//5", -4),
        ("-(3-10)", 7),
        (" 1 + 2 ", 3),
        ("((((7))))", 7),
        ("+5", 5),
    ],
)
def test_evaluator_precedence_and_parentheses(expr: str, value: int) -> None:
    assert safe_eval(expr) == value


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("", "empty expression"),
        ("   ", "empty expression"),
        ("__import__('os')", "only integers"),
        ("x+1", "only integers"),
        ("(1).__class__", "only integers"),
        ("2**999999", "unsupported syntax"),
        ("9**9**9**9", "unsupported syntax"),
        ("7/2", "use // for division"),
        ("1.5*2", "only integers"),
        ("1e9", "only integers"),
        ("5//0", "division by zero"),
        ("1+", "bad expression"),
        ("(1", "bad expression"),
        ("012", "bad expression"),
        ("()", "unsupported syntax"),  # an empty tuple
        ("(1,2)", "only integers"),
        ("1*" * 40 + "1", "expression too long"),
        ("9" * 31, "number too large"),
        ("999999999999999*999999999999999*99", "number too large"),
        ("1 2", "bad expression"),
        ("٣+1", "only integers"),
    ],
)
def test_evaluator_rejects(expr: str, reason: str) -> None:
    with pytest.raises(CalcError, match=reason):
        safe_eval(expr)


def test_evaluator_is_fast_on_hostile_input() -> None:
    start = time.perf_counter()
    for expr in ["(" * 60, "9" * 64, "2**10**10", "-" * 64 + "1", "99999*" * 10 + "9"]:
        with pytest.raises(CalcError):
            safe_eval(expr)
    assert safe_eval("-" * 62 + "1") == 1
    assert time.perf_counter() - start < 5.0  # unguarded, 2**10**10 alone would run for hours
    assert safe_eval(str(MAX_ABS_VALUE)) == MAX_ABS_VALUE


# ---------------------------------------------------------------------------------------------- episodes


def test_prompt_and_problem_shapes() -> None:
    env = make_env("calculator")
    obs = asyncio.run(env.reset(TASK))
    assert [m["role"] for m in obs.messages] == ["system", "user"]
    assert obs.messages[0]["content"] == (
        "Tools: <call>calc EXPR</call> -> value (integers, + - * // ( )). Finish: \\boxed{N}. Turns: 4."
    )
    assert env.tools[0]["function"]["name"] == "calc"
    for difficulty, (n_mul, n_add) in {1: (1, 0), 2: (1, 1), 3: (2, 1)}.items():
        expression, _ = _problem(make_env("calculator", {"difficulty": difficulty}))
        assert (expression.count("*"), expression.count("+")) == (n_mul, n_add)
        operands = expression.replace("*", " ").replace("+", " ").split()
        assert all(10 <= int(x) <= 999 for x in operands)


def test_tool_then_answer_wins() -> None:
    env = make_env("calculator")
    expression, value = _problem(env)
    call, answer = _play(env, [f"<call>calc {expression}</call>", f"The result is \\boxed{{{value}}}."])
    assert call.observation.messages == [{"role": "tool", "content": str(value)}]
    assert not call.done and call.reward == 0.0 and call.info.n_tool_calls == 1
    assert call.info.anchor == f"Compute {expression}."
    assert answer.terminated and answer.info.won and answer.reward == 1.0 and answer.info.n_tool_calls == 1
    assert answer.info.anchor == str(value)


def test_chained_calls_win() -> None:
    env = make_env("calculator", {"difficulty": 3})
    expression, value = _problem(env)
    product_1, product_2 = expression.split("+")

    async def run() -> list[StepResult]:
        await env.reset(TASK)
        results = [
            await env.step(f"<call>calc {product_1}</call>"),
            await env.step(f"<call>calc {product_2}</call>"),
        ]
        first, second = (r.observation.messages[0]["content"] for r in results)
        results.append(await env.step(f"<call>calc {first}+{second}</call>"))
        results.append(await env.step(f"\\boxed{{{results[-1].observation.text}}}"))
        return results

    results = asyncio.run(run())
    assert results[2].observation.messages[0]["content"] == str(value)
    assert [r.info.n_tool_calls for r in results] == [1, 2, 3, 3]
    assert results[3].info.won and results[3].reward == 1.0 and results[3].terminated


def test_last_boxed_answer_counts() -> None:
    env = make_env("calculator")
    _, value = _problem(env)
    (right,) = _play(env, [f"\\boxed{{0}} no wait \\boxed{{{value}}}"])
    (wrong,) = _play(env, [f"\\boxed{{{value}}} no wait \\boxed{{0}}"])
    assert right.info.won and right.reward == 1.0
    assert not wrong.info.won and wrong.reward == -1.0 and wrong.terminated


@pytest.mark.parametrize("content", ["abc", "", "1.5", "  "])
def test_unparsable_boxed_answer_is_wrong(content: str) -> None:
    (result,) = _play(make_env("calculator"), [f"\\boxed{{{content}}}"])
    assert result.terminated and result.reward == -1.0 and result.info.action_valid


def test_tool_error_is_a_tool_message_and_counts() -> None:
    results = _play(
        make_env("calculator"), ["<call>calc 1/0</call>", "<call>calc</call>", "<call>calc 5//0</call>"]
    )
    assert [r.observation.messages[0] for r in results] == [
        {"role": "tool", "content": "error: use // for division"},
        {"role": "tool", "content": "error: empty expression"},
        {"role": "tool", "content": "error: division by zero"},
    ]
    assert [r.info.n_tool_calls for r in results] == [1, 2, 3]
    assert all(r.info.action_valid and not r.done for r in results)


def test_no_answer_by_the_turn_limit_is_incomplete() -> None:
    env = make_env("calculator")
    results = _play(env, ["<call>calc 1+1</call>"] * env.max_turns)
    assert not any(r.done for r in results[:-1])
    last = results[-1]
    assert last.truncated and not last.terminated and last.reward == -1.0
    assert last.info.extra == {"incomplete": True, "reason": "turn_limit"}
    with pytest.raises(RuntimeError, match="after the episode ended"):
        asyncio.run(env.step("\\boxed{2}"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I think it is 42",
        "<call>calc 1+1</call><call>calc 2+2</call>",
        "<call>calc 1+1</call> \\boxed{2}",
        "<call>python print(1)</call>",
        "<call>calc 1+1",
        "<call></call>",
        "\\boxed{{5}}",
        "x" * 10_000,
    ],
)
def test_malformed_output_is_an_invalid_step(text: str) -> None:
    env = make_env("calculator")
    (result,) = _play(env, [text])
    assert not result.info.action_valid and not result.done and result.reward == 0.0
    assert result.observation.messages == [{"role": "user", "content": "invalid action"}]
    assert result.info.n_tool_calls == 0 and result.info.extra["error"]


def test_end_on_invalid_option() -> None:
    (result,) = _play(make_env("calculator", {"end_on_invalid": True}), ["no action here"])
    assert result.terminated and result.reward == -1.0 and result.info.extra["reason"] == "invalid"


def test_splits_differ_and_replay() -> None:
    env = make_env("calculator")
    train = [_problem(env, Task(s, s, "train"))[0] for s in range(10)]
    test = [_problem(env, Task(s, s, "test"))[0] for s in range(10)]
    assert all(a != b for a, b in zip(train, test))
    assert train == [_problem(env, Task(s, s, "train"))[0] for s in range(10)]


def test_params_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"env\.params\.difficulty"):
        make_env("calculator", {"difficulty": 4})
    with pytest.raises(ConfigError, match=r"env\.params\.nope"):
        make_env("calculator", {"nope": 1})


# ---------------------------------------------------------------------------------------------- expert


def _expert_success(params: dict, episodes: int) -> tuple[float, float]:
    env = make_env("calculator", params)

    async def run() -> tuple[float, float]:
        wins = calls = 0
        for seed in range(episodes):
            await env.reset(Task(seed, seed))
            rng = random.Random(seed)
            result = await env.step(env.expert_action(rng))
            while not result.done:
                assert result.info.action_valid
                result = await env.step(env.expert_action(rng))
            wins += result.info.won
            calls += result.info.n_tool_calls
        return wins / episodes, calls / episodes

    return asyncio.run(run())


def test_noisy_expert_success_band() -> None:
    rates = {d: _expert_success({"difficulty": d}, 1000) for d in (1, 2, 3)}
    summary = ", ".join(
        f"difficulty {d}: {rate:.1%} ({calls:.2f} calls)" for d, (rate, calls) in rates.items()
    )
    print(f"calculator noisy expert success over 1000 episodes: {summary}")
    assert 0.40 <= rates[2][0] <= 0.60  # the default difficulty
    assert rates[1][0] > rates[2][0] > rates[3][0] > 0.25


def test_noise_free_expert_always_wins() -> None:
    for difficulty in (1, 2, 3):
        rate, calls = _expert_success(
            {"difficulty": difficulty, "expert_skip_tool": 0, "expert_typo": 0}, 100
        )
        assert rate == 1.0 and calls == difficulty
