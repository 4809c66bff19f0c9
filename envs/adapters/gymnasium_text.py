"""``GymnasiumTextEnv`` ("gym_text"): any gymnasium env with text observations and text or discrete actions.

Observations: a ``spaces.Text`` observation is used as is; any other observation is replaced by the env's
``render()`` in ``ansi`` mode, with the highlighted cell (FrozenLake marks the agent with a red background)
rewritten as ``highlight_marker`` and the remaining ANSI escapes removed. Actions: the model writes
``<think>...</think><action>NAME</action>`` (verl-agent projection, lower-cased); for a ``Discrete`` action
space NAME is one of ``action_names`` (the admissible list), for a ``Text`` space it is sent verbatim. An
unknown name or missing tags is an invalid step: the gymnasium env is not stepped, the step still counts.

Reward: ``reward_mode="success"`` gives ``success_reward`` when the episode terminates with an env reward of at
least ``win_threshold`` (verl-agent style sparse reward), ``"env"`` passes the env's own reward through.
``env_id`` is a registered gymnasium id or a ``"package.module:Class"`` entry point. The default, FrozenLake 4x4
without slipping, works offline and has a breadth-first-search expert; other envs have no expert.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import random
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from envs.base import StepResult, Task
from envs.config_fields import spec
from envs.window import ProjectedAction, WindowEnv, WindowEpisode, WindowStyle, format_response

_HIGHLIGHT = re.compile(r"\x1b\[4\dm(.)\x1b\[0m")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
FROZEN_LAKE_ACTIONS = ["left", "down", "right", "up"]  # gymnasium's FrozenLake action ids 0..3
FROZEN_LAKE_RULES = (
    "The grid shows S (start), F (frozen, safe), H (hole: the episode ends), G (goal) and P (you). "
    "Reach G without falling into a hole."
)
INVALID_FEEDBACK = "Invalid action. Choose one of the admissible actions."


@dataclass
class GymnasiumTextParams:
    env_id: str = "FrozenLake-v1"  # registered id, or "package.module:Class"
    env_kwargs: dict[str, Any] = field(default_factory=lambda: {"is_slippery": False, "map_name": "4x4"})
    action_names: list[str] = field(default_factory=lambda: list(FROZEN_LAKE_ACTIONS))  # Discrete spaces
    task: str = "Reach the goal."
    rules: str = FROZEN_LAKE_RULES  # shown under the role line; "" for none
    highlight_marker: str = "P"
    max_steps: int = spec(20, lo=1, hi=10_000)
    history_length: int = spec(2, lo=0, hi=64)
    compact: bool = False
    reward_mode: Literal["success", "env"] = "success"
    success_reward: float = spec(10.0, lo=0.0)
    win_threshold: float = spec(1.0, help="env reward at termination that counts as a win")


def text_of(render: Any, marker: str) -> str:
    """An ``ansi`` rendering as plain text: the highlighted cell becomes ``marker``, other escapes vanish."""
    text = render.getvalue() if hasattr(render, "getvalue") else str(render)
    text = _HIGHLIGHT.sub(marker, text) if marker else text
    return _ANSI.sub("", text).strip("\n")


def _make_gym_env(env_id: str, kwargs: dict[str, Any], render: bool) -> Any:
    import gymnasium

    if ":" in env_id and env_id.split(":", 1)[0] not in gymnasium.registry:
        module, _, attr = env_id.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        return cls(render_mode="ansi", **kwargs) if render else cls(**kwargs)
    return (
        gymnasium.make(env_id, render_mode="ansi", **kwargs) if render else gymnasium.make(env_id, **kwargs)
    )


class GymnasiumTextEnv(WindowEnv):
    name = "gym_text"
    Params = GymnasiumTextParams
    style = WindowStyle(role_line="You are an expert agent playing a game.")  # replaced per instance

    def __init__(self, params: GymnasiumTextParams | None = None) -> None:
        import gymnasium

        super().__init__(params)
        self.params: GymnasiumTextParams
        probe = _make_gym_env(self.params.env_id, self.params.env_kwargs, render=False)
        self._text_obs = isinstance(probe.observation_space, gymnasium.spaces.Text)
        self._discrete = isinstance(probe.action_space, gymnasium.spaces.Discrete)
        probe.close()
        self._env = _make_gym_env(self.params.env_id, self.params.env_kwargs, render=not self._text_obs)
        if self._discrete and len(self.params.action_names) != int(self._env.action_space.n):
            raise ValueError(
                f"env.params.action_names has {len(self.params.action_names)} names, "
                f"{self.params.env_id} has {self._env.action_space.n} actions"
            )
        self.style = WindowStyle(
            role_line=f"You are an expert agent playing {self.params.env_id}.",
            preamble=self.params.rules,
            task_in_first_turn=True,
        )
        self._episode = WindowEpisode(self.style, self.params.history_length, self.params.compact)
        self._observation: Any = None
        self._terminated = False
        self._env_reward = 0.0

    def _describe(self, observation: Any) -> str:
        if self._text_obs:
            return str(observation)
        return text_of(self._env.render(), self.params.highlight_marker)

    def _new_episode(self, task: Task) -> tuple[str, str]:
        digest = hashlib.sha256(f"{task.split}/{task.task_id}/{task.seed}".encode()).digest()
        self._observation, _info = self._env.reset(seed=int.from_bytes(digest[:4], "big"))
        self._terminated, self._env_reward = False, 0.0
        return self.params.task, self._describe(self._observation)

    def _apply(self, projected: ProjectedAction) -> tuple[str, str]:
        if self._discrete:
            names = [n.lower() for n in self.params.action_names]
            if projected.action not in names:
                self._env_reward = 0.0
                return INVALID_FEEDBACK, projected.action
            action: Any = names.index(projected.action)
        else:
            action = projected.action
        self._observation, reward, terminated, truncated, _info = self._env.step(action)
        self._env_reward, self._terminated = float(reward), bool(terminated or truncated)
        return self._describe(self._observation), projected.action

    def _project(self, output: str) -> ProjectedAction:
        projected = super()._project(output)
        if self._discrete and projected.action not in [n.lower() for n in self.params.action_names]:
            return ProjectedAction(projected.action, False)  # an unknown move is a format error here
        return projected

    def _admissible_actions(self) -> list[str]:
        return list(self.params.action_names) if self._discrete else []

    def _is_won(self) -> bool:
        return self._terminated and self._env_reward >= self.params.win_threshold

    def _is_over(self) -> bool:
        return self._terminated

    async def step(self, action_text: str) -> StepResult:
        result = await super().step(action_text)
        if self.params.reward_mode == "env":
            result = dataclasses.replace(result, reward=self._env_reward)
        elif result.info.won:
            result = dataclasses.replace(result, reward=self.params.success_reward)
        self._last = result
        return result

    # expert ---------------------------------------------------------------------------------------

    def expert_action(self, rng: random.Random) -> str:
        move = frozen_lake_move(self._env.unwrapped)
        if move is None:
            raise NotImplementedError(f"gym_text has no scripted expert for {self.params.env_id}")
        return format_response("I follow the shortest safe path to the goal.", self.params.action_names[move])

    def close(self) -> None:
        self._env.close()


def frozen_lake_move(lake: Any) -> int | None:
    """The first move of a shortest hole-free path from the agent to G (breadth-first search), or None."""
    desc = getattr(lake, "desc", None)
    if desc is None or not hasattr(lake, "s"):
        return None
    rows, cols = len(desc), len(desc[0])
    start = (int(lake.s) // cols, int(lake.s) % cols)
    steps = {0: (0, -1), 1: (1, 0), 2: (0, 1), 3: (-1, 0)}  # left, down, right, up
    first_move: dict[tuple[int, int], int | None] = {start: None}
    queue = deque([start])
    while queue:
        row, col = queue.popleft()
        if desc[row][col] in (b"G", "G"):
            return first_move[(row, col)] if (row, col) != start else 0
        for move, (dr, dc) in steps.items():
            cell = (row + dr, col + dc)
            inside = 0 <= cell[0] < rows and 0 <= cell[1] < cols
            if inside and cell not in first_move and desc[cell[0]][cell[1]] not in (b"H", "H"):
                first_move[cell] = move if first_move[(row, col)] is None else first_move[(row, col)]
                queue.append(cell)
    return 0  # no safe path: any move
