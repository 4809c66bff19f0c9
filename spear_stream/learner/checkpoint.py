"""Checkpoint/resume: sharded model + optimizer with torch.distributed.checkpoint (DCP), plus plain state.

Layout (one directory per checkpoint, written under a temporary name and renamed when complete)::

    <run_dir>/checkpoints/
        latest                  name of the newest complete checkpoint ("step_00000120")
        step_00000120/
            .metadata, *.distcp DCP: {"model": ..., "optimizer": ...}, each rank writes its own shards
            extra.pt            rank 0: {name: state_dict} (learner step, curriculum, replay metadata, ...)
            tensordicts/<key>/  rank 0: every TensorDict found in ``extra`` (replay rows), memory-mapped
            rng/rank_00000.pt   each rank: python / numpy / torch (/ cuda) RNG states
            COMPLETE            written last, before the rename; a directory without it is ignored
        .step_00000130.tmp/     a save in progress (or interrupted): never read

``extra`` is how other stateful parts join a checkpoint: the trainer passes ``{"step": ...,
"curriculum": curriculum.state_dict(), "replay": ..., ...}``. Each value must be ``torch.save``-able
(tensors, numbers, strings, lists, dicts); it is loaded with ``weights_only=False``, so only resume from
checkpoints you wrote. Bulk data goes in TensorDicts: any TensorDict inside ``extra`` (at any depth of nested
dicts) is written as its own memory-mapped directory and read back into RAM on load, so ``extra.pt`` stays a
few kilobytes of metadata whatever the replay holds.

DCP reshards on load, so a checkpoint saved with N ranks loads with M ranks. All functions here that take a
model are collective: every rank calls them with the same path (on a filesystem all ranks share). They also
work without a process group, for a plain single-process model.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from tensordict import TensorDict, TensorDictBase
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

CHECKPOINTS_DIR = "checkpoints"
LATEST_POINTER = "latest"
COMPLETE_MARKER = "COMPLETE"
EXTRA_FILE = "extra.pt"
TENSORDICT_DIR = "tensordicts"
_TENSORDICT_REF = "__tensordict__"  # {_TENSORDICT_REF: relative path} stands for a TensorDict in extra.pt
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{step:08d}"


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE_MARKER).is_file()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rng_file(path: Path, rank: int) -> Path:
    return path / "rng" / f"rank_{rank:05d}.pt"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _single_process_ok() -> Iterator[None]:
    """DCP warns on every call without a process group; running in one process is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Each rank's shards as DCP expects them; optimizer state is keyed by parameter name, not id."""
    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optim_state}


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    extra: dict[str, Any] | None = None,
    *,
    save_rng: bool = True,
) -> Path:
    """Write a complete checkpoint at ``path`` (use :func:`checkpoint_path`) and point ``latest`` at it.

    Collective. The directory appears under its final name only once everything is on disk, so a crash at any
    point leaves either the previous checkpoint or a ``.tmp`` directory that :func:`latest_checkpoint` skips.
    Saving again at the same path replaces the old checkpoint.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of an interrupted save
        tmp.mkdir(parents=True)
    _barrier()
    with _single_process_ok():
        dcp.save(_sharded_state(model, optimizer), checkpoint_id=tmp, no_dist=not dist.is_initialized())
    if save_rng:
        rng_path = _rng_file(tmp, _rank())
        rng_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), rng_path)
    if _rank() == 0:
        torch.save(_store_tensordicts(dict(extra or {}), tmp, ""), tmp / EXTRA_FILE)
    _barrier()  # every rank's files are written before rank 0 declares the checkpoint complete
    if _rank() == 0:
        meta = {"world_size": _world_size(), "saved_at": time.time(), "torch": torch.__version__}
        _atomic_write_text(tmp / COMPLETE_MARKER, json.dumps(meta))
        _fsync_dir(tmp)
        if path.exists():
            stale = path.with_name(f".{path.name}.old")
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(path, stale)
            shutil.rmtree(stale)
        os.replace(tmp, path)
        _atomic_write_text(path.parent / LATEST_POINTER, path.name)
        _fsync_dir(path.parent)
    _barrier()
    return path


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load model (and optimizer) shards in place, restore this rank's RNG states, return ``extra``.

    Collective. Build and shard the model and create the optimizer exactly as for a fresh run first. RNG
    states are per rank; after a change of world size the ranks without a saved state keep their own (warned).
    """
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    state = _sharded_state(model, optimizer)
    with _single_process_ok():
        dcp.load(state, checkpoint_id=path, no_dist=not dist.is_initialized())
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    if restore_rng:
        rng_path = _rng_file(path, _rank())
        if rng_path.is_file():
            set_rng_state(torch.load(rng_path, weights_only=False))
        else:
            warnings.warn(f"{path}: no RNG state for rank {_rank()}; keeping the current one", stacklevel=2)
    return _load_tensordicts(torch.load(path / EXTRA_FILE, weights_only=False), path)


def _store_tensordicts(value: Any, root: Path, key: str) -> Any:
    """Write each TensorDict in ``value`` (nested dicts) under ``root/tensordicts/<key>``; return the references."""
    if isinstance(value, TensorDictBase):
        rel = f"{TENSORDICT_DIR}/{key or 'root'}"
        value.memmap(prefix=root / rel)
        return {_TENSORDICT_REF: rel}
    if isinstance(value, dict):
        return {k: _store_tensordicts(v, root, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    return value


def _load_tensordicts(value: Any, root: Path) -> Any:
    """Inverse of :func:`_store_tensordicts`; the data is copied into RAM (checkpoints may be pruned later)."""
    if isinstance(value, dict):
        if set(value) == {_TENSORDICT_REF}:
            return TensorDict.load_memmap(root / value[_TENSORDICT_REF]).clone()
        return {k: _load_tensordicts(v, root) for k, v in value.items()}
    return value


def _step_of(path: Path) -> int | None:
    match = _STEP_DIR.match(path.name)
    return int(match.group(1)) if match else None


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``<run_dir>/checkpoints``, oldest step first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _step_of(p) is not None and is_complete(p)]
    return sorted(found, key=lambda p: _step_of(p) or 0)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint named by ``latest`` if it is complete, else the highest complete step, else None."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    pointer = root / LATEST_POINTER
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if named.name and is_complete(named):
            return named
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (never the latest); rank 0 only."""
    if _rank() != 0 or keep_last < 1:
        return []
    latest = latest_checkpoint(run_dir)
    doomed = [p for p in complete_checkpoints(run_dir)[:-keep_last] if p != latest]
    for p in doomed:
        shutil.rmtree(p)
    return doomed
