"""Offline generator of ALFWorld-format games (``alfworld-generate`` minus the THOR simulator).

Recipe (docs/environments.md 1.3): sample a FloorPlan of the split's scene set, instantiate its receptacles
(real ids, ``openable`` facts), pick a goal of the task type from alfworld's ``goal_library``, place every
pickupable object type of the scene (1-3 instances) on receptacles that accept it (``VAL_RECEPTACLE_OBJECTS``)
so that the goal does not already hold, write the PDDL problem, and keep the game only if it can be won in the
real engine: by the scripted expert, or else by a fast-downward plan. The winning commands are ``walkthrough``.

Everything is a pure function of (split, task type, variant index): the same arguments give byte-identical
files on any machine. Games are cached on disk in ALFWorld's own layout
``<root>/<split>/<task_type>/<variant>/{game.tw-pddl,traj_data.json}``, which ``AlfredTWEnv`` can read too.

Splits: ``train`` and ``valid_seen`` sample ALFRED's training scenes (7-30 of each room type) with disjoint
seed streams; ``valid_unseen`` samples the held-out scenes (1-6), like ALFWorld's out-of-distribution split.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from envs.alfworld.engine import AlfredEngine, play
from envs.alfworld.expert import ExpertGoal, WorldView, expert_command
from envs.alfworld.problem import TASK_TYPES, Game, Goal, PlacedObject, game_document, traj_data
from envs.alfworld.scenes import (
    LAMP_TYPE,
    Receptacle,
    Scene,
    _constants,
    accepts,
    grid_location,
    lamp_stands,
    load_scene,
    scene_numbers,
)

GENERATOR_VERSION = "gen-v1"  # part of the cache path and of every seed: bump when the output changes
SPLITS = ("train", "valid_seen", "valid_unseen")
MAX_ATTEMPTS = 50
GAME_FILE, TRAJ_FILE = "game.tw-pddl", "traj_data.json"

# Appliance each state-change task needs, and the object property it changes.
_APPLIANCE = {
    "pick_clean_then_place_in_recep": "SinkBasin",
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
}
_PROPERTY = {
    "pick_clean_then_place_in_recep": "Cleanable",
    "pick_heat_then_place_in_recep": "Heatable",
    "pick_cool_then_place_in_recep": "Coolable",
}


class GenerationError(RuntimeError):
    """No solvable game found for these arguments within MAX_ATTEMPTS tries."""


def default_cache_root() -> Path:
    base = os.environ.get("SPEAR_STREAM_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "spear_stream"
    )
    return Path(base) / "alfworld" / GENERATOR_VERSION


def task_type_name(task_type: int | str) -> str:
    return TASK_TYPES[task_type] if isinstance(task_type, int) else task_type


def game_dir(root: Path, split: str, task_type: str, variant: int) -> Path:
    return Path(root) / split / task_type / f"{variant:05d}"


# ----------------------------------------------------------------------------------------------- sampling


def _candidate_scenes(split: str, task_type: str) -> list[int]:
    rooms = _constants().GOALS_VALID[task_type]
    numbers = scene_numbers("test" if split == "valid_unseen" else "train")
    out = []
    for number in numbers:
        scene = load_scene(number)
        if scene.room not in rooms:
            continue
        if task_type in _APPLIANCE and _APPLIANCE[task_type] not in scene.receptacle_types():
            continue
        if task_type == "look_at_obj_in_light" and not (scene.has_lamp and lamp_stands(scene)):
            continue
        out.append(number)
    return out


def _goals(scene: Scene, task_type: str) -> list[Goal]:
    """Every (object, receptacle) goal of this type the scene supports, the goal unmet in some placement."""
    if task_type == "look_at_obj_in_light":
        return [Goal(task_type, obj, toggle_target=LAMP_TYPE) for obj in scene.object_types]
    wanted = _constants().VAL_ACTION_OBJECTS[_PROPERTY[task_type]] if task_type in _PROPERTY else None
    appliance = _APPLIANCE.get(task_type)
    rtypes = sorted(scene.receptacle_types())
    goals = []
    for obj in scene.object_types:
        if wanted is not None and obj not in wanted:
            continue
        homes = [t for t in rtypes if accepts(t, obj)]
        for parent in homes:
            if parent != appliance and any(t != parent for t in homes):
                goals.append(Goal(task_type, obj, parent))
    return goals


def _object_id(obj_type: str, parent: Receptacle, rng: random.Random, taken: set[str]) -> str:
    fields = parent.alfred_id.split("|")[1:4]
    x, y, z = (float(f) for f in fields)
    while True:
        dx, dy, dz = rng.uniform(-0.4, 0.4), rng.uniform(0.0, 0.2), rng.uniform(-0.4, 0.4)
        alfred_id = f"{obj_type}|{x + dx:+06.2f}|{y + dy:+06.2f}|{z + dz:+06.2f}"
        if alfred_id not in taken:
            taken.add(alfred_id)
            return alfred_id


def _place_objects(scene: Scene, goal: Goal, rng: random.Random) -> list[PlacedObject]:
    placed: list[PlacedObject] = []
    taken: set[str] = set()
    max_instances = _constants().MAX_NUM_OF_OBJ_INSTANCES
    for obj_type in scene.object_types:
        is_target = obj_type == goal.object_target
        low = 2 if is_target and goal.task_type == "pick_two_obj_and_place" else 1
        # The target never starts in a receptacle of the goal's type: the goal must not hold at the start.
        homes = [r for r in scene.receptacles if accepts(r.type, obj_type)]
        if is_target and goal.parent_target:
            homes = [r for r in homes if r.type != goal.parent_target]
        if not homes:
            continue
        for _ in range(rng.randint(low, max(low, max_instances))):
            parent = rng.choice(homes)
            placed.append(PlacedObject(_object_id(obj_type, parent, rng, taken), obj_type, parent))
    if scene.has_lamp and lamp_stands(scene):
        stand = rng.choice(lamp_stands(scene))
        placed.append(PlacedObject(_object_id(LAMP_TYPE, stand, rng, taken), LAMP_TYPE, stand))
    return placed


def _agent_start(scene: Scene, rng: random.Random) -> str:
    """A navigable pose that is no receptacle's location: the game opens "in the middle of a room"."""
    taken = {r.location for r in scene.receptacles}
    while True:
        x, z = rng.choice(scene.points)
        location = grid_location((x, z, rng.choice((0, 90, 180, 270)), 30))
        if location not in taken:
            return location


