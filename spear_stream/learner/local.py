"""Single-process synchronous trainer: rollout a batch of groups, one RL update, repeat.

The reference behaviour (what the paper's code does, without Ray): the engine shares the learner's model
object, so there is no weight sync and every token is exactly on-policy. The streaming pipeline reuses the same
pieces (worker, ``prepare_batch``, ``loss_over_rows``) across processes.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from envs import Task
from spear_stream.algo.curriculum import Curriculum
from spear_stream.config import Config, ConfigError, to_toml
from spear_stream.learner.parallel import clip_grad_norm
from spear_stream.learner.step import loss_over_rows, loss_token_count, minibatch_bounds, prepare_batch
from spear_stream.metrics import MetricsLogger
from spear_stream.models import load_model, load_tokenizer
from spear_stream.rollout.chat import ChatFormat
from spear_stream.rollout.engine import SamplingParams
from spear_stream.rollout.evaluate import EvalResult, evaluate
from spear_stream.rollout.hf import HFEngine
from spear_stream.rollout.worker import RolloutWorker
from spear_stream.utils import progress, set_threads


def make_optimizer(model, cfg: Config) -> torch.optim.Optimizer:
    betas = (cfg.learner.betas[0], cfg.learner.betas[1])
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.learner.lr, betas=betas, weight_decay=cfg.learner.weight_decay
    )


def train_tasks(rng: random.Random, step: int, n: int) -> list[Task]:
    return [Task(task_id=step * n + j, seed=rng.randrange(2**31)) for j in range(n)]


class LocalTrainer:
    def __init__(self, cfg: Config) -> None:
        if cfg.sil.enabled:  # the replay lives on the streaming learner's rank 0 (learner/rank0.py)
            raise ConfigError(
                "sil.enabled needs the streaming trainer: set rollout.num_workers >= 1 "
                "(the in-process reference trainer, num_workers = 0, has no self-imitation replay)"
            )
        self.cfg = cfg
        set_threads(cfg.learner.num_threads)
        torch.manual_seed(cfg.seed)
        self.run_dir = cfg.run_path
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.toml").write_text(to_toml(cfg))
        self.tokenizer = load_tokenizer(cfg.model.path)
        self.model = load_model(cfg.model.path, cfg.model.dtype)
        self.fmt = ChatFormat(self.tokenizer)
        r = cfg.rollout
        sampling = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k, self.fmt.stop_ids)
        f = cfg.algo.filters
        self.worker = RolloutWorker(
            self.fmt, cfg.env.name, cfg.env.params, sampling, r.max_seq_len, ngram=(f.ngram, f.ngram_repeats)
        )
        self.engine = HFEngine(self.model, seed=cfg.seed, pad_id=self.tokenizer.pad_token_id or 0)
        self.optimizer = make_optimizer(self.model, cfg)
        self.ref_model = (
            load_model(cfg.model.path, cfg.model.dtype).eval() if cfg.algo.loss.kl_coef > 0 else None
        )
        self.curriculum = Curriculum(cfg.curriculum)
        self.rng = random.Random(cfg.seed)
        self.step = 0
        self.metrics = MetricsLogger(self.run_dir, cfg.log.tensorboard)

    def evaluate(self, temperature: float) -> EvalResult:
        c = self.cfg
        self.model.eval()
        return evaluate(
            self.worker,
            self.engine,
            episodes=c.eval.episodes,
            temperature=temperature,
            seed=c.eval.seed,
            split=c.env.eval_split,
            batch_size=c.rollout.batch_size,
            top_p=c.eval.top_p,
        )

    def train_step(self) -> dict[str, float]:
        c = self.cfg
        values = self.curriculum.at(self.step)
        t0 = time.time()
        self.model.eval()
        tasks = train_tasks(self.rng, self.step, c.env.groups_per_step)
        groups = self.worker.run_groups(tasks, c.env.group_size, self.worker.engine_policy(self.engine))
        rows = [r for g in groups for r in g.rows]
        t_rollout = time.time() - t0
        batch = prepare_batch(rows, c.algo, values.mu)
        self.model.train()
        t1 = time.time()
        metrics = self._update(rows, batch.advantages, batch.loss_keep)
        self.step += 1
        self.engine.version = self.step  # the shared model now holds the next policy version
        n_generated = sum(g.generated_tokens for g in groups)
        metrics.update(batch.metrics)
        metrics.update(self.curriculum.metrics(self.step - 1))
        metrics.update(
            {
                "rollout/tokens_per_s": n_generated / max(t_rollout, 1e-9),
                "rollout/trajectories": float(len(groups) * c.env.group_size),
                "learner/fresh_groups": float(len(groups)),
                "time/rollout_s": t_rollout,
                "time/train_s": time.time() - t1,
            }
        )
        return metrics

    def _update(self, rows, advantages, keep) -> dict[str, float]:
        c = self.cfg
        # Split the batch into `minibatches` optimizer steps (one epoch), groups kept whole by row order.
        n_mb = c.learner.minibatches
        merged: dict[str, float] = {}
        for lo, hi in minibatch_bounds(len(rows), n_mb):
            sub = rows[lo:hi]
            m = loss_over_rows(
                self.model,
                sub,
                advantages[lo:hi],
                keep[lo:hi],
                c.algo,
                temperature=c.rollout.temperature or 1.0,
                norm_len=c.algo.loss.norm_len or c.rollout.max_seq_len,
                token_budget=c.learner.micro_batch_tokens,
                num_tokens=loss_token_count(sub, keep[lo:hi]),
                num_seqs=max(len(sub), 1),
                cov=c.algo.loss.cov,
                ref_model=self.ref_model,
            )
            grad_norm = clip_grad_norm(self.model, c.learner.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            m["loss/grad_norm"] = float(grad_norm)
            for k, v in m.items():
                merged[k] = merged.get(k, 0.0) + v / n_mb
        return merged

    def fit(self) -> dict[str, EvalResult]:
        c = self.cfg
        results: dict[str, EvalResult] = {}
        if c.eval.before_after and c.eval.episodes:
            results["before/sampled"] = self.evaluate(c.eval.temperature)
            if c.eval.greedy:
                results["before/greedy"] = self.evaluate(0.0)
        t0 = time.time()
        with progress("train", total=c.learner.steps, enabled=c.log.progress) as bar:
            # every step trains groups_per_step fresh groups: learner.max_groups caps the steps
            budget = c.learner.max_groups
            while self.step < c.learner.steps and not (
                budget and self.step * c.env.groups_per_step >= budget
            ):
                m = self.train_step()
                self.metrics.log(self.step, m)
                line = (
                    f"step {self.step:4d}  success {m['rollout/success_rate']:.2f}  "
                    f"reward {m['rollout/reward_mean']:+.2f}  tok/s {m['rollout/tokens_per_s']:.0f}"
                )
                bar.advance(line)
                if self.step % c.log.every == 0:
                    print(line, flush=True)
        train_s = time.time() - t0
        if c.eval.before_after and c.eval.episodes:
            results["after/sampled"] = self.evaluate(c.eval.temperature)
            if c.eval.greedy:
                results["after/greedy"] = self.evaluate(0.0)
        self.save(self.run_dir / "final")
        self.metrics.log(
            self.step,
            {f"eval/{k}": v.success_rate for k, v in results.items()} | {"time/train_total_s": train_s},
        )
        self.metrics.close()
        return results

    def save(self, path: Path) -> None:
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
