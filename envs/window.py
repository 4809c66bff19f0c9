"""verl-agent style ``window`` prompts and the ``<think>``/``<action>`` projection (docs/environments.md 1.1).

Every step's prompt is rendered from scratch: the role line, the task, the last H (observation, action) pairs,
the current observation, the admissible actions and the think/action instruction. Two templates, as in
verl-agent: a first-turn template without history and a later-turn template with the step counter and history.

Deviations from verl-agent (all deliberate, all small):
* "observaitons" (a typo in verl-agent's ALFWorld and Sokoban templates) is spelled correctly.
* The closing ``</action>`` tag is searched *after* the opening tag (verl-agent takes the first ``</action>``
  anywhere, so ``</action><action>x`` would yield an empty action marked valid).
* Line breaks: ALFWorld's later-turn template puts "Your task is to: ..." on the role line; here every
  template field starts its own line. WebShop's "e‑commerce" (a non-breaking hyphen) is a plain hyphen.
* ``compact=True`` swaps the long English template for a terse one (same fields, same order) so that tiny
  CPU models with a few-hundred-token vocabulary see short prompts; it is not a verl-agent format.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from envs.base import Env, Observation, StepInfo, StepResult, Task

THINK_ACTION_INSTRUCTION = (
    "You should first reason step-by-step about the current situation. This reasoning process MUST be enclosed "
    "within <think> </think> tags. \nOnce you've finished your reasoning, you should choose an admissible action "
    "for current step and present it within <action> </action> tags."
)
COMPACT_INSTRUCTION = "Reply <think>...</think><action>...</action>."

_CHINESE = re.compile(r"[\u4e00-\u9fff]")
_ACTION_OPEN, _ACTION_CLOSE = "<action>", "</action>"


# ----------------------------------------------------------------------------------------------- projection


@dataclass(frozen=True)
class ProjectedAction:
    """The env-side action parsed from a model output, and whether the output had a valid format."""

    action: str
    valid: bool


def project_action(output: str, fallback_chars: int = 30) -> ProjectedAction:
    """verl-agent's projection: lower-cased text between the first ``<action>`` and the next ``</action>``.

    Missing action tags: the env receives the last ``fallback_chars`` characters of the lower-cased output
    (30 for ALFWorld, 20 for WebShop; the game answers "Nothing happens.") and the step is invalid.
    Also invalid (but the action is still executed): a missing ``<think>`` or ``</think>`` tag, or any Chinese
    character. Validity is format only; a well-formed but inadmissible action is valid.
    """
    if not isinstance(output, str):  # hostile callers: bytes or None never raise
        output = output.decode("utf-8", "replace") if isinstance(output, bytes | bytearray) else str(output)
    lowered = output.lower()
    start = lowered.find(_ACTION_OPEN)
    end = lowered.find(_ACTION_CLOSE, start + len(_ACTION_OPEN)) if start != -1 else -1
    if start == -1 or end == -1:
        return ProjectedAction(lowered[-fallback_chars:] if fallback_chars > 0 else "", False)
    action = lowered[start + len(_ACTION_OPEN) : end].strip()
    valid = "<think>" in output and "</think>" in output and not _CHINESE.search(output)
    return ProjectedAction(action, valid)


def format_response(reasoning: str, action: str) -> str:
    """An assistant output in the expected format (used by the scripted experts)."""
    return f"<think>{reasoning}</think><action>{action}</action>"


# ----------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class WindowStyle:
    """What differs between the verl-agent templates of ALFWorld, WebShop and Sokoban.

    role_line: "You are an expert agent operating in the ...".
    preamble: text between the role line and the step (Sokoban's symbol legend and rules).
    task_in_first_turn: WebShop states "Your task is to: ..." on the first turn too (ALFWorld's first
      observation already contains the task, so its first-turn template omits it).
    task_in_later_turns: ALFWorld and WebShop repeat the task on later turns; Sokoban has no task line.
    admissible_format: "alfworld" -> ``[{'a'\\n 'b'}].``; "webshop" -> ``[\\n'a',\\n'b',\\n].``;
      "fixed" -> the literal ``fixed_admissible`` line (Sokoban's four moves).
    observation_on_new_line: Sokoban puts the grid on its own lines.
    history_format: "alfworld" -> ``[Observation k: 'obs', Action k: 'act']``;
      "sokoban" -> ``[Text Observation k: \\nobs\\nAction k: 'act']``.
    turn_line: the sentence before the instruction (verl-agent varies it per environment).
    history_char_limit: verl-agent's WebShop renders the no-history template when the prompt with history
      exceeds 13,000 characters; 0 disables the check.
    """

    role_line: str
    preamble: str = ""
    task_in_first_turn: bool = False
    task_in_later_turns: bool = True  # Sokoban has no task line at all
    task_period: bool = False  # WebShop's template appends "." after the task
    admissible_format: Literal["alfworld", "webshop", "fixed"] = "alfworld"
    fixed_admissible: str = ""
    observation_on_new_line: bool = False
    observation_period: bool = False  # WebShop's template appends "." after the observation
    history_format: Literal["alfworld", "sokoban"] = "alfworld"
    turn_line: str = "Now it's your turn to take an action."
    instruction: str = THINK_ACTION_INSTRUCTION
    history_char_limit: int = 0  # WebShop: a prompt with history longer than this falls back to no history


@dataclass(frozen=True)
class HistoryEntry:
    observation: str  # the raw observation the action was taken in
    action: str  # the projected action the env executed


def format_admissible(style: WindowStyle, actions: Sequence[str], compact: bool = False) -> str:
    if style.admissible_format == "fixed":
        return style.fixed_admissible
    if compact:
        return "Actions: [" + ", ".join(f"'{a}'" for a in actions) + "]"
    if style.admissible_format == "webshop":
        body = "\n".join(f"'{a}'," for a in actions)
        return f"Your admissible actions of the current situation are: \n[\n{body}\n]."
    body = "\n ".join(f"'{a}'" for a in actions)
    return f"Your admissible actions of the current situation are: [{body}]."


def format_history(style: WindowStyle, entries: Sequence[HistoryEntry], first_step_number: int) -> str:
    lines = []
    for offset, entry in enumerate(entries):
        k = first_step_number + offset
        if style.history_format == "sokoban":
            lines.append(f"[Text Observation {k}: \n{entry.observation}\nAction {k}: '{entry.action}']")
        else:
            lines.append(f"[Observation {k}: '{entry.observation}', Action {k}: '{entry.action}']")
    return "\n".join(lines)


def render_prompt(
    style: WindowStyle,
    *,
    task: str,
    history: Sequence[HistoryEntry],
    observation: str,
    admissible: Sequence[str],
    history_length: int = 2,
    compact: bool = False,
) -> str:
    """The complete prompt for the current step. ``history`` is the whole episode so far (oldest first)."""
    steps_taken = len(history)
    recent = list(history[-history_length:]) if history_length > 0 else []
    if compact:
        return _render_compact(style, task, recent, steps_taken, observation, admissible)
    prompt = _render_full(style, task, recent, steps_taken, observation, admissible)
    if recent and style.history_char_limit and len(prompt) > style.history_char_limit:
        prompt = _render_full(style, task, [], 0, observation, admissible)
    return prompt


def _render_full(
    style: WindowStyle,
    task: str,
    recent: Sequence[HistoryEntry],
    steps_taken: int,
    observation: str,
    admissible: Sequence[str],
) -> str:
    sep = "\n" if style.observation_on_new_line else " "
    obs_text = observation + ("." if style.observation_period else "")
    task_text = task + ("." if style.task_period else "")
    lines = [style.role_line]
    if style.preamble:
        lines.append(style.preamble)
    if not recent:
        if style.task_in_first_turn:
            lines.append(f"Your task is to: {task_text}")
        lines.append(f"Your current observation is:{sep}{obs_text}")
    else:
        if style.task_in_later_turns:
            lines.append(f"Your task is to: {task_text}")
        history_text = format_history(style, recent, steps_taken - len(recent) + 1)
        lines.append(
            f"Prior to this step, you have already taken {steps_taken} step(s). Below are the most recent "
            f"{len(recent)} observations and the corresponding actions you took: {history_text}"
        )
        lines.append(f"You are now at step {steps_taken + 1} and your current observation is:{sep}{obs_text}")
    lines.append(format_admissible(style, admissible))
    lines.append("")
    lines.append(style.turn_line)
    lines.append(style.instruction)
    return "\n".join(lines)


def _render_compact(
    style: WindowStyle,
    task: str,
    recent: Sequence[HistoryEntry],
    steps_taken: int,
    observation: str,
    admissible: Sequence[str],
) -> str:
    lines = [f"Task: {task}"] if task else []
    if recent:
        first = steps_taken - len(recent) + 1
        lines.append(f"Steps taken: {steps_taken}. History:")
        lines.extend(f"[{first + i}] {e.observation} -> {e.action}" for i, e in enumerate(recent))
    lines.append(f"Now: {observation}")
    lines.append(format_admissible(style, admissible, compact=True))
    lines.append(COMPACT_INSTRUCTION)
    return "\n".join(lines)


@dataclass
class WindowEpisode:
    """Per-episode bookkeeping shared by the window-mode environments: task, history, current observation."""

    style: WindowStyle
    history_length: int = 2
    compact: bool = False
    task: str = ""
    observation: str = ""
    history: list[HistoryEntry] = field(default_factory=list)

    def reset(self, task: str, observation: str) -> None:
        self.task, self.observation, self.history = task, observation, []

    def advance(self, action: str, new_observation: str) -> None:
        """Record the action taken in the current observation and move to the new one."""
        self.history.append(HistoryEntry(self.observation, action))
        self.observation = new_observation

    def prompt(self, admissible: Sequence[str]) -> str:
        return render_prompt(
            self.style,
            task=self.task,
            history=self.history,
            observation=self.observation,
            admissible=admissible,
            history_length=self.history_length,
            compact=self.compact,
        )

    def messages(self, admissible: Sequence[str]) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt(admissible)}]


# ----------------------------------------------------------------------------------------------- base env


class WindowEnv(Env):
    """Shared reset/step logic of the window-mode agent environments (MiniHouse, Sokoban, WebShop).

    Subclasses implement the game through five hooks and get: prompt rendering with a history window,
    ``info.anchor`` (the raw observation the action was taken in), ``info.admissible_actions``,
    ``info.n_tool_calls`` (every env step counts), ``info.won``, ``info.action_valid``, reward
    ``success_reward`` on success else 0, and truncation at ``params.max_steps``. Malformed model output never
    raises (it is an invalid step); stepping before ``reset`` or after the episode ended raises RuntimeError.
    ``params`` must have ``max_steps``, ``history_length`` and ``compact``.
    """

    prompt_mode = "window"
    style: WindowStyle  # set by each subclass (class attribute) or per instance (adapters)
    fallback_chars: ClassVar[int] = 30
    success_reward: ClassVar[float] = 10.0

    def __init__(self, params: Any | None = None) -> None:
        super().__init__(params)
        self._episode = WindowEpisode(self.style, self.params.history_length, self.params.compact)
        self._steps = 0
        self._last: StepResult | None = None
        self._started = False

    @property
    def max_turns(self) -> int:
        return int(self.params.max_steps)

    # hooks ---------------------------------------------------------------------------------------

    @abc.abstractmethod
    def _new_episode(self, task: Task) -> tuple[str, str]:
        """Build the task's initial state; return (task description, first raw observation)."""

    @abc.abstractmethod
    def _apply(self, projected: ProjectedAction) -> tuple[str, str]:
        """Execute the projected action; return (raw feedback observation, action text for the history)."""

    @abc.abstractmethod
    def _admissible_actions(self) -> list[str]: ...

    @abc.abstractmethod
    def _is_won(self) -> bool: ...

    def _is_over(self) -> bool:
        """Episode ended for a reason other than winning (WebShop: bought the wrong thing)."""
        return False

    def _project(self, output: str) -> ProjectedAction:
        return project_action(output, self.fallback_chars)

    def _extra(self) -> dict[str, Any]:
        return {}

    # interface -----------------------------------------------------------------------------------

    async def reset(self, task: Task) -> Observation:
        task_text, observation = self._new_episode(task)
        self._episode.reset(task_text, observation)
        self._steps, self._last, self._started = 0, None, True
        return Observation(self._episode.messages(self._admissible_actions()), text=observation)

    async def step(self, action_text: str) -> StepResult:
        if not self._started:
            raise RuntimeError(f"{self.name}: step() called before reset()")
        if self._last is not None and self._last.done:
            raise RuntimeError(f"{self.name}: the episode is over; reset() before stepping again")
        projected = self._project(action_text)
        anchor = self._episode.observation
        feedback, history_action = self._apply(projected)
        self._steps += 1
        won = self._is_won()
        terminated = won or self._is_over()
        truncated = not terminated and self._steps >= self.max_turns
        self._episode.advance(history_action, feedback)
        admissible = self._admissible_actions()
        info = StepInfo(
            won=won,
            action_valid=projected.valid,
            n_tool_calls=self._steps,
            admissible_actions=admissible,
            anchor=anchor,
            extra=self._extra(),
        )
        observation = Observation(self._episode.messages(admissible), text=feedback)
        reward = self.success_reward if won else 0.0
        self._last = StepResult(observation, reward, terminated, truncated, info)
        return self._last
