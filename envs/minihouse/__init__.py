"""MiniHouse: an ALFWorld-lite household environment in pure Python (docs/environments.md 4.1).

Same command syntax, feedback sentences, admissible-action list, window prompt and ``<think>``/``<action>``
projection as verl-agent's ALFWorld, on procedurally generated rooms; a step costs tens of microseconds. Reward
10 when the goal holds, else 0 (penalties and the tool-call bonus are the trainer's). The room is a function of
(split, seed): the G rollouts of a group share it; ``task_id`` is only an identifier.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

from envs.base import Task
from envs.config_fields import spec
from envs.minihouse.expert import expert_command
from envs.minihouse.generate import generate_world
from envs.minihouse.world import TASK_TYPES, World
from envs.window import ProjectedAction, WindowEnv, WindowStyle, format_response

__all__ = ["DIFFICULTY_PRESETS", "TASK_TYPES", "MiniHouseEnv", "MiniHouseParams"]

# difficulty -> (receptacles R, closed fraction, task types). "custom" uses the explicit fields.
DIFFICULTY_PRESETS: dict[str, tuple[int, float, tuple[str, ...]]] = {
    "easy": (3, 0.0, ("pick_and_place",)),
    "medium": (5, 0.25, TASK_TYPES[:5]),
    "hard": (8, 0.5, TASK_TYPES),
}

ALFWORLD_STYLE = WindowStyle(
    role_line="You are an expert agent operating in the ALFRED Embodied Environment."
)


@dataclass
class MiniHouseParams:
    difficulty: Literal["custom", "easy", "medium", "hard"] = "custom"  # a preset overrides the next three
    n_receptacles: int = spec(
        6, lo=2, hi=40, help="R: receptacles in the room (raised to what the task needs)"
    )
    closed_fraction: float = spec(0.3, lo=0.0, hi=1.0, help="fraction of receptacles openable and closed")
    task_types: list[str] = field(default_factory=lambda: list(TASK_TYPES))  # any subset of TASK_TYPES
    n_distractors: int = spec(3, lo=0, hi=40, help="objects unrelated to the goal")
    max_steps: int = spec(30, lo=1, hi=1000)
    history_length: int = spec(2, lo=0, hi=50)
    compact: bool = False  # terse prompt for tiny CPU models
    expert_noise: float = spec(0.0, lo=0.0, hi=1.0, help="expert takes a random admissible action this often")

    def __post_init__(self) -> None:
        if self.difficulty != "custom":
            r, closed, types = DIFFICULTY_PRESETS[self.difficulty]
            self.n_receptacles, self.closed_fraction, self.task_types = r, closed, list(types)
        unknown = sorted(set(self.task_types) - set(TASK_TYPES))
        if unknown or not self.task_types:
            raise ValueError(
                f"config key 'env.params.task_types' = {self.task_types!r}: choose from {TASK_TYPES}"
            )


class MiniHouseEnv(WindowEnv):
    name = "minihouse"
    Params = MiniHouseParams
    style = ALFWORLD_STYLE
    fallback_chars = 30

    def __init__(self, params: MiniHouseParams | None = None) -> None:
        super().__init__(params)
        self.world: World | None = None

    def _new_episode(self, task: Task) -> tuple[str, str]:
        p = self.params
        rng = random.Random(f"minihouse/{task.split}/{task.seed}")
        self.world = generate_world(
            rng,
            n_receptacles=p.n_receptacles,
            closed_fraction=p.closed_fraction,
            n_distractors=p.n_distractors,
            task_types=p.task_types,
        )
        # compact prompts carry the task on their own line: skip ALFWorld's banner and task sentence
        opening = self.world.look_around() if p.compact else self.world.opening_observation()
        return self.world.goal.text, opening

    def _apply(self, projected: ProjectedAction) -> tuple[str, str]:
        return self._require_world().execute(projected.action), projected.action

    def _admissible_actions(self) -> list[str]:
        return self._require_world().admissible_list()

    def _is_won(self) -> bool:
        return self._require_world().won()

    def _extra(self) -> dict[str, Any]:
        return {"task_type": self._require_world().goal.task_type}

    def _require_world(self) -> World:
        if self.world is None:
            raise RuntimeError("minihouse: reset() first")
        return self.world

    def expert_action(self, rng: random.Random) -> str:
        world = self._require_world()
        if self.params.expert_noise > 0 and rng.random() < self.params.expert_noise:
            return format_response("Let me try something.", rng.choice(world.admissible_list()))
        command, reasoning = expert_command(world)
        return format_response(reasoning, command)
