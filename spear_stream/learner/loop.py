"""The streaming learner: rank 0 receives groups over ZeroMQ into the replay, every rank trains its share under
FSDP2, and new weights are published to the rollout workers every ``sync_every(t)`` steps.

Modes (``sync.mode``): ``async`` keeps workers generating while the learner trains, with in-flight data bounded
by credits (at most ``(max_staleness + 1) * groups_per_step`` groups granted or buffered) and stale groups dropped
by the replay; ``sync`` grants exactly one batch of credits after each publication and waits for it (the
reference, on-policy behaviour, for comparison). The policy version is the number of learner steps taken.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from spear_stream.algo.curriculum import Curriculum, CurriculumValues
from spear_stream.config import Config, to_toml
from spear_stream.learner.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from spear_stream.learner.local import make_optimizer
from spear_stream.learner.parallel import (
    RankWork,
    broadcast_rows,
    clip_grad_norm,
    destroy_distributed,
    full_state_dict,
    init_distributed,
    loss_over_work,
    plan_rank_work,
    shard_model,
    sum_across_ranks,
)
from spear_stream.learner.rank0 import RolloutHub
from spear_stream.learner.step import loss_token_count, minibatch_bounds, prepare_batch
from spear_stream.metrics import MetricsLogger
from spear_stream.models import load_model, load_tokenizer
from spear_stream.utils import keep_large_buffers, progress, set_threads


@dataclass
class StepWork:
    """One rank's share of one optimizer step: fresh on-policy rows and/or self-imitation replay rows."""

    fresh: RankWork | None
    sil: RankWork | None


