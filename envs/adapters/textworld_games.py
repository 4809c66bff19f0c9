"""``TextWorldEnv`` ("textworld"): TextWorld games (``tw-make custom``) through ``textworld.gym``.

Games: ``game_files`` when given, else a pool of ``pool_size`` games per split made on first use with
TextWorld's generator, exactly what ``tw-make custom --world-size W --nb-objects N --quest-length Q --seed S``
does (``textworld.make`` with those options; 2-4 s per game, cached on disk). Task ``task_id`` plays game
``task_id % pool_size`` of its split; the seed of game i of a split is derived from (split, i), so train and
test pools differ. Observations are the game's text without the ASCII-art banner and the trailing status
line; the task is the game's objective; the admissible list is ``admissible_commands``; the expert follows
TextWorld's ``policy_commands`` (a walkthrough from the current state). Reward 10 on a win; a lost game ends
the episode with 0.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envs.base import Task
from envs.config_fields import spec
from envs.window import ProjectedAction, WindowEnv, WindowStyle, format_response

TEXTWORLD_STYLE = WindowStyle(role_line="You are an expert agent playing a text adventure game.")
_BANNER_CHARS = set("_|\\/$<>()-=.'` ")
_STATUS_LINE = re.compile(r"\n*>[^\n]*$")
MAX_COMMAND_CHARS = 200
_UNSAFE_COMMAND_CHARS = re.compile(r"[^a-z0-9,.'\- ]")
# Interpreter meta-verbs: `save`/`script`/`record` make the game write a file named by the *next* input into the
# working directory, `restore`/`replay` read one; model text must never reach them (seen: fuzzed outputs wrote
# files into the repository root before this filter).
_META_VERBS = frozenset(
    {
        "save",
        "restore",
        "script",
        "unscript",
        "transcript",
        "noscript",
        "record",
        "replay",
        "quit",
        "restart",
        "q",
    }
)
_generation_lock = threading.Lock()  # TextWorld's generator and Inform7 compiler are not thread-safe


@dataclass
class TextWorldParams:
    max_steps: int = spec(50, lo=1, hi=1000)
    history_length: int = spec(2, lo=0, hi=64)
    compact: bool = False
    world_size: int = spec(5, lo=1, hi=50, help="tw-make --world-size: rooms")
    nb_objects: int = spec(10, lo=0, hi=200, help="tw-make --nb-objects")
    quest_length: int = spec(3, lo=1, hi=30, help="tw-make --quest-length")
    pool_size: int = spec(4, lo=1, hi=100_000, help="generated games per split (task_id modulo)")
    game_files: list[str] = field(default_factory=list)  # explicit .z8/.ulx games (with their .json) instead
    cache_dir: str = ""  # "" = $SPEAR_STREAM_CACHE or ~/.cache/spear_stream, + textworld/


def clean_observation(text: str) -> str:
    """The game's text without the ASCII-art banner, the ``>`` prompt and status line, and blank-line runs."""
    text = _STATUS_LINE.sub("", text)
    lines = [line for line in text.split("\n") if not (line.strip() and set(line) <= _BANNER_CHARS)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def game_command(action: str) -> str:
    """What the Z-machine may safely read: lower-case words, digits and ``,.'-``, at most 200 characters.

    Dumb-frotz takes a leading backslash as an interpreter command (and loops on unknown ones), it hangs on some
    non-ASCII input, and TextWorld's parser knows only such words anyway; anything else becomes a space.
    """
    words = _UNSAFE_COMMAND_CHARS.sub(" ", action.lower()).split()
    if words and words[0] in _META_VERBS:
        return "look"  # a harmless, always-valid command in place of an interpreter meta-command
    return " ".join(words)[:MAX_COMMAND_CHARS]


def _cache_root(params: TextWorldParams) -> Path:
    if params.cache_dir:
        return Path(params.cache_dir)
    base = os.environ.get("SPEAR_STREAM_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "spear_stream"
    )
    return Path(base) / "textworld"


def game_seed(split: str, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"textworld/{split}/{index}".encode()).digest()[:2], "big")


def make_game_file(params: TextWorldParams, split: str, index: int) -> Path:
    """The cached game ``index`` of ``split`` (generated on first use, like ``tw-make custom``)."""
    settings = f"w{params.world_size}-o{params.nb_objects}-q{params.quest_length}"
    directory = _cache_root(params) / settings / split / f"game_{index:05d}"
    game_file = directory / "game.z8"
    if game_file.exists():
        return game_file
    import textworld

    options = textworld.GameOptions()
    options.seeds = game_seed(split, index)
    options.nb_rooms, options.nb_objects = params.world_size, params.nb_objects
    chaining = options.chaining
    chaining.min_length = chaining.max_length = chaining.max_depth = params.quest_length
    chaining.min_breadth, chaining.max_breadth, chaining.min_depth = 1, 5, 1
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    options.path, options.file_ext = str(staging / "game.z8"), ".z8"
    try:
        with _generation_lock:
            textworld.make(options)
        if not game_file.exists():
            staging.rename(directory)  # fails only if another process made the same game first
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone after a successful rename
    return game_file


class TextWorldEnv(WindowEnv):
    name = "textworld"
    Params = TextWorldParams
    style = TEXTWORLD_STYLE

    def __init__(self, params: TextWorldParams | None = None) -> None:
        super().__init__(params)
        self.params: TextWorldParams
        self._gyms: dict[str, Any] = {}  # game file -> its textworld.gym env (reloading a game costs ~1 s)
        self._gym: Any = None
        self._infos: dict[str, Any] = {}
        self.game_file: str | None = None  # the current episode's game

    def _game_file(self, task: Task) -> str:
        if self.params.game_files:
            return self.params.game_files[task.task_id % len(self.params.game_files)]
        return str(make_game_file(self.params, task.split, task.task_id % self.params.pool_size))

    def _new_episode(self, task: Task) -> tuple[str, str]:
        import textworld
        from textworld.gym.envs import TextworldGymEnv

        game_file = self.game_file = self._game_file(task)
        if game_file not in self._gyms:
            infos = textworld.EnvInfos(
                admissible_commands=True, won=True, lost=True, policy_commands=True, objective=True
            )
            self._gyms[game_file] = TextworldGymEnv(
                [game_file], infos, max_episode_steps=self.params.max_steps
            )
        self._gym = self._gyms[game_file]
        observation, self._infos = self._gym.reset()
        return str(self._infos.get("objective") or ""), clean_observation(observation)

    def _apply(self, projected: ProjectedAction) -> tuple[str, str]:
        observation, _score, _done, self._infos = self._gym.step(game_command(projected.action))
        return clean_observation(observation), projected.action

    def _admissible_actions(self) -> list[str]:
        return list(self._infos.get("admissible_commands") or [])

    def _is_won(self) -> bool:
        return bool(self._infos.get("won"))

    def _is_over(self) -> bool:
        return bool(self._infos.get("lost"))

    def expert_action(self, rng: random.Random) -> str:
        if self._gym is None:
            raise RuntimeError("textworld: expert_action() before reset()")
        plan = self._infos.get("policy_commands") or ["look"]
        return format_response("I follow the walkthrough.", plan[0])

    def close(self) -> None:
        for gym_env in self._gyms.values():
            gym_env.close()
        self._gyms.clear()
