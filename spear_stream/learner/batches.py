"""Learner rank 0's batches: fresh groups from the replay, self-imitation rows from the SIL buffer, and the plan
that splits one learner batch into optimizer steps and per-rank micro-batches.

Order of one step (``docs/algorithm.md`` sections 3, 6 and 7):

1. :meth:`BatchAssembler.next_fresh` waits (through the rollout source) for the step's fresh groups and takes
   them out of the fresh replay: ``groups_per_step``, less the SIL share in stream mode with fixed-size batches.
2. ``prepare_batch`` computes rewards, advantages and the Dr.BoT filters of those rows.
3. :meth:`BatchAssembler.after_fresh` feeds the SIL buffer: baseline FIFO of group means/stds, then entry of
   the rows with a positive advantage.
4. :meth:`BatchAssembler.sil_rows` draws the replay rows with their recalibrated advantage ``A_tilde``.
5. :func:`plan_steps` lays both out as per-rank work, one entry per optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase

from spear_stream.algo.advantages import group_stats
from spear_stream.algo.curriculum import CurriculumValues
from spear_stream.config import Config
from spear_stream.learner.parallel import RankWork, plan_rank_work
from spear_stream.learner.sources import RolloutSource
from spear_stream.learner.step import PreparedBatch, loss_token_count, minibatch_bounds
from spear_stream.replay.fresh import FreshReplay
from spear_stream.replay.sil import SILBuffer


@dataclass
class SILRows:
    """Replayed rows with their recalibrated advantage ``A_tilde`` [n] and importance weights [n] (or None)."""

    rows: list[TensorDictBase]
    a_tilde: torch.Tensor
    weights: torch.Tensor | None


@dataclass
class StepWork:
    """One rank's share of one optimizer step: fresh on-policy rows and/or self-imitation replay rows."""

    fresh: RankWork | None
    sil: RankWork | None


