"""A rollout worker process: run episodes against credits, stream each group to the learner as it ends.

Started by the learner (``spear-stream train``) or by hand on another machine::

    spear-stream rollout --connect-file run_dir/connect.json --config run_dir/config.toml --worker-id N

(``connect.json``, mode 0600, holds the learner's address, the run token and, with ``transport.curve``, its public
key; or give ``--connect tcp://LEARNER:PORT`` with the token in the environment variable ``SPEAR_RUN_TOKEN``.
The token is never a command-line argument: anyone on the machine can read those.)

Every episode is its own asyncio task (``rollout/agent.py``); the engine is the in-process one (new weights are
fetched here and swapped in between decode chunks) or SGLang servers (updated by the learner). The worker exits on a ``stop`` message, when its parent dies
(PR_SET_PDEATHSIG, so a killed learner leaves no orphans) or when the learner stops granting credits.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path

from envs import Task
from spear_stream.config import Config, load_config
from spear_stream.models import load_tokenizer
from spear_stream.rollout.agent import AgentLoop
from spear_stream.rollout.chat import ChatFormat
from spear_stream.rollout.engine import SamplingParams, make_engine
from spear_stream.rollout.hf import HFEngine
from spear_stream.rollout.sglang import SGLangEngine
from spear_stream.transport.sender import ChannelStopped, CreditTimeout, RolloutSender
from spear_stream.utils import keep_large_buffers, set_threads
from spear_stream.weightsync.base import (
    WeightAnnouncement,
    WeightSyncError,
    WeightVersionGone,
    make_subscriber,
)

_LOG = logging.getLogger("spear_stream.rollout")


def die_with_parent() -> None:
    """Linux: deliver SIGTERM to this process when its parent exits (no orphaned workers)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class WorkerProcess:
    def __init__(
        self,
        cfg: Config,
        address: str,
        run_token: str,
        worker_id: int,
        incarnation: int = 0,
        curve_key: str | None = None,
    ) -> None:
        self.cfg = cfg
        # first, before libzmq's threads start: each group is consolidated into a fresh buffer (see the helper)
        keep_large_buffers()
        set_threads(cfg.rollout.num_threads)
        self.fmt = ChatFormat(load_tokenizer(cfg.model.path))
        self.engine = make_engine(cfg, seed=cfg.seed * 1000 + worker_id)
        r, f = cfg.rollout, cfg.algo.filters
        sampling = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k, tuple(self.fmt.stop_ids))
        self.loop = AgentLoop(
            self.fmt,
            cfg.env.name,
            cfg.env.params,
            sampling,
            r.max_seq_len,
            worker_id,
            ngram=(f.ngram, f.ngram_repeats),
            partial=r.partial,
        )
        self.loop.groups_started = incarnation << 24  # a replacement worker never reuses group ids
        self.sender = RolloutSender(
            address,
            worker_id=worker_id,
            run_token=run_token,
            send_timeout_s=cfg.sync.timeout_s,
            server_public_key=curve_key,
        )
        # in-process engines fetch the weights the learner announces; servers are updated by the learner itself
        self.subscriber = (
            None
            if cfg.sync.method.startswith("sglang")
            else make_subscriber(cfg.sync.method, timeout_s=cfg.sync.timeout_s)
        )
        self.rng = random.Random(f"{cfg.seed}/{worker_id}/{incarnation}")
        self.max_groups_in_flight = max(1, r.max_concurrent_episodes // cfg.env.group_size)
        self.sync_errors = 0
        self.skipped_version = -1
        self.servers_announcement = ""

    def apply_weights(self) -> None:
        """Load the newest announced weights into the in-process engine if newer than its own.

        The engine swaps them in between decode chunks: in-flight episodes continue under the new policy and
        their tokens carry both versions.
        """
        ann = self.sender.latest_weights
        if ann is None:
            return
        if isinstance(self.engine, SGLangEngine):  # the learner updated the servers; use the ones it names
            if ann.location != self.servers_announcement:  # a new version, or a server lost or re-synced
                self.servers_announcement = ann.location
                try:
                    self.engine.set_servers(
                        WeightAnnouncement.from_json(ann.location).location.get("servers", [])
                    )
                except (WeightSyncError, TypeError, AttributeError) as exc:
                    _LOG.warning("unreadable server list in weight announcement v%s: %s", ann.version, exc)
            return
        if self.subscriber is None or not isinstance(self.engine, HFEngine):
            return
        if ann.version <= max(self.engine.version, self.skipped_version):
            return
        try:
            announcement = WeightAnnouncement.from_json(ann.location)
            state = self.subscriber.fetch(announcement)
        except WeightVersionGone:
            return  # a newer version replaced it; its announcement is on the way
        except (WeightSyncError, ValueError) as exc:
            # Keep generating with the current weights (the tokens say which version made them); retry on the
            # next announcement. The learner's staleness bound drops the data if this persists.
            self.sync_errors += 1
            _LOG.warning(
                "weight update to v%s failed (%s); keeping v%s", ann.version, exc, self.engine.version
            )
            self.skipped_version = ann.version
            return
        self.engine.load_weights(state, announcement.version)

    async def run(self) -> None:
        """Start a group per credit (up to ``max_concurrent_episodes`` episodes), send each group as it ends."""
        policy = self.loop.engine_policy(self.engine)
        group_size = self.cfg.env.group_size
        in_flight: set[asyncio.Task] = set()
        idle_since = time.monotonic()
        while True:
            self.sender.stats = engine_stats(self.engine) | {
                k: float(v) for k, v in self.loop.counters.items()
            }
            self.sender.poll(0 if in_flight else 50)  # credits, weights, stop; heartbeats (with the stats)
            if self.sender.stop_requested:
                raise ChannelStopped(f"worker {self.sender.worker_id}: the learner requested stop")
            self.apply_weights()
            while len(in_flight) < self.max_groups_in_flight and self.sender.credits > 0:
                self.sender.reserve(0)
                task = Task(task_id=self.rng.randrange(2**31), seed=self.rng.randrange(2**31))
                in_flight.add(asyncio.create_task(self.loop.run_group(task, group_size, policy)))
            if not in_flight:
                if time.monotonic() - idle_since > self.cfg.sync.timeout_s:
                    raise CreditTimeout(f"no credit from the learner within {self.cfg.sync.timeout_s:.0f}s")
                await asyncio.sleep(0)
                continue
            done, in_flight = await asyncio.wait(in_flight, timeout=0.02, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                self.sender.send_group(finished.result().rows)  # an episode's error ends the worker, loudly
            idle_since = time.monotonic()

    def close(self) -> None:
        self.sender.close()
        if self.subscriber is not None:
            self.subscriber.close()


def engine_stats(engine) -> dict[str, float]:
    """The engine's own counters (a server engine's requests, retries, failovers), if it keeps any."""
    stats = getattr(engine, "stats", None)
    return stats() if callable(stats) else {}


TOKEN_ENV, CURVE_KEY_ENV = "SPEAR_RUN_TOKEN", "SPEAR_CURVE_KEY"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="spear-stream rollout", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--connect-file", help="the run's connect.json (address, run token, CURVE key)")
    where.add_argument("--connect", help=f"learner address, tcp://HOST:PORT (token in ${TOKEN_ENV})")
    parser.add_argument("--config", default=None, help="the run's config (run_dir/config.toml)")
    parser.add_argument("--worker-id", type=int, default=0)
    parser.add_argument("--incarnation", type=int, default=0, help="restart count (set by the supervisor)")
    return parser.parse_known_args(argv)


def connection(args: argparse.Namespace) -> tuple[str, str, str | None]:
    """(address, run token, CURVE public key or None) from --connect-file, or --connect and the environment."""
    if args.connect_file:
        info = json.loads(Path(args.connect_file).read_text())
        return info["address"], info["run_token"], info.get("curve_public_key")
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise SystemExit(
            f"spear-stream rollout: --connect needs the run token in ${TOKEN_ENV} (or --connect-file)"
        )
    return args.connect, token, os.environ.get(CURVE_KEY_ENV) or None


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(list(sys.argv[1:] if argv is None else argv))
    die_with_parent()
    # Nothing to flush: unsent groups of a stopped worker are discarded by design. Exit at once, wherever the
    # main thread is (sys.exit from a signal handler can land inside a finalizer and print a traceback).
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    logging.basicConfig(level=logging.WARNING, format=f"[worker {args.worker_id}] %(message)s")
    cfg = load_config(args.config, overrides)
    address, token, curve_key = connection(args)
    proc = WorkerProcess(cfg, address, token, args.worker_id, args.incarnation, curve_key)
    started = time.time()
    try:
        asyncio.run(proc.run())
    except ChannelStopped:
        return 0
    except CreditTimeout as exc:
        _LOG.warning("%s (after %.0fs); exiting", exc, time.time() - started)
        return 3
    finally:
        proc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