def sample_game(split: str, task_type: str, rng: random.Random) -> Game | None:
    """One candidate game (not yet checked for solvability), or None if the draw admits no goal."""
    scene = load_scene(rng.choice(_candidate_scenes(split, task_type)))
    goals = _goals(scene, task_type)
    if not goals:
        return None
    goal_types = sorted({g.object_target for g in goals})
    target = rng.choice(goal_types)  # uniform over object types, then over their receptacles
    goal = rng.choice([g for g in goals if g.object_target == target])
    import alfworld.gen.goal_library as goal_library

    template = rng.choice(goal_library.gdict[task_type]["templates"])
    task_text = template.format(
        obj=goal.object_target.lower(),
        recep=goal.parent_target.lower(),
        toggle=goal.toggle_target.lower(),
        mrecep="",
    )
    objects = _place_objects(scene, goal, rng)
    needed = 2 if task_type == "pick_two_obj_and_place" else 1
    if sum(o.type == goal.object_target for o in objects) < needed:  # no receptacle outside the goal's type
        return None
    return Game(scene, goal, tuple(objects), _agent_start(scene, rng), task_text)


# ----------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class GeneratedGame:
    directory: Path
    game_file: Path
    task_type: str
    task_text: str
    walkthrough: list[str]
    attempts: int


