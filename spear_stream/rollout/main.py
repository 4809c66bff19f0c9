"""A rollout worker process: generate groups against credits, stream them to the learner, apply new weights.

Started by the learner (``spear-stream train``) or by hand on another machine::

    spear-stream rollout --connect tcp://LEARNER:PORT --run-token TOKEN --config run_dir/config.toml

Weights are swapped between generation chunks (``HFEngine`` hook), so in-flight sequences continue under the new
policy and their tokens carry both versions. The worker exits on a ``stop`` message, when its parent dies
(PR_SET_PDEATHSIG, so a killed learner leaves no orphans) or when the learner stops granting credits.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import random
import signal
import sys
import time

from envs import Task
from spear_stream.config import Config, load_config
from spear_stream.models import load_model, load_tokenizer
from spear_stream.rollout.chat import ChatFormat
from spear_stream.rollout.engine import SamplingParams
from spear_stream.rollout.hf import HFEngine
from spear_stream.rollout.worker import RolloutWorker
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
        self, cfg: Config, address: str, run_token: str, worker_id: int, incarnation: int = 0
    ) -> None:
        self.cfg = cfg
        # first, before libzmq's threads start: each group is consolidated into a fresh buffer (see the helper)
        keep_large_buffers()
        set_threads(cfg.rollout.num_threads)
        tokenizer = load_tokenizer(cfg.model.path)
        self.fmt = ChatFormat(tokenizer)
        self.engine = HFEngine(
            load_model(cfg.model.path, cfg.model.dtype),
            seed=cfg.seed * 1000 + worker_id,
            pad_id=tokenizer.pad_token_id or 0,
        )
        r = cfg.rollout
        sampling = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k, self.fmt.stop_ids)
        f = cfg.algo.filters
        self.worker = RolloutWorker(
            self.fmt,
            cfg.env.name,
            cfg.env.params,
            sampling,
            r.max_seq_len,
            worker_id,
            ngram=(f.ngram, f.ngram_repeats),
        )
        self.worker.groups_started = incarnation << 24  # a replacement worker never reuses group ids
        self.sender = RolloutSender(
            address, worker_id=worker_id, run_token=run_token, send_timeout_s=cfg.sync.timeout_s
        )
        self.subscriber = make_subscriber(cfg.sync.method, timeout_s=cfg.sync.timeout_s)
        self.rng = random.Random(f"{cfg.seed}/{worker_id}/{incarnation}")
        self.max_groups = max(1, r.batch_size // cfg.env.group_size)
        self.sync_errors = 0
        self.skipped_version = -1

    def apply_weights(self) -> None:
        """Poll control messages; load the newest announced weights if newer than ours."""
        self.sender.poll(0)
        ann = self.sender.latest_weights
        if ann is None or ann.version <= max(self.engine.version, self.skipped_version):
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

    def reserve_groups(self) -> int:
        """Block for one credit, then take whatever else is available, up to the batch capacity."""
        self.sender.reserve(self.cfg.sync.timeout_s)
        n = 1
        while n < self.max_groups and self.sender.credits > 0:
            self.sender.reserve(0)
            n += 1
        return n

    def run(self) -> None:
        policy = self.worker.engine_policy(self.engine, between_chunks=self.apply_weights)
        while True:
            n = self.reserve_groups()
            self.apply_weights()  # the newest weights before starting (sync mode: exactly on-policy)
            tasks = [
                Task(task_id=self.rng.randrange(2**31), seed=self.rng.randrange(2**31)) for _ in range(n)
            ]
            for group in self.worker.run_groups(tasks, self.cfg.env.group_size, policy):
                self.sender.send_group(group.rows)

    def close(self) -> None:
        self.sender.close()
        self.subscriber.close()


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="spear-stream rollout", description=__doc__)
    parser.add_argument("--connect", required=True, help="learner address, tcp://HOST:PORT")
    parser.add_argument("--run-token", required=True, help="the run's shared token (printed by the learner)")
    parser.add_argument("--config", default=None, help="the run's config (run_dir/config.toml)")
    parser.add_argument("--worker-id", type=int, default=0)
    parser.add_argument("--incarnation", type=int, default=0, help="restart count (set by the supervisor)")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(list(sys.argv[1:] if argv is None else argv))
    die_with_parent()
    # Nothing to flush: unsent groups of a stopped worker are discarded by design. Exit at once, wherever the
    # main thread is (sys.exit from a signal handler can land inside a finalizer and print a traceback).
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    logging.basicConfig(level=logging.WARNING, format=f"[worker {args.worker_id}] %(message)s")
    cfg = load_config(args.config, overrides)
    proc = WorkerProcess(cfg, args.connect, args.run_token, args.worker_id, args.incarnation)
    started = time.time()
    try:
        proc.run()
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
