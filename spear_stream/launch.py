"""Process management: rollout worker children of learner rank 0, and torchrun for multi-rank learners.

Only processes started here are ever signalled, by pid. Workers also die with their parent (PR_SET_PDEATHSIG
in the worker), so a SIGKILLed learner leaves no orphans.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from spear_stream.utils import free_port


@dataclass
class _Child:
    worker_id: int
    proc: subprocess.Popen
    incarnation: int
    started: float = field(default_factory=time.monotonic)


class WorkerSupervisor:
    """Starts ``n`` rollout workers, replaces dead or silent ones, stops them all on exit."""

    def __init__(
        self,
        n_workers: int,
        *,
        address: str,
        run_token: str,
        config_path: Path,
        log_dir: Path,
        heartbeat_timeout_s: float = 60.0,
        max_restarts: int = 20,
        curve_key: str | None = None,
    ) -> None:
        self.curve_key = curve_key
        self.n_workers, self.address, self.run_token = n_workers, address, run_token
        self.config_path, self.log_dir = config_path, log_dir
        self.heartbeat_timeout_s, self.max_restarts = heartbeat_timeout_s, max_restarts
        self.children: dict[int, _Child] = {}
        self.restarts = 0
        self.stopping = False
        log_dir.mkdir(parents=True, exist_ok=True)

    def _spawn(self, worker_id: int, incarnation: int) -> _Child:
        cmd = [
            sys.executable,
            "-m",
            "spear_stream.rollout.main",
            "--connect",
            self.address,
            "--config",
            str(self.config_path),
            "--worker-id",
            str(worker_id),
            "--incarnation",
            str(incarnation),
        ]
        log = (self.log_dir / f"worker{worker_id}.log").open("a")
        # the run token goes through the environment (readable by this user only), never the command line
        env = {
            **os.environ,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "SPEAR_RUN_TOKEN": self.run_token,
        }
        if self.curve_key:
            env["SPEAR_CURVE_KEY"] = self.curve_key
        # own session: a terminal's Ctrl-C reaches the learner, which stops its workers itself (after its checkpoint)
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        return _Child(worker_id, proc, incarnation)

    def start(self) -> None:
        for worker_id in range(self.n_workers):
            self.children[worker_id] = self._spawn(worker_id, 0)

    def check(self, last_seen: dict[int, float] | None = None) -> list[int]:
        """Replace workers that exited or went silent; returns the replaced worker ids."""
        if self.stopping:
            return []
        replaced = []
        now = time.monotonic()
        for worker_id, child in list(self.children.items()):
            exited = child.proc.poll() is not None
            seen = (last_seen or {}).get(worker_id, child.started)
            silent = now - max(seen, child.started) > self.heartbeat_timeout_s
            if not (exited or silent):
                continue
            if self.restarts >= self.max_restarts:
                raise RuntimeError(
                    f"rollout workers died {self.restarts} times; see {self.log_dir}/worker*.log"
                )
            if not exited:
                self._kill(child.proc)
            self.restarts += 1
            self.children[worker_id] = self._spawn(worker_id, child.incarnation + 1)
            replaced.append(worker_id)
        return replaced

    def pids(self) -> dict[int, int]:
        return {w: c.proc.pid for w, c in self.children.items()}

    @staticmethod
    def _kill(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(grace_s)

    def stop(self, grace_s: float = 0.0) -> None:
        """Give workers ``grace_s`` to exit on their own (after a ``stop`` message), then terminate them."""
        self.stopping = True
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(c.proc.poll() is None for c in self.children.values()):
            time.sleep(0.05)
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.proc.terminate()
        deadline = time.monotonic() + 10.0
        for child in self.children.values():
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                child.proc.wait(5.0)


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def run_torchrun(world_size: int, argv: list[str], stop_timeout_s: int = 300) -> int:
    """Re-launch ``spear-stream train argv`` as ``world_size`` ranks; forward Ctrl-C/SIGTERM; return its code.

    A signal goes to torchrun alone, which passes it to every rank once and gives them ``stop_timeout_s`` to save
    their stop checkpoint before it kills them (``learner/stop.py``).
    """
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={world_size}",
        f"--shutdown-timeout={stop_timeout_s}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "spear_stream.cli.main",
        "train",
        *argv,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if proc.poll() is None:  # our own child group only
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
