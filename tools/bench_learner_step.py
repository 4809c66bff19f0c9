"""Learner step time per loss kind, in one invocation (a ratio against plain PPO: machines are noisy).

    python tools/bench_learner_step.py [--hidden 256 --layers 4 --rows 64 --length 256 --repeats 5]

Builds a random-init Qwen2 model in memory and a batch of random schema rows, then times one learner update
(forward + backward over the rows in micro-batches, gradient clip, AdamW step) for ``algo.loss.kind = "ppo"``
and ``"decoupled"``, alternating the kinds so that load changes hit both. Prints the median seconds per step of
each and the decoupled/ppo ratio. Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from spear_stream.config import load_config
from spear_stream.learner.step import loss_over_rows, loss_token_count
from spear_stream.schema import make_row


def random_rows(n: int, length: int, vocab: int, gen: torch.Generator) -> list:
    rows = []
    for _ in range(n):
        prompt = length // 4
        tokens = torch.randint(0, vocab, (length,), generator=gen).tolist()
        mask = [False] * prompt + [True] * (length - prompt)
        logp = [0.0] * prompt + (-torch.rand(length - prompt, generator=gen) * 3).tolist()
        version = [-1] * prompt + [0] * (length - prompt)
        rows.append(
            make_row(
                tokens=tokens, loss_mask=mask, behavior_logp=logp, token_version=version, prompt_length=prompt
            )
        )
    return rows


def one_step(model, optimizer, rows, advantages, keep, algo, token_budget: int) -> float:
    t0 = time.perf_counter()
    loss_over_rows(
        model,
        rows,
        advantages,
        keep,
        algo,
        temperature=1.0,
        norm_len=512,
        token_budget=token_budget,
        num_tokens=loss_token_count(rows, keep),
        num_seqs=len(rows),
        cov=algo.loss.cov,
    )
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--micro-batch-tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 2,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2 * args.length,
    )
    model = Qwen2ForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(0)
    rows = random_rows(args.rows, args.length, args.vocab, gen)
    advantages = torch.randn(args.rows, generator=gen)
    keep = torch.ones(args.rows, dtype=torch.bool)
    algos = {kind: load_config(None, ["--algo.loss.kind", kind]).algo for kind in ("ppo", "decoupled")}
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model {n_params / 1e6:.1f}M parameters; batch {args.rows} rows x {args.length} tokens; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for algo in algos.values():  # warm-up: allocator, AdamW state
        one_step(model, optimizer, rows, advantages, keep, algo, args.micro_batch_tokens)
    times: dict[str, list[float]] = {kind: [] for kind in algos}
    for _ in range(args.repeats):
        for kind, algo in algos.items():
            times[kind].append(
                one_step(model, optimizer, rows, advantages, keep, algo, args.micro_batch_tokens)
            )
    med = {kind: statistics.median(t) for kind, t in times.items()}
    for kind, t in times.items():
        print(f"{kind:10s} median {med[kind]:.3f} s/step  (runs: {', '.join(f'{x:.3f}' for x in t)})")
    print(f"decoupled / ppo: {med['decoupled'] / med['ppo']:.2f}x")


if __name__ == "__main__":
    main()
