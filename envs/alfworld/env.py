"""``AlfWorldEnv`` ("alfworld"): ALFWorld text games through the real engine, with verl-agent's conventions.

* Engine: TextWorld's PDDL backend with alfworld's ``AlfredDemangler`` + ``AlfredInfos`` wrappers
  (:mod:`envs.alfworld.engine`), on official games (``$ALFWORLD_DATA``) or generated ones
  (:mod:`envs.alfworld.generate`, created on first use in the cache directory).
* Prompt: ``window`` mode (:mod:`envs.window`): the last ``history_length`` (observation, action) pairs, the
  admissible actions minus ``help``, and the ``<think>...</think><action>...</action>`` instruction.
* Parsing: verl-agent's projection (lower-cased text in the first ``<action>`` tags; missing tags -> the last 30
  characters are sent, which the game answers with "Nothing happens.", and the step is invalid).
* Reward 10 on the winning step, else 0; the episode ends on a win or after ``max_steps`` steps.
* ``info.anchor`` is the raw observation the action was taken in; ``info.n_tool_calls`` counts every step.

A task's ``task_id`` picks the game (``task_id % pool size``); ``seed`` plays no role: the games are
deterministic, so a group's G rollouts replay the same initial state.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from envs.alfworld.engine import AlfredEngine, EngineState
from envs.alfworld.expert import ExpertGoal, WorldView, expert_command
from envs.alfworld.generate import default_cache_root
from envs.alfworld.problem import TASK_TYPES
from envs.alfworld.sources import GameRef, GameSource
from envs.base import Task
from envs.config_fields import ConfigError, spec
from envs.window import ProjectedAction, WindowEnv, WindowStyle, format_response

ALFWORLD_STYLE = WindowStyle(
    role_line="You are an expert agent operating in the ALFRED Embodied Environment."
)
TASK_MARKER = "Your task is to: "


@dataclass
class AlfWorldParams:
    max_steps: int = spec(50, lo=1, hi=1000, help="env steps per episode (verl-agent env.max_steps)")
    history_length: int = spec(2, lo=0, hi=64, help="(observation, action) pairs shown in the prompt")
    compact: bool = False  # terse prompt for tiny CPU models (not a verl-agent format)
    task_types: list[int] = field(default_factory=lambda: sorted(TASK_TYPES))  # ALFWorld ids 1..6
    # auto: the official games when $ALFWORLD_DATA/json_2.1.1 has the split, else generated ones
    data_source: Literal["auto", "generated", "official"] = "auto"
    # generated games; "" = $SPEAR_STREAM_CACHE (default ~/.cache/spear_stream) + /alfworld/gen-v1
    cache_dir: str = ""
    num_games: int = spec(0, lo=0, help="generated games per split (task_id modulo); 0 = ALFWorld's sizes")
    expert_noise: float = spec(0.0, lo=0.0, hi=1.0, help="chance the expert takes a random admissible action")
    offload_to_thread: bool = True  # run engine calls (0.05-2 s) in a worker thread, off the event loop

    def __post_init__(self) -> None:
        unknown = [t for t in self.task_types if t not in TASK_TYPES]
        if unknown or not self.task_types:
            raise ConfigError(f"config key 'env.params.task_types' = {self.task_types!r}: use ids in 1..6")


class AlfWorldEnv(WindowEnv):
    name = "alfworld"
    Params = AlfWorldParams
    style = ALFWORLD_STYLE

    def __init__(self, params: AlfWorldParams | None = None) -> None:
        super().__init__(params)
        self.params: AlfWorldParams
        cache_dir = Path(self.params.cache_dir) if self.params.cache_dir else default_cache_root()
        self._source = GameSource(
            self.params.data_source, self.params.task_types, cache_dir, self.params.num_games
        )
        self._engine: AlfredEngine | None = None
        self._game: GameRef | None = None
        self._state: EngineState | None = None
        self._pending: EngineState | None = None  # the engine's answer to the step being processed

    # engine calls (possibly in a worker thread) ---------------------------------------------------

    async def _run(self, function: Any, *args: Any) -> Any:
        if self.params.offload_to_thread:
            return await asyncio.to_thread(function, *args)
        return function(*args)

    def _load(self, task: Task) -> EngineState:
        if self._engine is None:
            self._engine = AlfredEngine(max_episode_steps=self.params.max_steps)
        game = self._source.game(task.task_id, task.split, engine=self._engine)
        self._game = game
        return self._engine.reset(str(game.game_file))

    async def reset(self, task: Task) -> Any:
        self._pending = await self._run(self._load, task)
        return await super().reset(task)

    async def step(self, action_text: str) -> Any:
        running = self._started and not (self._last is not None and self._last.done)
        if running:  # otherwise the base class raises RuntimeError
            assert self._engine is not None
            self._pending = await self._run(self._engine.step, self._project(action_text).action)
        return await super().step(action_text)

    # WindowEnv hooks ------------------------------------------------------------------------------

    def _take_pending(self) -> EngineState:
        state, self._pending = self._pending, None
        assert state is not None, "engine state missing: reset()/step() drive the hooks"
        self._state = state
        return state

    def _new_episode(self, task: Task) -> tuple[str, str]:
        observation = self._take_pending().observation
        start = observation.find(TASK_MARKER)
        task_text = observation[start + len(TASK_MARKER) :].strip() if start != -1 else ""
        return task_text, observation

    def _apply(self, projected: ProjectedAction) -> tuple[str, str]:
        return self._take_pending().observation, projected.action

    def _admissible_actions(self) -> list[str]:
        return list(self._state.admissible) if self._state is not None else []

    def _is_won(self) -> bool:
        return self._state is not None and self._state.won

    def _extra(self) -> dict[str, Any]:
        return {"task_type": self.task_type}

    # public views ---------------------------------------------------------------------------------

    @property
    def admissible_actions(self) -> list[str]:
        """The current admissible commands (minus "help"); [] before the first reset."""
        return self._admissible_actions()

    @property
    def task_type(self) -> str:
        """The ALFWorld task type of the current game ("pick_two_obj_and_place", ...); "" before a reset."""
        return self._game.task_type if self._game else ""

    @property
    def game_file(self) -> Path | None:
        return self._game.game_file if self._game else None

    # expert ---------------------------------------------------------------------------------------

    def expert_command(self) -> str:
        """The scripted expert's next game command (privileged: reads the engine's PDDL state)."""
        if self._engine is None or self._game is None:
            raise RuntimeError("alfworld: expert_action() before reset()")
        view = WorldView.from_facts(self._engine.facts(), self._engine.display_names())
        return expert_command(view, ExpertGoal.from_pddl_params(self._game.task_type, self._game.pddl_params))

    def expert_action(self, rng: random.Random) -> str:
        command = self.expert_command()
        admissible = self._admissible_actions()
        if admissible and rng.random() < self.params.expert_noise:
            command = rng.choice(admissible)
        reasoning = f"My task is to {self._episode.task.rstrip('.')}. Next I will {command}."
        return format_response(reasoning, command)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
