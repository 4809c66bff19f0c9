"""The trainer: one class for every configuration (``docs/design.md`` section "Learner").

Every rank holds an FSDP2 shard of the policy (a world of one without torchrun). Learner rank 0 also owns the
rollout source (in-process engine or ZeroMQ workers, ``learner/sources.py``) and the replay
(``learner/batches.py``); each step it takes a batch, computes advantages and plans every rank's micro-batches,
which it scatters. All ranks then run the same optimizer steps, and every ``sync_every(t)`` steps the full
state dict goes back to the source. The policy version is the number of learner steps taken.

Components can be passed in (``Trainer(cfg, source=...)``); the CLI builds them all from the config.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from spear_stream.algo.curriculum import Curriculum, CurriculumValues
from spear_stream.config import Config, to_toml
from spear_stream.learner import checkpoint as ckpt
from spear_stream.learner.batches import BatchAssembler, StepWork, plan_steps
from spear_stream.learner.parallel import (
    broadcast_rows,
    clip_grad_norm,
    destroy_distributed,
    full_state_dict,
    init_distributed,
    loss_over_work,
    shard_model,
    sum_across_ranks,
)
from spear_stream.learner.results import evaluate_dir, export_hf
from spear_stream.learner.sources import RolloutSource, make_source
from spear_stream.learner.step import prepare_batch
from spear_stream.learner.stop import StopRequest
from spear_stream.metrics import MetricsLogger
from spear_stream.models import load_model, load_tokenizer
from spear_stream.utils import keep_large_buffers, progress, set_threads


def make_optimizer(model, cfg: Config) -> torch.optim.Optimizer:
    betas = (cfg.learner.betas[0], cfg.learner.betas[1])
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.learner.lr, betas=betas, weight_decay=cfg.learner.weight_decay
    )


class Trainer:
    def __init__(self, cfg: Config, *, resume: bool = False, source: RolloutSource | None = None) -> None:
        self.cfg = cfg
        # before any thread starts (gloo's, libzmq's): rank 0 receives every group as a fresh large frame,
        # and every rank receives its micro-batches as large tensors (see the helper)
        keep_large_buffers()
        self.info = init_distributed(cfg.learner.backend)
        set_threads(cfg.learner.num_threads)
        torch.manual_seed(cfg.seed + self.info.rank)
        self.run_dir = cfg.run_path
        self.is_main = self.info.rank == 0
        self.tokenizer = load_tokenizer(cfg.model.path)
        mixed = None if cfg.learner.mixed_precision == "none" else cfg.learner.mixed_precision
        self.model = shard_model(load_model(cfg.model.path, cfg.model.dtype), mixed_precision=mixed)
        self.optimizer = make_optimizer(self.model, cfg)
        # A frozen reference policy only when the KL term is on (Dr.BoT trick 1 removes it and its forward pass).
        # Unsharded on every rank: each rank scores only its own micro-batches.
        self.ref_model = None
        if cfg.algo.loss.kl_coef > 0:
            self.ref_model = load_model(cfg.model.path, cfg.model.dtype).eval().requires_grad_(False)
        self.curriculum = Curriculum(cfg.curriculum)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0  # learner steps taken = the policy version of the current weights
        self.groups_trained = 0  # fresh groups trained on (learner.max_groups)
        self.source: RolloutSource | None = None
        self.batches: BatchAssembler | None = None
        self.metrics: MetricsLogger | None = None
        self.stop = StopRequest()  # SIGTERM / Ctrl-C: stop after the current step, with a checkpoint
        self.stopping = False  # every rank agrees on it (train_step)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(to_toml(cfg))
            self.source = source or make_source(cfg, self.tokenizer)
            self.batches = BatchAssembler(cfg, self.tokenizer)
        self.resumed = False
        if resume:
            self._resume()
        if self.is_main:  # after a resume, lines of steps beyond the checkpoint are dropped (they are redone)
            self.metrics = MetricsLogger(
                self.run_dir, cfg.log.tensorboard, resume_step=self.step if resume else None
            )

    # ------------------------------------------------------------------ checkpoint
    def _resume(self) -> None:
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {self.run_dir}/checkpoints")
        extra = ckpt.load_checkpoint(path, self.model, self.optimizer)
        self.step, self.groups_trained = int(extra["step"]), int(extra["groups_trained"])
        self.curriculum.load_state_dict(extra["curriculum"])
        self.generator.set_state(extra["generator"])
        if self.batches is not None and self.source is not None:
            self.batches.load_state_dict(extra["replay"])
            self.source.load_state_dict(extra["source"])
        self.resumed = True
        if self.is_main:
            print(f"resumed from {path}: step {self.step}, policy version {self.step}", flush=True)

    def save(self) -> Path:
        extra = {
            "step": self.step,
            "groups_trained": self.groups_trained,
            "curriculum": self.curriculum.state_dict(),
            "generator": self.generator.get_state(),
            "replay": self.batches.state_dict() if self.batches is not None else None,
            "source": self.source.state_dict() if self.source is not None else None,
        }
        path = ckpt.save_checkpoint(
            ckpt.checkpoint_path(self.run_dir, self.step), self.model, self.optimizer, extra
        )
        if self.cfg.checkpoint.keep_last:
            ckpt.prune_checkpoints(self.run_dir, self.cfg.checkpoint.keep_last)
        return path

    def done(self) -> bool:
        """``learner.steps`` taken, or the ``learner.max_groups`` budget of fresh groups spent."""
        budget = self.cfg.learner.max_groups
        return self.step >= self.cfg.learner.steps or (budget > 0 and self.groups_trained >= budget)

    # ------------------------------------------------------------------ one step
    def _next_work(self, values: CurriculumValues) -> tuple[list[list[StepWork]] | None, dict[str, float]]:
        """Rank 0: the next batch as per-rank work (other ranks get theirs from the scatter); no work for any
        rank when a stop was requested while it waited for rollouts."""
        if self.batches is None or self.source is None:
            return None, {}
        c = self.cfg
        left = c.learner.max_groups - self.groups_trained if c.learner.max_groups else None
        rows = self.batches.next_fresh(
            self.source, self.step, values, left, should_stop=lambda: self.stop.requested
        )
        if rows is None:  # what arrived stays in the replay, which the stop checkpoint saves
            return [[] for _ in range(self.info.world_size)], {}
        batch = prepare_batch(rows, c.algo, values.mu)
        self.batches.after_fresh(batch, self.step)
        sil = self.batches.sil_rows(len(rows), values, self.generator)
        work = plan_steps(batch, sil, cfg=c, world_size=self.info.world_size)
        staleness = torch.tensor([self.step - int(r["policy_version"]) for r in rows], dtype=torch.float)
        n_sil = len(sil.rows) if sil is not None else 0
        return work, batch.metrics | {
            "staleness/mean": float(staleness.mean()),
            "staleness/max": float(staleness.max()),
            "rollout/trajectories": float(len({int(r["traj_id"]) for r in rows})),
            "replay/sil_rows_in_batch": float(n_sil),
            "replay/sil_batch_fraction": n_sil / (n_sil + len(rows)),
        }

    def _optimize(self, my_steps: list[StepWork], values: CurriculumValues) -> dict[str, float]:
        """This rank's optimizer steps; returns its additive metric sums."""
        c = self.cfg
        sums: dict[str, float] = {}
        temperature = c.rollout.temperature or 1.0
        norm_len = c.algo.loss.norm_len or c.rollout.max_seq_len
        for i, work in enumerate(my_steps):
            parts: list[tuple[str, dict[str, float]]] = []
            if work.fresh is not None:
                # the engine-vs-learner log-prob gap needs these very weights: only before the first optimizer step
                m = loss_over_work(
                    self.model, work.fresh, c.algo, temperature=temperature, norm_len=norm_len,
                    cov=c.algo.loss.cov, generator=self.generator, ref_model=self.ref_model,
                    version=self.step if i == 0 else None,
                )  # fmt: skip
                parts.append(("loss/", m))
            if work.sil is not None:  # J = J_GRPO + gamma(t) * J_SIL, against stored behaviour log-probs
                m = loss_over_work(
                    self.model, work.sil, c.algo, temperature=temperature, norm_len=norm_len, cov=c.sil.cov,
                    sil_gamma=values.gamma, generator=self.generator,
                )  # fmt: skip
                parts.append(("loss_sil/", m))
            for prefix, m in parts:
                for k, v in m.items():
                    key = k.replace("loss/", prefix)
                    sums[key] = sums.get(key, 0.0) + v / len(my_steps)
            norm = clip_grad_norm(self.model, c.learner.grad_clip)
            sums["loss/grad_norm"] = sums.get("loss/grad_norm", 0.0) + norm / len(my_steps)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        sums["loss/grad_norm"] /= self.info.world_size  # every rank adds the same global norm
        return sums

    def train_step(self) -> dict[str, float] | None:
        """One learner step on every rank; None (on every rank) when a stop came before its batch was ready."""
        values = self.curriculum.at(self.step)
        t0 = time.time()
        per_rank, metrics = self._next_work(values)
        my_steps: list[StepWork] = broadcast_rows(per_rank)
        if not my_steps:
            self.stopping = True
            return None
        t_wait = time.time() - t0
        self.model.train()
        sums = self._optimize(my_steps, values)
        if (
            self.batches is not None
        ):  # only rank 0 knows; the sum tells every rank (for the max_groups budget)
            sums["learner/fresh_groups"] = float(self.batches.fresh_groups_in_batch)
        sums["learner/stop_requests"] = float(
            self.stop.requested
        )  # any rank's signal stops all after this step
        totals = sum_across_ranks(sums)
        self.stopping = self.stopping or totals.pop("learner/stop_requests") > 0
        diff, n_same = totals.pop("loss/logprob_diff_sum", 0.0), totals.pop("loss/logprob_diff_tokens", 0.0)
        if n_same:  # tokens generated by these very weights: engine and learner log-probs should agree
            totals["loss/logprob_abs_diff"] = diff / n_same
        self.groups_trained += int(totals.get("learner/fresh_groups", 0))
        self.step += 1
        if self.step % values.sync_every == 0 or self.done():
            totals |= self.publish()
        t_total = time.time() - t0
        return (
            totals
            | metrics
            | self.curriculum.metrics(self.step - 1)
            | {
                "replay/fresh_groups_trained": float(self.groups_trained),
                "learner/optimizer_steps": float(len(my_steps)),
                "learner/version": float(self.step),
                "time/step_s": t_total,
                "time/wait_s": t_wait,
                "learner/busy_frac": 1 - t_wait / max(t_total, 1e-9),
            }
        )

    def _train_loop(self) -> None:
        c = self.cfg
        with progress("train", total=c.learner.steps, enabled=c.log.progress and self.is_main) as bar:
            while not self.done() and not self.stopping:
                metrics = self.train_step()
                if metrics is None:
                    break
                self._log_step(metrics, bar)
                if c.checkpoint.every and self.step % c.checkpoint.every == 0 and not self.stopping:
                    self.save()

    def publish(self) -> dict[str, float]:
        t0 = time.time()
        state = full_state_dict(self.model)  # collective
        if self.source is not None and state is not None:
            self.source.publish(state, self.step)
        return {"sync/latency_s": time.time() - t0}

    # ------------------------------------------------------------------ run
    def _log_step(self, m: dict[str, float], bar) -> None:
        if self.metrics is None or self.source is None or self.batches is None:
            return
        m |= self.source.metrics() | self.batches.metrics()
        self.metrics.log(self.step, m)
        line = (
            f"step {self.step:4d}  success {m['rollout/success_rate']:.2f}  "
            f"reward {m['rollout/reward_mean']:+.2f}  stale {m['staleness/mean']:.2f}  "
            f"traj/s {m['rollout/trajectories_per_s']:.1f}"
        )
        bar.advance(line)
        if self.step % self.cfg.log.every == 0:
            print(line, flush=True)

    def _evaluate(self, model_dir: str | Path, phase: str) -> dict:
        """Rank 0: evaluation of ``model_dir`` before or after RL (``eval.before_after``), logged as ``eval/*``."""
        c = self.cfg
        if self.metrics is None or not (c.eval.before_after and c.eval.episodes):
            return {}
        results = evaluate_dir(c, model_dir, phase)
        self.metrics.log(self.step, {f"eval/{k}": v.success_rate for k, v in results.items()})
        return results

    def fit(self) -> dict:
        """Train to the end (or to a requested stop: then only the checkpoint is written; see ``stop.py``)."""
        c = self.cfg
        results: dict = {}
        ok = False
        try:
            with self.stop:
                if not self.resumed:
                    results |= self._evaluate(c.model.path, "before")
                if self.source is not None:
                    self.source.start(self.step)
                if (
                    self.resumed
                ):  # the source starts from model.path: hand it the resumed weights (collective)
                    self.publish()
                self._train_loop()
                path = self.save()
            if self.stopping:
                if self.source is not None:
                    self.source.stop()
                    print(f"learner: stopped at step {self.step}; resume with --resume {self.run_dir} "
                          f"(checkpoint {path.name})", flush=True)  # fmt: skip
                ok = True
                return results
            state = full_state_dict(self.model)  # collective
            if self.source is not None and state is not None:
                self.source.stop()
                export_hf(state, c, self.tokenizer, self.run_dir / "final")
                results |= self._evaluate(self.run_dir / "final", "after")
                summary = {"step": self.step, "version": self.step} | {
                    k: v.success_rate for k, v in results.items()
                }
                (self.run_dir / "summary.json").write_text(json.dumps(summary))
            ok = True
        finally:
            if self.source is not None:
                self.source.close()
            if self.metrics is not None:
                self.metrics.close()
            destroy_distributed(barrier=ok)  # after a failure a peer may be gone: do not wait for it
        return results
