"""Fresh on-policy replay: whole groups, each consumed once, oldest first; stale groups dropped and counted.

Built from torchrl parts: a ``TensorDictReplayBuffer`` over ``LazyMemmapStorage`` (on disk, readable by other
processes) or ``LazyTensorStorage`` (RAM), whose round-robin writer lays rows out in a ring of ``capacity`` slots.
Rows are stored padded to ``max_len`` (memmap needs fixed shapes) with ``length`` kept (``group.pad_group``);
sampled groups come back unpadded, as a lazy stack of schema rows.

What torchrl lacks and this module adds:

* Groups. torchrl samples rows; we keep a FIFO of groups (their ring slots) and hand out whole groups.
* Consume-once, FIFO. Each group is returned once, oldest arrival first: on-policy data should be used once, the
  oldest groups are the closest to going stale, and the ring's writer then reuses slots in the order they were
  freed. The writer only overwrites a live group when the buffer is full (an overflow drop, counted).
* Staleness. A group whose oldest token version is older than ``current_version - max_staleness`` is dropped at
  sampling time and counted (``replay/dropped_stale_groups``, ``replay/dropped_stale_rows``); it is never returned.
* Live fill count. ``LazyMemmapStorage`` persists its length only in ``dumps()``, so a JSON sidecar
  ``<storage_dir>/fresh/meta.json`` (replaced atomically) says which slots are live. Layout of ``fresh/``:
  ``storage/`` (torchrl memmap; tensordict writes its own ``meta.json`` there, hence the subdirectory) and
  ``meta.json`` (ours). :func:`read_fresh_meta` and :func:`load_fresh_rows` are the reader side.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tensordict import LazyStackedTensorDict, TensorDict, TensorDictBase, lazy_stack
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, TensorDictReplayBuffer

from spear_stream.group import group_from_rows, pad_group
from spear_stream.schema import ALL_FIELDS, SCHEMA_VERSION, unpad_row

SIDECAR = "meta.json"


@dataclass
class _Group:
    serial: int
    slots: torch.Tensor  # ring indices of its rows, in row order
    oldest: int  # oldest token version (policy_version min): what staleness is measured by
    newest: int


class FreshReplay:
    """Group-aware FIFO of fresh rows; see the module docstring for the semantics."""

    def __init__(
        self, capacity: int, max_len: int, storage_dir: Path | str | None = None, *, pad_token: int = 0
    ) -> None:
        self.capacity, self.max_len, self.pad_token = capacity, max_len, pad_token
        self.dir = None if storage_dir is None else Path(storage_dir) / "fresh"
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            storage = LazyMemmapStorage(capacity, scratch_dir=self.dir / "storage", existsok=True)
        else:
            storage = LazyTensorStorage(capacity)
        # Default writer (round robin) gives the ring; rb.sample is never used: we pick whole groups ourselves.
        self._rb = TensorDictReplayBuffer(storage=storage)
        self._groups: deque[_Group] = deque()
        self._owner = torch.full((capacity,), -1, dtype=torch.int64)  # group serial per slot, -1 = free
        self._cursor = 0  # mirrors the writer's cursor; checked on every write
        self._serial = 0
        self.write_count = 0
        self.counters: Counter[str] = Counter()
        self._write_sidecar()

    def __len__(self) -> int:
        return sum(len(group.slots) for group in self._groups)

    @property
    def num_groups(self) -> int:
        return len(self._groups)

    def extend_group(self, rows: Sequence[TensorDictBase] | TensorDictBase) -> None:
        """Append one whole group: a jagged group (``spear_stream/group.py``, as received) or validated schema
        rows, each no longer than ``max_len``."""
        self._append(pad_group(group_from_rows(rows), self.max_len, self.pad_token))
        self._write_sidecar()

    def sample_groups(
        self, n_groups: int, *, current_version: int, max_staleness: float
    ) -> list[LazyStackedTensorDict]:
        """Up to ``n_groups`` oldest live groups, consumed; stale groups are dropped first (never returned)."""
        self._drop_stale(current_version - max_staleness)
        out: list[LazyStackedTensorDict] = []
        while self._groups and len(out) < n_groups:
            group = self._groups.popleft()
            padded = self._rb[group.slots]  # fancy indexing copies out of the storage
            out.append(lazy_stack([unpad_row(row) for row in padded.unbind(0)]))
            self._owner[group.slots] = -1
            self.counters["replay/consumed_groups"] += 1
            self.counters["replay/consumed_rows"] += len(group.slots)
        self._write_sidecar()
        return out

    def drop_stale(self, *, current_version: int, max_staleness: float) -> int:
        """Drop every group older than ``current_version - max_staleness`` now; returns how many."""
        dropped = self._drop_stale(current_version - max_staleness)
        self._write_sidecar()
        return dropped

    def stats(self) -> dict[str, float]:
        rows = len(self)
        out: dict[str, float] = {
            "replay/fresh_rows": rows,
            "replay/fresh_groups": len(self._groups),
            "replay/fresh_utilization": rows / self.capacity,
            "replay/fresh_write_count": self.write_count,
            **self.counters,
        }
        if self._groups:
            out["replay/fresh_oldest_version"] = min(group.oldest for group in self._groups)
            out["replay/fresh_newest_version"] = max(group.newest for group in self._groups)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Live groups (padded rows in FIFO order, one TensorDict or None) and counters.

        The rows stay a TensorDict so that the checkpoint writes them as a memory-mapped directory of their own.
        """
        sizes = [len(group.slots) for group in self._groups]
        rows = None
        if sizes:
            rows = self._rb[torch.cat([group.slots for group in self._groups])].select(*ALL_FIELDS)
        return {
            "rows": rows,
            "group_sizes": sizes,
            "write_count": self.write_count,
            "counters": dict(self.counters),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rb.empty()
        self._groups.clear()
        self._owner.fill_(-1)
        self._cursor = 0
        sizes = [int(n) for n in state["group_sizes"]]
        if sizes:
            rows = state["rows"]
            for start, end in _spans(sizes):
                self._append(rows[start:end])
        self.write_count = int(state["write_count"])
        self.counters = Counter(state["counters"])
        self._write_sidecar()

    # -------------------------------------------------------------------------------------------- internals

    def _append(self, padded: TensorDict) -> None:
        n = padded.batch_size[0]
        if not 1 <= n <= self.capacity:
            raise ValueError(f"a group of {n} rows does not fit a fresh replay of capacity {self.capacity}")
        slots = (self._cursor + torch.arange(n)) % self.capacity
        self._evict(slots)
        oldest = int(padded["policy_version"].min())
        newest = max(int(padded["policy_version"].max()), int(padded["token_version"].max()))
        index = self._rb.extend(padded.select(*ALL_FIELDS), update_priority=False)
        if not torch.equal(index.reshape(-1).cpu(), slots):
            raise RuntimeError("torchrl's round-robin writer no longer writes where FreshReplay expects")
        self._cursor = (self._cursor + n) % self.capacity
        self._owner[slots] = self._serial
        self._groups.append(_Group(self._serial, slots, oldest, newest))
        self._serial += 1
        self.write_count += n
        self.counters["replay/added_groups"] += 1
        self.counters["replay/added_rows"] += n

    def _evict(self, slots: torch.Tensor) -> None:
        """Forget live groups the next write will overwrite (buffer full: the oldest go first)."""
        owners = self._owner[slots]
        hit = set(owners[owners >= 0].tolist())
        if hit:
            self._remove(lambda group: group.serial in hit, "overflow")

    def _drop_stale(self, floor: float) -> int:
        return self._remove(lambda group: group.oldest < floor, "stale")

    def _remove(self, predicate: Any, reason: str) -> int:
        kept: deque[_Group] = deque()
        dropped = 0
        for group in self._groups:
            if not predicate(group):
                kept.append(group)
                continue
            self._owner[group.slots] = -1
            dropped += 1
            self.counters[f"replay/dropped_{reason}_groups"] += 1
            self.counters[f"replay/dropped_{reason}_rows"] += len(group.slots)
        self._groups = kept
        return dropped

    def _write_sidecar(self) -> None:
        if self.dir is None:
            return
        groups = self._groups
        meta = {
            "schema_version": SCHEMA_VERSION,
            "capacity": self.capacity,
            "max_len": self.max_len,
            "len": len(self),
            "num_groups": len(groups),
            "write_count": self.write_count,
            "cursor": self._cursor,
            "oldest_version": min((g.oldest for g in groups), default=None),
            "newest_version": max((g.newest for g in groups), default=None),
            # [first slot, rows, oldest, newest] per live group, FIFO order; slots wrap modulo capacity
            "live_groups": [[int(g.slots[0]), len(g.slots), g.oldest, g.newest] for g in groups],
            "counters": dict(self.counters),
            "updated_at": time.time(),
        }
        tmp = self.dir / f"{SIDECAR}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.dir / SIDECAR)  # atomic: readers see the old or the new file, never half of one


def _spans(sizes: list[int]) -> list[tuple[int, int]]:
    ends = torch.tensor(sizes).cumsum(0).tolist()
    return list(zip([0, *ends[:-1]], ends, strict=True))


def read_fresh_meta(storage_dir: Path | str) -> dict[str, Any] | None:
    """The live sidecar of a fresh replay under ``storage_dir`` (None if there is none yet)."""
    path = Path(storage_dir) / "fresh" / SIDECAR
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def load_fresh_rows(storage_dir: Path | str) -> tuple[dict[str, Any] | None, TensorDict | None]:
    """The sidecar and a copy of the live padded rows (FIFO order) of a fresh replay, from any process.

    Reads without locking: a row overwritten between reading the sidecar and the memmap shows its new content.
    """
    meta = read_fresh_meta(storage_dir)
    if meta is None or not meta["live_groups"]:
        return meta, None
    capacity = meta["capacity"]
    slots = torch.cat([(first + torch.arange(n)) % capacity for first, n, *_ in meta["live_groups"]])
    storage = TensorDict.load_memmap(Path(storage_dir) / "fresh" / "storage", mode="r")
    return meta, storage[slots].select(*ALL_FIELDS)
