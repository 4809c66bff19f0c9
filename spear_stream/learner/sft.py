"""Supervised warm start on scripted expert demonstrations (the paper's agents start from SFT/instruct models)."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import torch

from envs import Task
from spear_stream.config import Config
from spear_stream.learner.forward import micro_batches, right_pad, token_logprobs
from spear_stream.models import load_model, load_tokenizer
from spear_stream.rollout.agent import AgentLoop
from spear_stream.rollout.chat import ChatFormat
from spear_stream.rollout.engine import SamplingParams
from spear_stream.utils import progress, set_threads


def expert_rows(loop: AgentLoop, n_episodes: int, seed: int) -> list:
    """Rows of ``n_episodes`` scripted-expert episodes (training split), as the agent loop records them."""
    tasks = [Task(task_id=i, seed=seed * 7919 + i, split="train") for i in range(n_episodes)]
    groups = asyncio.run(loop.run_groups(tasks, 1, loop.expert_policy(random.Random(seed)), 256))
    return [row for group in groups for row in group.rows]


def sft_loss(model, rows: list, token_budget: int) -> torch.Tensor:
    """Token-mean negative log-likelihood of the assistant (loss-masked) tokens; backward per micro-batch."""
    n_tokens = sum(int(r["loss_mask"].sum()) for r in rows)
    total = torch.zeros(())
    for idx in micro_batches(len(rows), [int(r["length"]) for r in rows], token_budget):
        mb = right_pad([rows[i] for i in idx], ("tokens", "loss_mask"))
        logp, _ = token_logprobs(model, mb["tokens"], mb["attention"])
        loss = -(logp * mb["loss_mask"]).sum() / n_tokens
        loss.backward()
        total += loss.detach()
    return total


def run_sft(cfg: Config, out: str | Path | None = None) -> Path:
    set_threads(cfg.learner.num_threads)
    torch.manual_seed(cfg.seed)
    out = Path(out or cfg.sft.out or cfg.run_path / "sft")
    tokenizer = load_tokenizer(cfg.model.path)
    model = load_model(cfg.model.path, cfg.model.dtype)
    fmt = ChatFormat(tokenizer)
    sampling = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, stop_ids=tuple(fmt.stop_ids))
    loop = AgentLoop(fmt, cfg.env.name, cfg.env.params, sampling, cfg.rollout.max_seq_len)
    t0 = time.time()
    rows = expert_rows(loop, cfg.sft.demos, cfg.seed)
    won = sum(bool(r["success"]) for r in rows) / max(len(rows), 1)
    print(
        f"sft: {len(rows)} expert rows from {cfg.sft.demos} episodes (expert row success {won:.1%}) "
        f"in {time.time() - t0:.1f}s"
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.sft.lr, betas=(0.9, 0.99), weight_decay=0.0)
    rng = random.Random(cfg.seed)
    model.train()
    t0 = time.time()
    with progress("sft", total=cfg.sft.steps, enabled=cfg.log.progress) as bar:
        for _step in range(cfg.sft.steps):
            batch = rng.sample(rows, min(cfg.sft.batch_episodes, len(rows)))
            loss = sft_loss(model, batch, cfg.learner.micro_batch_tokens)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.learner.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar.advance(f"loss {float(loss):.3f}")
    print(f"sft: {cfg.sft.steps} steps in {time.time() - t0:.1f}s, final loss {float(loss):.3f}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