class StreamingTrainer:
    def __init__(self, cfg: Config, *, resume: bool = False) -> None:
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
        self.ref_model = (
            load_model(cfg.model.path, cfg.model.dtype).eval() if cfg.algo.loss.kl_coef > 0 else None
        )
        if self.ref_model is not None:
            self.ref_model.requires_grad_(False)
        self.curriculum = Curriculum(cfg.curriculum)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        # Replayed rows use the plain clipped surrogate against their stored behaviour log-probs (ALGORITHM.md 6).
        self.sil_algo = dataclasses.replace(cfg.algo, loss=dataclasses.replace(cfg.algo.loss, kind="ppo"))
        self.step = 0
        self.version = 0
        self.groups_trained = 0  # fresh groups trained on (learner.max_groups)
        self.hub: RolloutHub | None = None
        self.metrics: MetricsLogger | None = None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(to_toml(cfg))
            self.hub = RolloutHub(cfg, self.tokenizer, random.Random(cfg.seed))
            self.metrics = MetricsLogger(self.run_dir, cfg.log.tensorboard)
        self.resumed = False
        if resume:
            self._resume()

    # ------------------------------------------------------------------ checkpoint
    def _resume(self) -> None:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {self.run_dir}/checkpoints")
        extra = load_checkpoint(path, self.model, self.optimizer)
        self.step, self.version = int(extra["step"]), int(extra["version"])
        self.groups_trained = int(extra.get("groups_trained", 0))
        self.curriculum.load_state_dict(extra["curriculum"])
        self.generator.set_state(extra["generator"])
        if self.hub is not None:
            self.hub.load_state_dict(extra["hub"])
        self.resumed = True
        if self.is_main:
            print(f"resumed from {path}: step {self.step}, policy version {self.version}", flush=True)

    def save(self) -> Path:
        extra = {
            "step": self.step,
            "version": self.version,
            "groups_trained": self.groups_trained,
            "curriculum": self.curriculum.state_dict(),
            "generator": self.generator.get_state(),
            "hub": self.hub.state_dict() if self.hub is not None else None,
        }
        return save_checkpoint(checkpoint_path(self.run_dir, self.step), self.model, self.optimizer, extra)

    def done(self) -> bool:
        """``learner.steps`` taken, or the ``learner.max_groups`` budget of fresh groups spent."""
        budget = self.cfg.learner.max_groups
        return self.step >= self.cfg.learner.steps or (budget > 0 and self.groups_trained >= budget)

    # ------------------------------------------------------------------ one step
    def _plan(self, rows, advantages, keep, weights=None) -> list[RankWork]:
        c = self.cfg
        num_tokens = loss_token_count(rows, keep)
        return plan_rank_work(
            rows,
            advantages,
            keep,
            world_size=self.info.world_size,
            token_budget=c.learner.micro_batch_tokens,
            num_tokens=num_tokens,
            num_seqs=max(1, len(rows)),
            weights=weights,
        )

    def _rank_work(self, values: CurriculumValues) -> tuple[list[list[StepWork]] | None, dict[str, float]]:
        """Rank 0: the next batch as per-rank work, one entry per optimizer step.

        Fresh groups are split into ``minibatches`` optimizer steps (one epoch). Self-imitation rows (stream mode)
        are spread over the same steps as a separately normalised term weighted by ``gamma(t)``; paper-mode replay
        batches become extra optimizer steps after the on-policy ones.
        """
        if self.hub is None:
            return None, {}
        c = self.cfg
        budget = c.learner.max_groups
        rows = self.hub.next_batch(self.version, values, budget - self.groups_trained if budget else None)
        batch = prepare_batch(rows, c.algo, values.mu)
        self.hub.after_batch(rows, batch, self.step, values)
        sil = self.hub.sil_batch(len(rows), values, self.generator)
        n_mb = c.learner.minibatches
        steps: list[list[StepWork]] = []
        sil_bounds = minibatch_bounds(len(sil[0]), n_mb) if sil is not None else []
        for i, (lo, hi) in enumerate(minibatch_bounds(len(rows), n_mb)):
            fresh = self._plan(rows[lo:hi], batch.advantages[lo:hi], batch.loss_keep[lo:hi])
            replay: list[RankWork | None] = [None] * self.info.world_size
            if sil is not None and c.sil.mode == "stream":
                s_rows, a_tilde, weights = sil
                slo, shi = sil_bounds[i]
                if shi > slo:
                    w = None if weights is None else weights[slo:shi]
                    replay = list(
                        self._plan(
                            s_rows[slo:shi], a_tilde[slo:shi], torch.ones(shi - slo, dtype=torch.bool), w
                        )
                    )
            steps.append([StepWork(f, r) for f, r in zip(fresh, replay)])
        if sil is not None and c.sil.mode == "paper":
            s_rows, a_tilde, _ = sil
            chunk = max(1, len(rows) // n_mb)
            for lo in range(0, len(s_rows), chunk):
                hi = min(len(s_rows), lo + chunk)
                paper = self._plan(s_rows[lo:hi], a_tilde[lo:hi], torch.ones(hi - lo, dtype=torch.bool))
                steps.append([StepWork(None, r) for r in paper])
        staleness = torch.tensor([self.version - int(r["policy_version"]) for r in rows], dtype=torch.float)
        extra = {
            "staleness/mean": float(staleness.mean()),
            "staleness/max": float(staleness.max()),
            "replay/sil_rows_in_batch": float(len(sil[0]) if sil else 0),
            "replay/sil_batch_fraction": (len(sil[0]) / (len(sil[0]) + len(rows))) if sil else 0.0,
        }
        return [list(per_rank) for per_rank in zip(*steps)], batch.metrics | extra

    def train_step(self) -> dict[str, float]:
        c = self.cfg
        values = self.curriculum.at(self.step)
        t0 = time.time()
        per_rank, metrics = self._rank_work(values)
        my_steps: list[StepWork] = broadcast_rows(per_rank)
        t_wait = time.time() - t0
        self.model.train()
        sums: dict[str, float] = {}
        temperature = c.rollout.temperature or 1.0
        norm_len = c.algo.loss.norm_len or c.rollout.max_seq_len
        for work in my_steps:  # one optimizer step each
            if work.fresh is not None:
                part = loss_over_work(
                    self.model,
                    work.fresh,
                    c.algo,
                    temperature=temperature,
                    norm_len=norm_len,
                    cov=c.algo.loss.cov,
                    generator=self.generator,
                    ref_model=self.ref_model,
                )
                for k, v in part.items():
                    sums[k] = sums.get(k, 0.0) + v / len(my_steps)
            if work.sil is not None:  # J = J_GRPO + gamma(t) * J_SIL, against stored behaviour log-probs
                part = loss_over_work(
                    self.model,
                    work.sil,
                    self.sil_algo,
                    temperature=temperature,
                    norm_len=norm_len,
                    cov=c.sil.cov,
                    scale=values.gamma,
                    generator=self.generator,
                )
                for k, v in part.items():
                    key = k.replace("loss/", "loss_sil/")
                    sums[key] = sums.get(key, 0.0) + v / len(my_steps)
            sums["loss/grad_norm"] = sums.get("loss/grad_norm", 0.0) + clip_grad_norm(
                self.model, c.learner.grad_clip
            )
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        sums["loss/grad_norm"] /= len(my_steps) * self.info.world_size  # each rank adds the same global norm
        if self.hub is not None:  # only rank 0 knows; the sum tells every rank (for the max_groups budget)
            sums["learner/fresh_groups"] = float(self.hub.fresh_groups_in_batch)
        totals = sum_across_ranks(sums)
        self.groups_trained += int(totals.get("learner/fresh_groups", 0))
        totals["replay/fresh_groups_trained"] = float(self.groups_trained)
        totals["learner/optimizer_steps"] = float(len(my_steps))
        self.step += 1
        self.version += 1
        if self.step % values.sync_every == 0 or self.done():
            totals |= self.publish()
        t_total = time.time() - t0
        totals |= metrics | self.curriculum.metrics(self.step - 1)
        totals |= {
            "time/step_s": t_total,
            "time/wait_s": t_wait,
            "learner/busy_frac": 1 - t_wait / max(t_total, 1e-9),
            "learner/version": self.version,
        }
        return totals

    def publish(self) -> dict[str, float]:
        t0 = time.time()
        state = full_state_dict(self.model)  # collective
        if self.hub is not None and state is not None:
            self.hub.publish(state, self.version)
        return {"sync/latency_s": time.time() - t0}

    # ------------------------------------------------------------------ run
    def fit(self) -> dict:
        c = self.cfg
        results: dict = {}
        ok = False
        ok = False
        try:
            if self.hub is not None:
                if c.eval.before_after and c.eval.episodes and not self.resumed:
                    results |= self.hub.evaluate_dir(c.model.path, "before")
                    assert self.metrics is not None  # logged at the step it describes (0)
                    self.metrics.log(self.step, {f"eval/{k}": v.success_rate for k, v in results.items()})
                self.hub.start(self.version)
            if (
                self.resumed
            ):  # workers start from model.path: hand them the resumed weights first (collective)
                self.publish()
            with progress("train", total=c.learner.steps, enabled=c.log.progress and self.is_main) as bar:
                while not self.done():
                    m = self.train_step()
                    if self.hub is not None and self.metrics is not None:
                        m |= self.hub.metrics()
                        self.metrics.log(self.step, m)
                        line = (
                            f"step {self.step:4d}  success {m['rollout/success_rate']:.2f}  "
                            f"reward {m['rollout/reward_mean']:+.2f}  stale {m['staleness/mean']:.2f}  "
                            f"traj/s {m['rollout/trajectories_per_s']:.1f}"
                        )
                        bar.advance(line)
                        if self.step % c.log.every == 0:
                            print(line, flush=True)
                    if c.checkpoint.every and self.step % c.checkpoint.every == 0:
                        self.save()
            self.save()
            final = self.run_dir / "final"
            state = full_state_dict(self.model)
            if self.hub is not None and state is not None:
                self.hub.stop()
                self.hub.save_hf(state, final)
                if c.eval.before_after and c.eval.episodes:
                    results |= self.hub.evaluate_dir(final, "after")
                assert self.metrics is not None
                after = {k: v for k, v in results.items() if k.startswith("after/")}
                self.metrics.log(self.step, {f"eval/{k}": v.success_rate for k, v in after.items()})
                (self.run_dir / "summary.json").write_text(
                    json.dumps(
                        {
                            "step": self.step,
                            "version": self.version,
                            **{k: v.success_rate for k, v in results.items()},
                        }
                    )
                )
            ok = True
        finally:
            if self.hub is not None:
                self.hub.close()
            if self.metrics is not None:
                self.metrics.close()
            destroy_distributed(barrier=ok)  # after a failure a peer may be gone: do not wait for it
        return results
