"""The SPEAR self-imitation buffer (docs/algorithm.md section 6) on torchrl parts.

A ``TensorDictReplayBuffer`` over ``LazyMemmapStorage`` (on disk under ``<storage_dir>/sil/storage``) or
``LazyTensorStorage`` (RAM) holds padded schema rows (``schema.pad_rows``) plus ``sil_reward``,
``sil_advantage`` and ``sil_entry_step``; its round-robin writer is a ring, so when the ring is full the oldest
entries are overwritten first (counted as overflow). The math lives in ``algo/sil.py``; this module keeps:

* per-slot metadata (live, reward R, advantage at entry, learner step of entry), the source of truth;
* the baseline FIFO ``D_R`` of group-mean rewards (and group stds) of the most recent ``baseline_size`` groups;
* age eviction: entries more than ``tolerate_steps`` learner steps older than the newest step seen;
* recalibration ``A_tilde = R - P50(D_R)`` whenever rows, baseline or step change.

Mode ``stream``: torchrl's ``PrioritizedSampler`` draws rows with priority ``A_tilde^alpha`` over rows passing the
replay filter. torchrl's sampler refuses zero priorities inside the filled range, so rows that fail the filter
(or were evicted) get a 1e-30 priority and any such draw is rejected and redrawn: they are never returned.
Importance weights ``(p_i / p_min)^-beta`` use the minimum over eligible rows only (torchrl's would include the
1e-30 ones), with beta annealed from ``beta_start`` to 1 over ``beta_steps`` learner steps.

Mode ``paper``: :meth:`SILBuffer.ready` says when more than ``fire_factor * capacity`` rows survive the filter;
:meth:`SILBuffer.take_paper_batch` then draws ``min(2^floor(log2 n), capacity)`` survivors and clears the ring.

A JSON sidecar ``<storage_dir>/sil/meta.json`` (replaced atomically) lists live slots, their entry steps and
``A_tilde`` for the replay inspector, since the memmap alone does not say which slots are live.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import LazyStackedTensorDict, TensorDict, TensorDictBase, lazy_stack
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, PrioritizedSampler, TensorDictReplayBuffer

from spear_stream.algo.sil import (
    importance_weights,
    p50,
    paper_batch_size,
    paper_ready,
    recalibrated_advantage,
    replay_beta,
    replay_priorities,
    sil_entry_mask,
    sil_replay_mask,
)
from spear_stream.config import SILConfig
from spear_stream.schema import ALL_FIELDS, SCHEMA_VERSION, pad_rows, unpad_row

SIDECAR = "meta.json"
EXTRA_FIELDS = ("sil_reward", "sil_advantage", "sil_entry_step")
_UNREACHABLE = 1e-30  # tree priority of rows that must not be drawn (positive: torchrl rejects p_min <= 0)
_MAX_REDRAWS = 8


class SILBuffer:
    """Self-imitation entries, baseline FIFO and recalibration; see the module docstring."""

    def __init__(
        self,
        cfg: SILConfig,
        storage_dir: Path | str | None = None,
        *,
        max_len: int = 1024,
        storage_rows: int | None = None,
        pad_token: int = 0,
    ) -> None:
        """``max_len``: padded row length (pass ``rollout.max_seq_len``). ``storage_rows``: ring size; default
        ``capacity`` in stream mode and ``4 * capacity`` in paper mode (it must exceed ``fire_factor * capacity``
        survivors plus the rows below P50 that wait with them)."""
        self.cfg = cfg
        self.max_len, self.pad_token = max_len, pad_token
        self.size = storage_rows or (cfg.capacity if cfg.mode == "stream" else 4 * cfg.capacity)
        self.dir = None if storage_dir is None else Path(storage_dir) / "sil"
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            storage: Any = LazyMemmapStorage(self.size, scratch_dir=self.dir / "storage", existsok=True)
        else:
            storage = LazyTensorStorage(self.size)
        # alpha and eps are applied by us (replay_priorities): the tree then holds exactly our priorities.
        sampler = (
            PrioritizedSampler(self.size, alpha=1.0, beta=1.0, eps=0.0) if cfg.mode == "stream" else None
        )
        self._rb = TensorDictReplayBuffer(storage=storage, sampler=sampler)
        self._live = torch.zeros(self.size, dtype=torch.bool)
        self._reward = torch.zeros(self.size, dtype=torch.float64)
        self._advantage = torch.zeros(self.size, dtype=torch.float32)
        self._entry_step = torch.zeros(self.size, dtype=torch.int64)
        self._cursor = 0  # mirrors the writer's cursor; checked on every write
        self._replays = torch.zeros(self.size, dtype=torch.int64)  # times each entry was replayed (lineage)
        self.write_count = 0
        self._means = torch.zeros(0, dtype=torch.float64)
        self._stds = torch.zeros(0, dtype=torch.float64)
        self.step = 0  # newest learner step seen
        self.counters: Counter[str] = Counter()
        self._a_tilde = torch.zeros(self.size, dtype=torch.float64)
        self._eligible = torch.zeros(self.size, dtype=torch.bool)
        self._priority = torch.zeros(self.size, dtype=torch.float64)
        self._dirty = True
        self._write_sidecar()

    def __len__(self) -> int:
        return int(self._live.sum())

    # -------------------------------------------------------------------------------------------- writing

    def add(
        self,
        rows: Sequence[TensorDictBase] | TensorDictBase,
        advantages: torch.Tensor,
        step: int,
        *,
        rewards: torch.Tensor | None = None,
    ) -> int:
        """Enter the rows that pass the entry filter (``A > 0``, and a tool call if ``require_tool_call``).

        ``advantages`` [N] are the on-policy advantages, ``rewards`` [N] the rewards the group means of
        :meth:`update_baseline` were computed from (default: ``outcome_reward``). Evicts by age first. If more
        rows enter than the ring holds, the ones with the largest advantage are kept. Returns rows added.
        """
        items = list(rows.unbind(0)) if isinstance(rows, TensorDictBase) else list(rows)
        self.evict(step)
        if not items:
            return 0
        n_calls = torch.stack([r["n_tool_calls"] for r in items])
        reward = rewards if rewards is not None else torch.stack([r["outcome_reward"] for r in items])
        enter = sil_entry_mask(advantages, n_calls, require_tool_call=self.cfg.require_tool_call)
        idx = enter.nonzero().squeeze(1)
        if idx.numel() > self.size:
            top = torch.argsort(advantages[idx], descending=True, stable=True)[: self.size]
            idx = idx[top.sort().values]
            self.counters["replay/sil_skipped_rows"] += int(enter.sum()) - self.size
        if idx.numel() == 0:
            return 0
        padded = pad_rows([items[i] for i in idx.tolist()], self.max_len, self.pad_token)
        steps = torch.full((idx.numel(),), int(step), dtype=torch.int64)
        self._write(padded, reward[idx].double(), advantages[idx].float(), steps)
        self.counters["replay/sil_added_rows"] += idx.numel()
        self._write_sidecar()
        return idx.numel()

    def update_baseline(self, group_means: torch.Tensor, group_stds: torch.Tensor | None = None) -> None:
        """Append this step's group-mean rewards (and stds) to ``D_R``, keeping the last ``baseline_size``."""
        keep = self.cfg.baseline_size
        self._means = torch.cat([self._means, group_means.detach().double().flatten()])[-keep:]
        if group_stds is not None:
            self._stds = torch.cat([self._stds, group_stds.detach().double().flatten()])[-keep:]
        self._dirty = True
        self._write_sidecar()

    def evict(self, step: int) -> int:
        """Drop entries more than ``tolerate_steps`` older than the newest step (``max(seen, step)``)."""
        self.step = max(self.step, int(step))
        old = self._live & (self._entry_step < self.step - self.cfg.tolerate_steps)
        n = int(old.sum())
        if n:
            self._live &= ~old
            self.counters["replay/sil_evicted_age_rows"] += n
            self._dirty = True
            self._write_sidecar()
        return n

    def _write(
        self, padded: TensorDict, reward: torch.Tensor, advantage: torch.Tensor, steps: torch.Tensor
    ) -> None:
        n = padded.batch_size[0]
        slots = (self._cursor + torch.arange(n)) % self.size
        overwritten = int(self._live[slots].sum())
        if overwritten:
            self.counters["replay/sil_evicted_overflow_rows"] += overwritten
        data = padded.select(*ALL_FIELDS)
        data["sil_reward"], data["sil_advantage"], data["sil_entry_step"] = reward, advantage, steps
        index = self._rb.extend(data, update_priority=False)
        if not torch.equal(index.reshape(-1).cpu(), slots):
            raise RuntimeError("torchrl's round-robin writer no longer writes where SILBuffer expects")
        self._cursor = (self._cursor + n) % self.size
        self._live[slots] = True
        self._reward[slots], self._advantage[slots], self._entry_step[slots] = reward, advantage, steps
        self._replays[slots] = 0
        self.write_count += n
        self._dirty = True

    # -------------------------------------------------------------------------------------------- recalibration

    @property
    def baseline_p50(self) -> float:
        return p50(self._means, empty=0.0)

    def _refresh(self) -> None:
        """Recompute A_tilde, the replay filter and (stream mode) the sampler's priorities for every slot."""
        if not self._dirty:
            return
        std_fifo = self._stds if self.cfg.recalibrate_std else None
        self._a_tilde = recalibrated_advantage(self._reward, self._means, std_fifo, self.cfg.recalibrate_std)
        self._eligible = self._live & sil_replay_mask(self._a_tilde, strict=self.cfg.replay_strict)
        self._priority = replay_priorities(self._a_tilde, self._eligible, self.cfg.alpha)
        filled = len(self._rb)
        if self.cfg.mode == "stream" and filled:
            tree = torch.where(self._eligible, self._priority, torch.full_like(self._priority, _UNREACHABLE))
            self._rb.update_priority(torch.arange(filled), tree[:filled].float())  # the tree is float32
        self._dirty = False

    def a_tilde(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(live slots [L], their current A_tilde [L]) in slot order."""
        self._refresh()
        slots = self._live.nonzero().squeeze(1)
        return slots, self._a_tilde[slots].float()

    # -------------------------------------------------------------------------------------------- sampling

    def beta(self) -> float:
        return replay_beta(self.step, self.cfg.beta_start, self.cfg.beta_steps)

    def num_eligible(self) -> int:
        self._refresh()
        return int(self._eligible.sum())

    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[LazyStackedTensorDict | None, torch.Tensor, torch.Tensor]:
        """Stream mode: ``n`` rows drawn with replacement by priority ``A_tilde^alpha`` among rows passing the
        replay filter. Returns (unpadded rows as a lazy stack, A_tilde [n], importance weights [n]); rows is
        None (and the tensors empty) when no row is eligible."""
        if self.cfg.mode != "stream":
            raise RuntimeError("SILBuffer.sample is for mode 'stream'; mode 'paper' uses take_paper_batch")
        self._refresh()
        if n <= 0 or not bool(self._eligible.any()):
            return None, torch.zeros(0), torch.zeros(0)
        self._rb.set_rng(generator)
        slots = self._draw(n, generator)
        data = self._rb[slots]
        a_tilde = self._a_tilde[slots].float()
        weights = importance_weights(
            self._priority[slots], float(self._priority[self._eligible].min()), self.beta()
        )
        self.counters["replay/sil_sampled_rows"] += n
        self._replays += torch.bincount(slots, minlength=self.size)
        self._write_sidecar()
        return _unpad(data), a_tilde, weights

    def _draw(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        slots = torch.empty(0, dtype=torch.int64)
        for _ in range(_MAX_REDRAWS):
            _, info = self._rb.sample(n - slots.numel(), return_info=True)
            drawn = torch.as_tensor(info["index"]).reshape(-1).long()
            ok = self._eligible[drawn]
            self.counters["replay/sil_rejected_draws"] += int((~ok).sum())
            slots = torch.cat([slots, drawn[ok]])
            if slots.numel() == n:
                return slots
        # Practically unreachable (ineligible rows weigh 1e-30); fall back to an exact draw over eligible rows.
        extra = torch.multinomial(self._priority, n - slots.numel(), replacement=True, generator=generator)
        return torch.cat([slots, extra])

    # -------------------------------------------------------------------------------------------- paper mode

    def ready(self) -> bool:
        """Mode paper: more than ``fire_factor * capacity`` buffered rows pass the replay filter."""
        return paper_ready(self.num_eligible(), self.cfg.capacity, self.cfg.fire_factor)

    def take_paper_batch(
        self, generator: torch.Generator | None = None
    ) -> tuple[LazyStackedTensorDict | None, torch.Tensor]:
        """A uniform random subset of ``min(2^floor(log2 n), capacity)`` of the n survivors, then clear the ring
        (entries only; the baseline FIFO stays). Returns (unpadded rows, their A_tilde)."""
        self._refresh()
        survivors = self._eligible.nonzero().squeeze(1)
        size = paper_batch_size(survivors.numel(), self.cfg.capacity)
        rows, a_tilde = None, torch.zeros(0)
        if size:
            perm = torch.randperm(survivors.numel(), generator=generator)[:size]
            slots = survivors[perm]
            rows, a_tilde = _unpad(self._rb[slots]), self._a_tilde[slots].float()
            self._replays += torch.bincount(slots, minlength=self.size)
        self.counters["replay/sil_paper_fires"] += 1
        self.counters["replay/sil_paper_rows"] += size
        self.counters["replay/sil_cleared_rows"] += len(self)
        self._clear()
        self._write_sidecar()
        return rows, a_tilde

    def _clear(self) -> None:
        self._rb.empty()
        self._live.fill_(False)
        self._cursor = 0
        self._dirty = True

    # -------------------------------------------------------------------------------------------- state

    def _live_in_age_order(self) -> torch.Tensor:
        slots = self._live.nonzero().squeeze(1)
        ring_age = (slots - self._cursor) % self.size  # older writes sit right after the cursor
        slots = slots[torch.argsort(ring_age, stable=True)]
        return slots[torch.argsort(self._entry_step[slots], stable=True)]

    def stats(self) -> dict[str, float]:
        self._refresh()
        live = self._live
        out: dict[str, float] = {
            "replay/sil_rows": float(live.sum()),
            "replay/sil_eligible_rows": float(self._eligible.sum()),
            "replay/sil_utilization": float(live.sum()) / self.size,
            "replay/sil_p50": self.baseline_p50,
            "replay/sil_baseline_len": float(self._means.numel()),
            "replay/sil_beta": self.beta(),
            **{k: float(v) for k, v in self.counters.items()},
        }
        if bool(live.any()):
            out["replay/sil_a_tilde_mean"] = float(self._a_tilde[live].mean())
            out["replay/sil_a_tilde_max"] = float(self._a_tilde[live].max())
            out["replay/sil_age_mean"] = float((self.step - self._entry_step[live]).double().mean())
        return out

    def state_dict(self) -> dict[str, Any]:
        """Live entries (padded, oldest first, one TensorDict or None), their metadata, the FIFO, step, counters."""
        slots = self._live_in_age_order()
        rows = self._rb[slots].select(*ALL_FIELDS) if slots.numel() else None  # a TensorDict: its own files
        return {
            "rows": rows,
            "reward": self._reward[slots].clone(),
            "advantage": self._advantage[slots].clone(),
            "entry_step": self._entry_step[slots].clone(),
            "baseline_means": self._means.clone(),
            "baseline_stds": self._stds.clone(),
            "step": self.step,
            "counters": dict(self.counters),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._clear()
        n = int(state["entry_step"].numel())
        if n:
            padded = state["rows"]
            if padded["tokens"].shape[-1] != self.max_len:
                raise ValueError(
                    f"checkpointed SIL rows have length {padded['tokens'].shape[-1]}, not {self.max_len}"
                )
            keep = slice(max(0, n - self.size), n)  # a smaller ring keeps the newest entries
            self._write(
                padded[keep], state["reward"][keep], state["advantage"][keep], state["entry_step"][keep]
            )
        self._means = state["baseline_means"].clone().double()
        self._stds = state["baseline_stds"].clone().double()
        self.step = int(state["step"])
        self.counters = Counter(state["counters"])
        self._write_sidecar()

    def _write_sidecar(self) -> None:
        if self.dir is None:
            return
        self._refresh()
        slots = self._live_in_age_order()
        meta = {
            "schema_version": SCHEMA_VERSION,
            "mode": self.cfg.mode,
            "capacity": self.cfg.capacity,
            "storage_rows": self.size,
            "max_len": self.max_len,
            "len": int(slots.numel()),
            "step": self.step,
            "p50": self.baseline_p50,
            "baseline_len": int(self._means.numel()),
            "cursor": self._cursor,
            "write_count": self.write_count,
            # oldest first: [slot, entry step, A_tilde, eligible, times replayed]
            "live": [
                [
                    int(s),
                    int(self._entry_step[s]),
                    _finite(float(self._a_tilde[s])),
                    bool(self._eligible[s]),
                    int(self._replays[s]),
                ]
                for s in slots
            ],
            "counters": dict(self.counters),
            "updated_at": time.time(),
        }
        tmp = self.dir / f"{SIDECAR}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.dir / SIDECAR)  # atomic: readers see the old or the new file, never half of one


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _unpad(padded: TensorDictBase) -> LazyStackedTensorDict:
    return lazy_stack([unpad_row(row) for row in padded.select(*ALL_FIELDS).unbind(0)])


def read_sil_meta(storage_dir: Path | str) -> dict[str, Any] | None:
    """The live sidecar of a SIL buffer under ``storage_dir`` (None if there is none yet)."""
    try:
        return json.loads((Path(storage_dir) / "sil" / SIDECAR).read_text())
    except FileNotFoundError:
        return None
