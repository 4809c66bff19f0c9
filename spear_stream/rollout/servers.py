"""Inference servers that `spear-stream train` starts itself (``rollout.sglang_launch``), watches and stops.

The command template is run once per server, in the server's own environment (``{python}``:
``rollout.sglang_python``), with these placeholders: ``{python}``, ``{model}`` (``model.path``), ``{port}`` and
``{nccl_port}`` (free ports picked here), ``{gpu}`` (one id of ``rollout.sglang_gpus``, also exported as
``CUDA_VISIBLE_DEVICES``) and ``{index}``. For example::

    {python} -m sglang.launch_server --model-path {model} --port {port} --nccl-port {nccl_port}
        --skip-tokenizer-init --sampling-defaults openai --weight-version 0

Each server runs in a process group of its own (logs in ``run_dir/logs/server<i>.log``) and receives SIGTERM if
the learner dies (PR_SET_PDEATHSIG); :meth:`ServerLauncher.stop` ends every group it started, by pid, and only
those. :meth:`ServerLauncher.check` notices a server that exited, or whose ``/health_generate`` has not answered
for ``hang_timeout_s`` (a server busy in a weight update is not checked: the learner knows it is busy), restarts
it on the same port, and reports it back once healthy, so that the learner gives it the current weights before
the workers may use it again.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from spear_stream.utils import free_port


def _die_with_parent() -> None:
    import ctypes

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Server:
    index: int
    port: int
    nccl_port: int
    gpu: int | None
    proc: subprocess.Popen | None = None
    started: float = 0.0
    healthy: bool = False
    last_ok: float = field(default_factory=time.monotonic)
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class ServerLauncher:
    def __init__(
        self,
        template: str,
        n_servers: int,
        *,
        python: str,
        model: str,
        log_dir: Path,
        gpus: list[int] | None = None,
        start_timeout_s: float = 600.0,
        hang_timeout_s: float = 120.0,
        check_every_s: float = 2.0,
    ) -> None:
        if n_servers < 1:
            raise ValueError("rollout.sglang_launch needs rollout.sglang_servers >= 1 or rollout.sglang_gpus")
        self.template, self.python, self.model, self.log_dir = template, python, model, log_dir
        self.start_timeout_s, self.hang_timeout_s, self.check_every_s = (
            start_timeout_s,
            hang_timeout_s,
            check_every_s,
        )
        gpus = list(gpus or [])
        self.servers = [
            _Server(i, free_port(), free_port(), gpus[i] if i < len(gpus) else None) for i in range(n_servers)
        ]
        self._last_check = 0.0
        log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def command(self, server: _Server) -> list[str]:
        values = {"python": self.python, "model": self.model, "port": server.port, "nccl_port": server.nccl_port,
                  "gpu": "" if server.gpu is None else server.gpu, "index": server.index}  # fmt: skip
        try:
            return shlex.split(self.template.format(**values))
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"rollout.sglang_launch: bad template {self.template!r}: {exc!r}") from None

    def _spawn(self, server: _Server) -> None:
        env = dict(os.environ)
        if server.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(server.gpu)
        with (self.log_dir / f"server{server.index}.log").open("a") as log:
            server.proc = subprocess.Popen(
                self.command(server), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        server.started, server.healthy = time.monotonic(), False

    def start(self) -> list[str]:
        """Start every server and wait until all answer ``/health_generate``; returns their URLs."""
        for server in self.servers:
            self._spawn(server)
        deadline = time.monotonic() + self.start_timeout_s
        while not all(s.healthy for s in self.servers):
            for server in self.servers:
                if server.proc is not None and server.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(
                        f"server {server.index} exited with {server.proc.returncode} at start; see "
                        f"{self.log_dir}/server{server.index}.log"
                    )
                server.healthy = server.healthy or self._healthy(server)
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"servers not healthy after {self.start_timeout_s:.0f}s; see {self.log_dir}"
                )
            time.sleep(0.5)
        return self.urls

    @staticmethod
    def _healthy(server: _Server, timeout_s: float = 5.0) -> bool:
        try:
            return httpx.get(f"{server.url}/health_generate", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def check(self, busy: bool = False) -> tuple[list[str], list[str]]:
        """(servers that died or hung and were restarted now, restarted servers healthy again now).

        ``busy``: the learner is updating weights: a server may not answer health checks then; skip hang checks.
        """
        now = time.monotonic()
        if now - self._last_check < self.check_every_s:
            return [], []
        self._last_check = now
        lost, back = [], []
        for server in self.servers:
            exited = server.proc is None or server.proc.poll() is not None
            if not exited and server.healthy and not busy:
                if self._healthy(server, timeout_s=2.0):
                    server.last_ok = now
                elif now - server.last_ok > self.hang_timeout_s:
                    self._kill(server)
                    exited = True
            if exited:
                lost.append(server.url)
                server.restarts += 1
                self._spawn(server)
            elif not server.healthy and self._healthy(server, timeout_s=2.0):
                server.healthy, server.last_ok = True, now
                back.append(server.url)
        return lost, back

    @staticmethod
    def _kill(server: _Server, grace_s: float = 10.0) -> None:
        proc = server.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own group: it may have children
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(grace_s)

    def pids(self) -> dict[str, int]:
        return {s.url: s.proc.pid for s in self.servers if s.proc is not None}

    def stop(self) -> None:
        for server in self.servers:
            self._kill(server)
