"""Rollout throughput on a long-tail multi-turn environment, in one invocation (ratios: machines are noisy).

    python tools/bench_rollout.py [--model runs/models/tiny-guess] [--groups 32] [--repeats 3] [--no-standin]

Environment: the long-tail relay (``envs/longtail.py``): episodes of 1 to 16 turns (heavy tail), each step
sleeping a log-normal time (median 20 ms). The same tasks are played, alternately, by

* ``per-episode``: the agent loop (``rollout/agent.py``): every episode its own asyncio task, the in-process
  engine batching whatever requests wait (continuous batching);
* ``lockstep``: the previous design, rebuilt here over the same engine and recorder: each turn generates for
  every live episode of the batch, waits for all of them, then steps every environment and waits for all
  (``lockstep+cache``: the same, with the engine's per-episode prefix cache, which the previous engine lacked);
* ``stand-in``: the per-episode loop with ``SGLangEngine`` against a stand-in SGLang server (SGLang's HTTP
  layer over the same in-process engine, started by this script; needs ``make setup``).

Prints trajectories per second (median of ``--repeats``) and the ratios per-episode / lockstep and
stand-in / in-process. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from envs import Task, make_env  # noqa: E402
from spear_stream.models import load_model, load_tokenizer  # noqa: E402
from spear_stream.rollout.agent import AgentLoop  # noqa: E402
from spear_stream.rollout.chat import ChatFormat  # noqa: E402
from spear_stream.rollout.engine import SamplingParams  # noqa: E402
from spear_stream.rollout.episode import EpisodeRecorder, RowIds  # noqa: E402
from spear_stream.rollout.hf import HFEngine  # noqa: E402

ENV_PARAMS = {"max_turns": 16, "shape": 1.2, "step_ms": 20.0, "step_sigma": 1.0}


async def per_episode(loop: AgentLoop, engine, tasks: list[Task], group_size: int, concurrency: int) -> int:
    groups = await loop.run_groups(tasks, group_size, loop.engine_policy(engine), concurrency)
    return sum(len(g.successes) for g in groups)


async def lockstep(
    loop: AgentLoop, engine, tasks: list[Task], group_size: int, concurrency: int, reuse_prefix: bool = False
) -> int:
    """The previous worker loop: per batch of ``concurrency`` episodes, one generate and one env step per turn.

    ``reuse_prefix``: pass each episode's key, so the engine's prefix cache serves its later turns (the previous
    engine had no prefix cache; this separates what the loop gains from what the cache gains)."""
    episodes = [(t, i) for t in tasks for i in range(group_size)]
    done = 0
    for start in range(0, len(episodes), concurrency):
        batch = []
        for task, i in episodes[start : start + concurrency]:
            env = make_env(loop.env_name, loop.env_params)
            rec = EpisodeRecorder(
                loop.fmt, env.prompt_mode, loop.max_seq_len, RowIds(0, i, task.task_id, 0, 0)
            )
            batch.append((env, task, rec))
        observations = await asyncio.gather(*(env.reset(task) for env, task, _ in batch))
        for (_, _, rec), obs in zip(batch, observations):
            rec.start(obs)
        for _ in range(max(env.max_turns for env, _, _ in batch)):
            live = [
                (env, rec) for env, _, rec in batch if not rec.done and rec.fits(loop.sampling.max_new_tokens)
            ]
            if not live:
                break
            gens = await asyncio.gather(
                *(
                    engine.generate(
                        rec.prompt(), loop.sampling, affinity=rec.ids.traj_id if reuse_prefix else None
                    )
                    for _, rec in live
                )
            )
            results = await asyncio.gather(
                *(env.step(loop.fmt.decode(g.token_ids)) for (env, _), g in zip(live, gens))
            )
            for (_, rec), gen, result in zip(live, gens, results):
                rec.add_turn(gen, result)
        done += len(batch)
    return done


def measure(name: str, fn, loop, engine, tasks, args) -> float:
    async def main():
        t0 = time.perf_counter()
        n = await fn(loop, engine, tasks, args.group_size, args.concurrency)
        return n / (time.perf_counter() - t0)

    rate = asyncio.run(main())
    print(f"  {name:15s} {rate:7.1f} trajectories/s", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="runs/models/tiny-guess")
    parser.add_argument("--groups", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument(
        "--concurrency", type=int, default=128, help="episodes in flight (lockstep batch size)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-standin", dest="standin", action="store_false")
    args = parser.parse_args()
    fmt = ChatFormat(load_tokenizer(args.model))
    sampling = SamplingParams(8, 1.0, stop_ids=tuple(fmt.stop_ids))
    loop = AgentLoop(fmt, "longtail", ENV_PARAMS, sampling, max_seq_len=1024)
    engine = HFEngine(load_model(args.model), seed=0, max_batch=args.concurrency)
    modes = {
        "per-episode": (per_episode, engine),
        "lockstep": (lockstep, engine),
        "lockstep+cache": (lambda *a: lockstep(*a, reuse_prefix=True), engine),
    }
    server = None
    if args.standin:
        import standin

        from spear_stream.rollout.sglang import SGLangEngine

        server = standin.start(Path(args.model), Path("/tmp"), "--max-batch", str(args.concurrency))
        standin.wait_healthy(server)
        modes["stand-in"] = (per_episode, SGLangEngine([server.url]))
    print(f"long-tail relay {ENV_PARAMS}, {args.groups} groups x {args.group_size}, "
          f"{args.concurrency} episodes in flight; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    rates: dict[str, list[float]] = {m: [] for m in modes}
    try:
        for r in range(args.repeats):
            tasks = [
                Task(task_id=i, seed=1000 * r + i) for i in range(args.groups)
            ]  # same tasks for every mode
            print(f"repeat {r + 1}:")
            for name, (fn, eng) in modes.items():
                rates[name].append(measure(name, fn, loop, eng, tasks, args))
    finally:
        if server is not None:
            server.stop(9)
    med = {m: statistics.median(v) for m, v in rates.items()}
    print("median trajectories/s: " + ", ".join(f"{m} {v:.1f}" for m, v in med.items()))
    print(f"per-episode / lockstep (in-process engine): {med['per-episode'] / med['lockstep']:.2f}x")
    print(f"per-episode / lockstep with the prefix cache: {med['per-episode'] / med['lockstep+cache']:.2f}x")
    if "stand-in" in med:
        print(
            f"stand-in SGLang server / in-process (both per-episode): {med['stand-in'] / med['per-episode']:.2f}x"
        )


if __name__ == "__main__":
    main()