class BatchAssembler:
    """The fresh replay and the SIL buffer, and the arithmetic of how much of a batch each supplies."""

    def __init__(self, cfg: Config, tokenizer) -> None:
        self.cfg = cfg
        storage = cfg.run_path / "replay" if cfg.replay.on_disk else None
        pad = tokenizer.pad_token_id or 0
        self.fresh = FreshReplay(cfg.replay.capacity, cfg.rollout.max_seq_len, storage, pad_token=pad)
        self.sil = (
            SILBuffer(cfg.sil, storage, max_len=cfg.rollout.max_seq_len, pad_token=pad)
            if cfg.sil.enabled
            else None
        )
        self.sil_rows_trained = 0
        self.fresh_rows_trained = 0
        self.fresh_groups_in_batch = cfg.env.groups_per_step  # of the batch being trained
        self.sil_share_groups = 0  # groups' worth of the batch given to replay ("fixed" stream batches)

    # ------------------------------------------------------------------ fresh
    def fresh_groups_for_step(self, values: CurriculumValues) -> int:
        """Fresh groups the next batch takes: ``groups_per_step``, less the SIL share in stream mode with
        ``sil.stream_batch = "fixed"`` (the batch keeps its size; replay rows take ``sil_fraction(t)`` of it).

        The share is capped by what the SIL buffer can supply without repeating rows (eligible rows counted in
        trajectories of one row each, as in chat mode), so an empty buffer never shrinks the batch.
        """
        per_step = self.cfg.env.groups_per_step
        fixed_stream = self.cfg.sil.mode == "stream" and self.cfg.sil.stream_batch == "fixed"
        if self.sil is None or values.gamma <= 0.0 or not fixed_stream:
            return per_step
        batch_rows = per_step * self.cfg.env.group_size
        share = min(values.sil_fraction, self.sil.num_eligible() / batch_rows)
        return max(1, per_step - round(share * per_step))

    def next_fresh(
        self,
        source: RolloutSource,
        version: int,
        values: CurriculumValues,
        groups_left: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[TensorDictBase] | None:
        """The rows of the step's fresh groups (:meth:`fresh_groups_for_step`), once the source delivered them;
        None if ``should_stop`` turned true first (nothing is taken from the replay then).

        ``groups_left``: what remains of a ``learner.max_groups`` budget; the last step takes only that.
        """
        per_step = self.fresh_groups_for_step(values)
        self.sil_share_groups = self.cfg.env.groups_per_step - per_step
        need = per_step if groups_left is None else max(1, min(per_step, groups_left))
        self.fresh_groups_in_batch = need
        source.fill(self.fresh, need, version, values, per_step, should_stop=should_stop)
        if self.fresh.num_groups < need:
            return None
        groups = self.fresh.sample_groups(need, current_version=version, max_staleness=values.max_staleness)
        return [row for g in groups for row in g.unbind(0)]

    def after_fresh(self, batch: PreparedBatch, step: int) -> None:
        """Self-imitation bookkeeping once advantages are known: baseline FIFO of group means/stds, then entry of
        the rows with positive advantage (rows the Dr.BoT filters removed from the loss are not imitated)."""
        self.fresh_rows_trained += len(batch.rows)
        if self.sil is None:
            return
        stats = group_stats(batch.rewards, batch.group_ids)
        self.sil.update_baseline(stats.mean, stats.std)
        kept = batch.loss_keep.nonzero().squeeze(1).tolist()
        self.sil.add([batch.rows[i] for i in kept], batch.advantages[kept], step, rewards=batch.rewards[kept])

    # ------------------------------------------------------------------ self-imitation
    def sil_rows_for(self, n_fresh_rows: int, values: CurriculumValues) -> int:
        """Stream mode: replay rows to mix with ``n_fresh_rows`` fresh rows.

        ``fixed``: the groups :meth:`next_fresh` left to replay, in rows. ``extra``: ``sil_fraction(t)`` of a
        batch grown beyond the fresh rows (``n / (n + fresh) = sil_fraction``).
        """
        if self.cfg.sil.stream_batch == "fixed":
            share = self.sil_share_groups
            return round(n_fresh_rows * share / (self.cfg.env.groups_per_step - share))
        frac = values.sil_fraction
        return n_fresh_rows if frac >= 1.0 else round(frac * n_fresh_rows / (1.0 - frac))

    def sil_rows(
        self, n_fresh_rows: int, values: CurriculumValues, generator: torch.Generator
    ) -> SILRows | None:
        """Replay rows for this step. ``stream``: :meth:`sil_rows_for` rows drawn by priority. ``paper``: when the
        buffer fires (``fire_factor * capacity`` eligible rows), a power-of-two subset of the survivors."""
        if self.sil is None or values.gamma <= 0.0:
            return None
        out: SILRows | None = None
        if self.cfg.sil.mode == "stream":
            rows, a_tilde, weights = self.sil.sample(self.sil_rows_for(n_fresh_rows, values), generator)
            out = None if rows is None else SILRows(list(rows.unbind(0)), a_tilde, weights)
        elif self.sil.ready():
            rows, a_tilde = self.sil.take_paper_batch(generator)
            out = None if rows is None else SILRows(list(rows.unbind(0)), a_tilde, None)
        if out is not None:
            self.sil_rows_trained += len(out.rows)
        return out

    # ------------------------------------------------------------------ metrics and state
    def metrics(self) -> dict[str, float]:
        out = {k: float(v) for k, v in self.fresh.stats().items()}
        if self.sil is not None:
            out |= {k: float(v) for k, v in self.sil.stats().items()}
        total = self.sil_rows_trained + self.fresh_rows_trained
        out["replay/sil_fraction"] = self.sil_rows_trained / max(total, 1)
        out["replay/fresh_groups_in_batch"] = float(self.fresh_groups_in_batch)
        return out

    def state_dict(self) -> dict:
        return {
            "fresh": self.fresh.state_dict(),
            "sil": self.sil.state_dict() if self.sil is not None else None,
            "rows_trained": [self.sil_rows_trained, self.fresh_rows_trained],
        }

    def load_state_dict(self, state: dict) -> None:
        self.fresh.load_state_dict(state["fresh"])
        if self.sil is not None and state["sil"] is not None:
            self.sil.load_state_dict(state["sil"])
        self.sil_rows_trained, self.fresh_rows_trained = state["rows_trained"]


def _rank_work(rows, advantages, keep, weights, world_size: int, token_budget: int) -> list[RankWork]:
    return plan_rank_work(
        rows,
        advantages,
        keep,
        world_size=world_size,
        token_budget=token_budget,
        num_tokens=loss_token_count(rows, keep),
        num_seqs=max(1, len(rows)),
        weights=weights,
    )


def plan_steps(
    batch: PreparedBatch, sil: SILRows | None, *, cfg: Config, world_size: int
) -> list[list[StepWork]]:
    """Per-rank work, ``out[rank][k]`` for optimizer step k.

    Fresh rows are split into ``learner.minibatches`` optimizer steps (one epoch, groups kept whole by row
    order). Stream-mode SIL rows are spread over the same steps as a separately normalised term; paper-mode SIL
    rows become extra optimizer steps after the on-policy ones, in chunks of the fresh minibatch's size.
    """
    budget = cfg.learner.micro_batch_tokens
    n_mb = cfg.learner.minibatches
    rows, adv, keep = batch.rows, batch.advantages, batch.loss_keep
    steps: list[list[StepWork]] = []
    stream = sil is not None and cfg.sil.mode == "stream"
    sil_bounds = minibatch_bounds(len(sil.rows), n_mb) if sil is not None and stream else []
    for i, (lo, hi) in enumerate(minibatch_bounds(len(rows), n_mb)):
        fresh = _rank_work(rows[lo:hi], adv[lo:hi], keep[lo:hi], None, world_size, budget)
        replay: list[RankWork | None] = [None] * world_size
        if sil is not None and stream and sil_bounds[i][1] > sil_bounds[i][0]:
            slo, shi = sil_bounds[i]
            w = None if sil.weights is None else sil.weights[slo:shi]
            ones = torch.ones(shi - slo, dtype=torch.bool)
            replay = list(_rank_work(sil.rows[slo:shi], sil.a_tilde[slo:shi], ones, w, world_size, budget))
        steps.append([StepWork(f, r) for f, r in zip(fresh, replay)])
    if sil is not None and not stream:
        chunk = max(1, len(rows) // n_mb)
        for lo in range(0, len(sil.rows), chunk):
            hi = min(len(sil.rows), lo + chunk)
            ones = torch.ones(hi - lo, dtype=torch.bool)
            paper = _rank_work(sil.rows[lo:hi], sil.a_tilde[lo:hi], ones, None, world_size, budget)
            steps.append([StepWork(None, r) for r in paper])
    return [list(per_rank) for per_rank in zip(*steps)]
