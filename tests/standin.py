"""Stand-in SGLang servers for tests: SGLang's own HTTP layer over the in-process engine (tools/sglang_standin.py).

Each server is a subprocess on a free 127.0.0.1 port, started with ``PYTHONPATH=.venv-sglang`` (``make setup``
installs SGLang's packages there, never into the project's venv). Only the processes started here are stopped,
by pid, always, even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import httpx
import pytest

from spear_stream.utils import free_port

ROOT = Path(__file__).resolve().parents[1]
SGLANG_DIR = ROOT / ".venv-sglang"


def require_sglang() -> None:
    if not (SGLANG_DIR / "sglang").is_dir():
        pytest.skip(f"SGLang's HTTP layer is not installed in {SGLANG_DIR} (run `make setup`)")


@dataclass
class StandIn:
    url: str
    proc: subprocess.Popen
    log: Path

    def stop(self, sig: int = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start(model_dir: Path, log_dir: Path, *extra: str) -> StandIn:
    port = free_port()
    log = log_dir / f"standin-{port}.log"
    env = {**os.environ, "PYTHONPATH": str(SGLANG_DIR), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(ROOT / "tools/sglang_standin.py"),
        "--model",
        str(model_dir),
        "--port",
        str(port),
        *extra,
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    return StandIn(f"http://127.0.0.1:{port}", proc, log)


def wait_healthy(server: StandIn, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"stand-in exited with {server.proc.returncode}:\n{server.log.read_text()[-3000:]}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health_generate", timeout=10).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(
        f"stand-in {server.url} not healthy after {timeout_s}s:\n{server.log.read_text()[-3000:]}"
    )


@contextlib.contextmanager
def standins(model_dir: Path, log_dir: Path, n: int = 1, *extra: str) -> Iterator[list[StandIn]]:
    """``n`` healthy stand-in servers serving ``model_dir``; all stopped on exit."""
    require_sglang()
    servers: list[StandIn] = []
    try:
        servers = [start(model_dir, log_dir, *extra) for _ in range(n)]
        for server in servers:
            wait_healthy(server)
        yield servers
    finally:
        for server in servers:
            server.stop(9)


@cache
def sglang_field_names() -> tuple[frozenset[str], frozenset[str]]:
    """The field names of SGLang's ``GenerateReqInput`` and ``SamplingParams`` at the pinned version."""
    require_sglang()
    code = (
        "import dataclasses, json\n"
        "from sglang.srt.managers.io_struct import GenerateReqInput\n"
        "from sglang.srt.sampling.sampling_params import SamplingParams\n"
        "print(json.dumps([[f.name for f in dataclasses.fields(GenerateReqInput)],"
        " list(SamplingParams.__struct_fields__)]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SGLANG_DIR)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=300
    )
    request, sampling = json.loads(out.stdout.strip().splitlines()[-1])
    return frozenset(request), frozenset(sampling)
