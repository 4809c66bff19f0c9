"""Rank 0's side of the stream: transport receiver, fresh replay, credits, worker supervision, weight publication
and evaluation. Other ranks only see the micro-batches it scatters.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from tensordict import TensorDictBase

from spear_stream.algo.advantages import group_stats
from spear_stream.algo.curriculum import CurriculumValues
from spear_stream.config import Config
from spear_stream.launch import WorkerSupervisor
from spear_stream.learner.step import PreparedBatch
from spear_stream.models import load_model
from spear_stream.replay.fresh import FreshReplay
from spear_stream.replay.sil import SILBuffer
from spear_stream.rollout.evaluate import EvalResult, evaluate_model_dir
from spear_stream.transport.receiver import RolloutReceiver
from spear_stream.weightsync.base import make_publisher


class RolloutHub:
    def __init__(self, cfg: Config, tokenizer, rng: random.Random) -> None:
        self.cfg, self.tokenizer, self.rng = cfg, tokenizer, rng
        run_dir = cfg.run_path
        self.receiver = RolloutReceiver(cfg.transport, auto_credit=False, vocab_size=len(tokenizer))
        self.fresh = FreshReplay(
            cfg.replay.capacity,
            cfg.rollout.max_seq_len,
            run_dir / "replay" if cfg.replay.on_disk else None,
            pad_token=tokenizer.pad_token_id or 0,
        )
        self.sil = (
            SILBuffer(
                cfg.sil,
                run_dir / "replay" if cfg.replay.on_disk else None,
                max_len=cfg.rollout.max_seq_len,
                pad_token=tokenizer.pad_token_id or 0,
            )
            if cfg.sil.enabled
            else None
        )
        self.sil_rows_trained = 0
        self.fresh_rows_trained = 0
        self.fresh_groups_in_batch = cfg.env.groups_per_step  # of the batch being trained
        self.sil_share_groups = 0  # groups' worth of the batch given to replay ("fixed" stream batches)
        self.publisher = make_publisher(cfg.sync.method, run_dir=run_dir, timeout_s=cfg.sync.timeout_s)
        self.supervisor = WorkerSupervisor(
            cfg.rollout.num_workers,
            address=self.receiver.address,
            run_token=self.receiver.run_token,
            config_path=run_dir / "config.toml",
            log_dir=run_dir / "logs",
            heartbeat_timeout_s=max(30.0, cfg.sync.timeout_s),
        )
        (run_dir / "connect.json").write_text(
            json.dumps({"address": self.receiver.address, "run_token": self.receiver.run_token})
        )
        self.sync_credits_due = 0  # sync mode: groups granted for the current version, not yet received
        self.received_groups = 0
        self.received_trajectories = 0
        self.received_tokens = 0
        self.t_start = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def start(self, version: int) -> None:
        print(
            f"learner: receiving rollouts on {self.receiver.address} (run token in connect.json); "
            f"{self.cfg.rollout.num_workers} local worker(s), mode {self.cfg.sync.mode}",
            flush=True,
        )
        self.supervisor.start()
        self.t_start = time.monotonic()

    def stop(self) -> None:
        self.receiver.stop_workers()
        self.supervisor.stop(grace_s=3.0)

    def close(self) -> None:
        self.supervisor.stop()
        self.receiver.close()
        self.publisher.close()

    # ------------------------------------------------------------------ data
    def _pump(self, timeout_ms: int) -> None:
        for group in self.receiver.poll(timeout_ms):
            self.fresh.extend_group(group.rows)
            self.received_groups += 1
            self.received_trajectories += len({int(t) for t in group.rows.get("traj_id")})
            self.received_tokens += sum(int(m.sum()) for m in group.rows.get("loss_mask", as_list=True))

    def _grant(self, version: int, values: CurriculumValues) -> None:
        workers = self.receiver.workers
        if not workers:
            return
        # what the learner will take per step (fewer than groups_per_step when replay fills part of the batch):
        # granting for groups_per_step would let groups wait past max_staleness and be dropped
        per_step = self.fresh_groups_for_step(values)
        if self.cfg.sync.mode == "sync":
            # Reference behaviour: one batch of credits per published version, generated entirely by it.
            budget = per_step - self.fresh.num_groups
            in_flight = sum(self.receiver.outstanding(w) for w in workers)
            free = budget - in_flight
        else:
            budget = per_step * (values.max_staleness + 1)
            in_flight = sum(self.receiver.outstanding(w) for w in workers)
            free = budget - in_flight - self.fresh.num_groups
        while free > 0:
            worker = min(workers, key=self.receiver.outstanding)
            if not self.receiver.grant(worker, 1):
                self.receiver.forget(worker)
                workers = self.receiver.workers
                if not workers:
                    return
                continue
            free -= 1

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

    def next_batch(
        self, version: int, values: CurriculumValues, groups_left: int | None = None
    ) -> list[TensorDictBase]:
        """Wait until the step's fresh groups (:meth:`fresh_groups_for_step`) are buffered; return their rows.

        ``groups_left``: what remains of a ``learner.max_groups`` budget; the last step takes only that.
        """
        need = self.fresh_groups_for_step(values)
        self.sil_share_groups = self.cfg.env.groups_per_step - need
        if groups_left is not None:
            need = max(1, min(need, groups_left))
        self.fresh_groups_in_batch = need
        deadline = time.monotonic() + max(600.0, 10 * self.cfg.sync.timeout_s)
        while True:
            self._supervise()
            self._grant(version, values)
            self._pump(20)
            self.fresh.drop_stale(current_version=version, max_staleness=values.max_staleness)
            if self.fresh.num_groups >= need:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no batch after {deadline - self.t_start:.0f}s: {self.fresh.num_groups}/{need} groups buffered; "
                    f"see {self.cfg.run_path}/logs/worker*.log"
                )
        groups = self.fresh.sample_groups(need, current_version=version, max_staleness=values.max_staleness)
        return [row for g in groups for row in g.unbind(0)]

    def after_batch(self, rows, batch: PreparedBatch, step: int, values: CurriculumValues) -> None:
        """Self-imitation bookkeeping once advantages are known: baseline FIFO of group means/stds, then entry of
        the rows with positive advantage (rows the Dr.BoT filters removed from the loss are not imitated)."""
        self.fresh_rows_trained += len(rows)
        if self.sil is None:
            return
        stats = group_stats(batch.rewards, batch.group_ids)
        self.sil.update_baseline(stats.mean, stats.std)
        kept = batch.loss_keep.nonzero().squeeze(1).tolist()
        self.sil.add([rows[i] for i in kept], batch.advantages[kept], step, rewards=batch.rewards[kept])

    def sil_batch(
        self, n_fresh_rows: int, values: CurriculumValues, generator: torch.Generator
    ) -> tuple[list[TensorDictBase], torch.Tensor, torch.Tensor | None] | None:
        """Replay rows for this step, with their recalibrated advantage and importance weights.

        ``stream``: a ``sil_fraction(t)`` share of the mixed batch, drawn by priority. ``paper``: when the buffer
        fires (1.5 x B_sil eligible rows), a power-of-two subset of the survivors, after which it is cleared.
        """
        if self.sil is None or values.gamma <= 0.0:
            return None
        out: tuple[list[TensorDictBase], torch.Tensor, torch.Tensor | None] | None
        if self.cfg.sil.mode == "stream":
            if self.cfg.sil.stream_batch == "fixed":  # the groups next_batch left to replay, in rows
                share = self.sil_share_groups
                n = round(n_fresh_rows * share / (self.cfg.env.groups_per_step - share))
            else:  # "extra": sil_fraction(t) of a batch grown beyond the fresh rows
                frac = values.sil_fraction
                n = n_fresh_rows if frac >= 1.0 else round(frac * n_fresh_rows / (1.0 - frac))
            rows, a_tilde, weights = self.sil.sample(n, generator)
            out = None if rows is None else (list(rows.unbind(0)), a_tilde, weights)
        elif self.sil.ready():
            rows, a_tilde = self.sil.take_paper_batch(generator)
            out = None if rows is None else (list(rows.unbind(0)), a_tilde, None)
        else:
            out = None
        if out is not None:
            self.sil_rows_trained += len(out[0])
        return out

    def _supervise(self) -> None:
        for worker_id in self.supervisor.check(self.receiver.last_seen):
            self.receiver.forget(worker_id)

    # ------------------------------------------------------------------ weights
    def publish(self, state: dict[str, torch.Tensor], version: int) -> None:
        announcement = self.publisher.publish(state, version)
        self.receiver.announce_weights(version, announcement.to_json())

    def save_hf(self, state: dict[str, torch.Tensor], path: Path) -> None:
        model = load_model(self.cfg.model.path, self.cfg.model.dtype)
        model.load_state_dict(state, strict=False)  # a tied lm_head arrives once, as embed_tokens
        model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)

    # ------------------------------------------------------------------ evaluation and metrics
    def evaluate_dir(self, model_dir: str | Path, phase: str) -> dict[str, EvalResult]:
        c = self.cfg
        temperatures = {f"{phase}/sampled": c.eval.temperature} | (
            {f"{phase}/greedy": 0.0} if c.eval.greedy else {}
        )
        out = evaluate_model_dir(c, model_dir, temperatures)
        for key, r in out.items():
            print(f"eval {key}: success {r.success_rate:.1%} ± {r.stderr:.1%} (n={r.episodes})", flush=True)
        return out

    def metrics(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self.t_start, 1e-9)
        out = {k: float(v) for k, v in self.receiver.counters.items()}
        out |= {k: float(v) for k, v in self.fresh.stats().items()}
        if self.sil is not None:
            out |= {k: float(v) for k, v in self.sil.stats().items()}
        total = self.sil_rows_trained + self.fresh_rows_trained
        out["replay/sil_fraction"] = self.sil_rows_trained / max(total, 1)
        out["replay/fresh_groups_in_batch"] = float(self.fresh_groups_in_batch)
        out |= {
            "rollout/trajectories_per_s": self.received_trajectories / elapsed,
            "rollout/tokens_per_s": self.received_tokens / elapsed,
            "rollout/groups_received": float(self.received_groups),
            "rollout/workers_alive": float(len(self.receiver.workers)),
            "rollout/worker_restarts": float(self.supervisor.restarts),
        }
        return out

    def state_dict(self) -> dict:
        return {
            "fresh": self.fresh.state_dict(),
            "receiver": self.receiver.state_dict(),
            "sil": self.sil.state_dict() if self.sil is not None else None,
            "counts": [
                self.received_groups,
                self.received_trajectories,
                self.sil_rows_trained,
                self.fresh_rows_trained,
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        self.fresh.load_state_dict(state["fresh"])
        self.receiver.load_state_dict(state["receiver"])
        if self.sil is not None and state["sil"] is not None:
            self.sil.load_state_dict(state["sil"])
        (self.received_groups, self.received_trajectories, self.sil_rows_trained, self.fresh_rows_trained) = (
            state["counts"]
        )