def _write_atomically(directory: Path, files: dict[str, object]) -> None:
    """Write all files into a temp dir, then rename it into place (concurrent generators never clash)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    for name, content in files.items():
        (staging / name).write_text(json.dumps(content, indent=1))
    try:
        staging.rename(directory)
    except OSError:  # another process won the race: its files are identical, keep them
        for child in staging.iterdir():
            child.unlink()
        staging.rmdir()


def generate_game(
    split: str,
    task_type: int | str,
    variant: int,
    root: Path | None = None,
    engine: AlfredEngine | None = None,
) -> GeneratedGame:
    """Generate (or reuse from the cache) the game (split, task type, variant); deterministic."""
    if split not in SPLITS:
        raise ValueError(f"unknown ALFWorld split {split!r}; known: {SPLITS}")
    task_type = task_type_name(task_type)
    directory = game_dir(root or default_cache_root(), split, task_type, variant)
    if (directory / GAME_FILE).exists():
        return load_generated(directory)
    own_engine = engine is None
    engine = engine or AlfredEngine(max_episode_steps=1000)
    try:
        for attempt in range(MAX_ATTEMPTS):
            seed = f"{GENERATOR_VERSION}/{split}/{task_type}/{variant}/{attempt}"
            game = sample_game(split, task_type, random.Random(seed))
            if game is None:
                continue
            problem_name = f"{split}_{task_type}_{variant}"
            walkthrough, verified_by = _solve(engine, game, problem_name, directory.parent)
            if walkthrough:
                document = game_document(game, problem_name, walkthrough)
                trajectory = traj_data(game, problem_name, seed, split)
                trajectory["verified_by"] = verified_by
                _write_atomically(directory, {GAME_FILE: document, TRAJ_FILE: trajectory})
                return GeneratedGame(
                    directory, directory / GAME_FILE, task_type, game.task_text, walkthrough, attempt + 1
                )
    finally:
        if own_engine:
            engine.close()
    raise GenerationError(f"no solvable {task_type} game for split={split} variant={variant}")


def _solve(engine: AlfredEngine, game: Game, problem_name: str, scratch_dir: Path) -> tuple[list[str], str]:
    """(walkthrough, "expert" | "planner"): a command sequence that wins in the real engine, else ([], "").

    The scripted expert plays first (instantaneous; a win proves solvability). Only if it fails does
    fast-downward plan from the initial state (seconds for a kitchen), so that games the expert cannot solve
    stay in the pool and the expert's success rate remains a measurement, not a filter.
    """
    scratch_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".tw-pddl", dir=scratch_dir, delete=False) as handle:
        json.dump(game_document(game, problem_name, []), handle)
    try:
        goal = ExpertGoal.from_pddl_params(game.goal.task_type, game.goal.pddl_params())
        commands = expert_walkthrough(engine, handle.name, goal)
        if commands:
            return commands, "expert"
        engine.reset(handle.name)
        plan = engine.replan()
        won, steps = play(engine, handle.name, plan) if plan else (False, 0)
        return (plan[:steps], "planner") if won else ([], "")
    finally:
        os.unlink(handle.name)


def expert_walkthrough(
    engine: AlfredEngine, gamefile: str, goal: ExpertGoal, max_steps: int = 60
) -> list[str]:
    """The scripted expert's commands from the start of ``gamefile`` to a win, or [] if it does not win."""
    state = engine.reset(gamefile)
    commands: list[str] = []
    for _ in range(max_steps):
        command = expert_command(WorldView.from_facts(engine.facts(), engine.display_names()), goal)
        if command not in state.admissible:
            return []
        state = engine.step(command)
        commands.append(command)
        if state.won:
            return commands
    return []


def load_generated(directory: Path) -> GeneratedGame:
    document = json.loads((directory / GAME_FILE).read_text())
    trajectory = json.loads((directory / TRAJ_FILE).read_text())
    return GeneratedGame(
        directory,
        directory / GAME_FILE,
        trajectory["task_type"],
        trajectory["turk_annotations"]["anns"][0]["task_desc"],
        document["walkthrough"],
        0,
    )
