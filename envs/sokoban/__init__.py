"""Sokoban with verl-agent's conventions (docs/environments.md 4.4): 6x6 room, 1 box, 15 steps, text grid.

Actions ``up``/``down``/``left``/``right`` inside ``<action>`` (verl-agent's projection: the first of up, down,
left, right, still that occurs in the action text; none, or no action tags, is a no-op "Still" and invalid;
unlike verl-agent's Sokoban projection, Chinese characters also make a step invalid, as in its ALFWorld one).
The env's reward is 10 when every box is on a target, else 0, like the other agent envs (the trainer adds
penalties); gym-sokoban's shaped reward (-0.1 per step, +1 box onto a target, -1 off, +10 solved) is reported in
``info.extra["gym_reward"]`` for analysis. Rooms are generated per (split, seed) by reverse play and are always
solvable within ``max_steps``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from envs.base import Task
from envs.config_fields import spec
from envs.sokoban.room import MOVES, Room, State, generate, solve
from envs.window import ProjectedAction, WindowEnv, WindowStyle, format_response, project_action

__all__ = ["SokobanEnv", "SokobanParams"]

_LEGEND = """
# Symbols and Their Meaning
- Walls (`#`): These block movement. You can't move through or push anything into walls.
- Floor (`_`): Open spaces where you can walk and move boxes.
- Targets (`O`): The spots where boxes need to go.
- Boxes (`X`): These are what you need to push onto the targets.
- Player (`P`): That's you! You'll move around the grid to push boxes.
- Box on Target (`√`): A box successfully placed on a target.
- Player on Target (`S`): You standing on a target.

# Your Goal
Your goal is to push all the boxes (`X`) onto the target spots (`O`). Once all boxes are on the targets, you win!

# Rules
You can only push boxes. You can't pull them, so plan ahead to avoid getting stuck.
You can't walk through or push boxes into walls (`#`).
To avoid traps, do not push boxes into corners or against walls where they can't be moved again.

# Current Step"""

SOKOBAN_STYLE = WindowStyle(
    role_line="You are an expert agent operating in the Sokoban environment.",
    preamble=_LEGEND,
    task_in_later_turns=False,
    admissible_format="fixed",
    fixed_admissible='Your admissible actions are ["up", "down", "left", "right"].',
    observation_on_new_line=True,
    history_format="sokoban",
    turn_line="Now it's your turn to make a move (choose ONE action only for the current step).",
    instruction=(
        "You should first reason step-by-step about the current situation — observe the positions of boxes and "
        "targets, plan a path to push a box toward a target, and avoid traps like corners or walls. This "
        "reasoning process MUST be enclosed within <think> </think> tags. \nOnce you've finished your "
        "reasoning, you should choose an admissible action for current step and present it within <action> "
        "</action> tags."
    ),
)
ACTIONS = ["up", "down", "left", "right"]
_POOL = (*ACTIONS, "still")  # verl-agent's lookup order
TASK_TEXT = "Push every box (X) onto a target (O)."


@dataclass
class SokobanParams:
    height: int = spec(6, lo=4, hi=12)
    width: int = spec(6, lo=4, hi=12)
    num_boxes: int = spec(1, lo=1, hi=3)
    max_steps: int = spec(15, lo=1, hi=500)
    search_depth: int = spec(30, lo=1, hi=300, help="reverse-play depth; the optimum is at most this")
    history_length: int = spec(2, lo=0, hi=50)
    compact: bool = False  # one character per cell and the terse prompt
    expert_noise: float = spec(0.0, lo=0.0, hi=1.0)


class SokobanEnv(WindowEnv):
    name = "sokoban"
    Params = SokobanParams
    style = SOKOBAN_STYLE

    def __init__(self, params: SokobanParams | None = None) -> None:
        super().__init__(params)
        self.room: Room | None = None
        self.state: State | None = None
        self.optimal_length = 0
        self._gym_reward = 0.0
        self._effective = False

    def _new_episode(self, task: Task) -> tuple[str, str]:
        p = self.params
        rng = random.Random(f"sokoban/{task.split}/{task.seed}")
        self.room, self.state, self.optimal_length = generate(
            rng,
            height=p.height,
            width=p.width,
            num_boxes=p.num_boxes,
            max_solution=p.max_steps,
            search_depth=p.search_depth,
        )
        return TASK_TEXT, self._render()

    def _project(self, output: str) -> ProjectedAction:
        parsed = project_action(output, fallback_chars=0)  # no action tags -> empty action
        move = next((m for m in _POOL if m in parsed.action), None)
        if move is None:
            return ProjectedAction("still", False)
        return ProjectedAction(move, parsed.valid)

    def _apply(self, projected: ProjectedAction) -> tuple[str, str]:
        room, before = self._require()
        after, self._gym_reward = before, 0.0  # verl-agent's "Still": no move, no step penalty
        if projected.action in MOVES:
            after, self._gym_reward = room.step(before, projected.action)
        self.state, self._effective = after, after[0] != before[0]
        return self._render(), projected.action.capitalize()

    def _admissible_actions(self) -> list[str]:
        return list(ACTIONS)

    def _is_won(self) -> bool:
        room, state = self._require()
        return room.solved(state[1])

    def _extra(self) -> dict[str, Any]:
        room, state = self._require()
        return {
            "gym_reward": self._gym_reward,
            "boxes_on_target": len(state[1] & room.targets),
            "action_is_effective": self._effective,
        }

    def _render(self) -> str:
        room, state = self._require()
        return room.render(state, compact=self.params.compact)

    def _require(self) -> tuple[Room, State]:
        if self.room is None or self.state is None:
            raise RuntimeError("sokoban: reset() first")
        return self.room, self.state

    def expert_action(self, rng: random.Random) -> str:
        room, state = self._require()
        if self.params.expert_noise > 0 and rng.random() < self.params.expert_noise:
            return format_response("Let me try a move.", rng.choice(ACTIONS))
        plan = solve(room, state) or [rng.choice(ACTIONS)]  # unsolvable (box stuck): any move
        return format_response(f"Shortest plan: {', '.join(plan)}.", plan[0])
