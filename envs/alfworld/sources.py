"""Where an ALFWorld task's game file comes from: the official data under ``$ALFWORLD_DATA`` or the generator.

Split names: ``train``; ``valid_seen`` (aliases ``test``, ``eval``, ``eval_in_distribution``: what SPEAR and
verl-agent evaluate on); ``valid_unseen`` (aliases ``eval_out_of_distribution``, ``ood``).

Official data (``alfworld-download`` layout): ``$ALFWORLD_DATA/json_2.1.1/<split>/<task>/<trial>/`` with
``traj_data.json`` and ``game.tw-pddl``; games are collected as ``AlfredTWEnv.collect_game_files`` does (skip
"movable" and "Sliced" tasks, other task types, missing game files and games not marked solvable) and sorted,
so task ``i`` is the same game on every machine.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from envs.alfworld.engine import AlfredEngine
from envs.alfworld.generate import GAME_FILE, TRAJ_FILE, generate_game, task_type_name

SPLIT_ALIASES = {
    "train": "train",
    "valid_seen": "valid_seen",
    "test": "valid_seen",
    "eval": "valid_seen",
    "eval_in_distribution": "valid_seen",
    "valid_unseen": "valid_unseen",
    "eval_out_of_distribution": "valid_unseen",
    "ood": "valid_unseen",
}
# Games per split of ALFWorld's json_2.1.1 (docs/environments.md 1.1): the default size of a generated pool.
ALFWORLD_SPLIT_SIZES = {"train": 3553, "valid_seen": 140, "valid_unseen": 134}
OFFICIAL_SUBDIR = "json_2.1.1"


def canonical_split(split: str) -> str:
    try:
        return SPLIT_ALIASES[split]
    except KeyError:
        raise ValueError(f"unknown ALFWorld split {split!r}; known: {sorted(SPLIT_ALIASES)}") from None


@dataclass(frozen=True)
class GameRef:
    """A game file and the task facts its traj_data.json states."""

    game_file: Path
    task_type: str
    pddl_params: dict[str, object]

    @classmethod
    def from_dir(cls, directory: Path) -> GameRef:
        trajectory = json.loads((directory / TRAJ_FILE).read_text())
        return cls(directory / GAME_FILE, trajectory["task_type"], dict(trajectory["pddl_params"]))


def official_root() -> Path | None:
    """``$ALFWORLD_DATA/json_2.1.1`` when it exists, else None."""
    data = os.environ.get("ALFWORLD_DATA")
    if not data:
        return None
    root = Path(os.path.expandvars(data)) / OFFICIAL_SUBDIR
    return root if root.is_dir() else None


@functools.lru_cache(maxsize=32)
def official_games(root: Path, split: str, task_types: tuple[str, ...]) -> tuple[Path, ...]:
    """Solvable official game directories of a split, sorted (``AlfredTWEnv.collect_game_files`` filters)."""
    found = []
    for trajectory_file in sorted((root / split).rglob(TRAJ_FILE)):
        directory = trajectory_file.parent
        if "movable" in str(directory) or "Sliced" in str(directory):
            continue
        if json.loads(trajectory_file.read_text()).get("task_type") not in task_types:
            continue
        game_file = directory / GAME_FILE
        if game_file.exists() and json.loads(game_file.read_text()).get("solvable", False):
            found.append(directory)
    return tuple(found)


class GameSource:
    """Task -> game, for the generated pool or the official data."""

    def __init__(self, data_source: str, task_types: list[int], cache_dir: Path, num_games: int) -> None:
        self.task_types = [task_type_name(t) for t in task_types]
        self.cache_dir = cache_dir
        self.num_games = num_games
        root = official_root()
        if data_source == "official" and root is None:
            raise ValueError(
                "env.params.data_source='official' needs $ALFWORLD_DATA/json_2.1.1 (alfworld-download)"
            )
        self.official = root if data_source in ("auto", "official") else None
        self.require_official = data_source == "official"

    def describe(self, split: str) -> str:
        return f"official:{self.official}" if self._official_games(split) else f"generated:{self.cache_dir}"

    def _official_games(self, split: str) -> tuple[Path, ...]:
        if self.official is None:
            return ()
        return official_games(self.official, canonical_split(split), tuple(self.task_types))

    def game(self, task_id: int, split: str, engine: AlfredEngine | None = None) -> GameRef:
        """The game of task ``task_id`` in ``split`` (generated on first use, on ``engine`` if given)."""
        games = self._official_games(split)
        if games:
            return GameRef.from_dir(games[task_id % len(games)])
        if self.require_official:
            raise ValueError(f"no official ALFWorld games for split {split!r} under {self.official}")
        split = canonical_split(split)
        pool = self.num_games or ALFWORLD_SPLIT_SIZES[split]
        index = task_id % pool
        task_type = self.task_types[index % len(self.task_types)]
        variant = index // len(self.task_types)
        generated = generate_game(split, task_type, variant, root=self.cache_dir, engine=engine)
        return GameRef.from_dir(generated.directory)
