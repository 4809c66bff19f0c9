"""The python sandbox (envs/tools/sandbox.py): ordinary code works, hostile code cannot reach the host.

Every sandboxed test runs under the ``limits`` fixture: the call gets its own unused uid, and afterwards the
fixture asserts that no process of that uid is left anywhere on the host and that the test process has no
leftover children (the sandbox never leaks a process). Bombs are capped in their own loops as well, and they
only run after the privilege drop and the process limit are proven by harmless tests in the same module.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import os
import random
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from envs.tools.sandbox import (
    FRESH_UIDS,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailable,
    namespaces_available,
    run_python,
    strip_code_fence,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
needs_namespaces = pytest.mark.skipif(not namespaces_available(), reason="cannot create namespaces here")


def _processes_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:  # the process ended while we looked
            continue
        real_uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        if int(real_uid) == uid:
            pids.append(int(entry))
    return pids


def _children_of_this_process() -> list[str]:
    children = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        children += Path(f"/proc/{os.getpid()}/task/{task}/children").read_text().split()
    return children


@pytest.fixture
def limits() -> Iterator[SandboxLimits]:
    """Namespaced limits with a uid used by nobody else; checks that the host is unaffected afterwards."""
    uid = random.choice(FRESH_UIDS)
    children_before = _children_of_this_process()
    yield SandboxLimits(isolation="namespaces", uid=uid)
    assert _children_of_this_process() == children_before, "the sandbox left a child of the test process"
    if os.geteuid() == 0:
        assert _processes_of_uid(uid) == [], "a sandbox process survived the call"


def _with(limits: SandboxLimits, **changes: object) -> SandboxLimits:
    return dataclasses.replace(limits, **changes)


# ---------------------------------------------------------------------------------------- pure helpers


def test_strip_code_fence() -> None:
    assert strip_code_fence("```python\nprint(1)\n```") == "print(1)\n"
    assert strip_code_fence("Let me compute.\n```py\nx = 2\nprint(x)\n```\ndone") == "x = 2\nprint(x)\n"
    assert strip_code_fence("print(2)") == "print(2)"


def test_result_text_is_stdout_or_error() -> None:
    good = SandboxResult(True, "42\n", "", None, False, 0, 0.1)
    assert good.text == "42\n"
    crash = SandboxResult(False, "partial\n", "Traceback ...\nValueError: x\n", "exit code 1", False, 1, 0.1)
    assert crash.text == "partial\nTraceback ...\nValueError: x"
    late = SandboxResult(False, "", "", "TimeoutError: too slow", True, None, 2.0)
    assert late.text == "TimeoutError: too slow"


def test_code_too_long_is_refused_without_running() -> None:
    result = run_python("x = 1\n" * 100, limits=SandboxLimits(max_code_bytes=100))
    assert not result.ok and "longer than" in (result.error or "")


# ------------------------------------------------------------------------------------ ordinary behaviour


@needs_namespaces
def test_prints_and_returns(limits: SandboxLimits) -> None:
    result = run_python("print(sum(i * i for i in range(10)))\nprint(math.factorial(5))", limits=limits)
    assert result.ok and result.returncode == 0 and result.error is None and not result.timed_out
    assert result.stdout == "285\n120\n" and result.text == result.stdout
    assert result.isolation == "namespaces" and result.wall_s < 20  # (a generous bound: a loaded host)


@needs_namespaces
def test_fence_preamble_and_traceback(limits: SandboxLimits) -> None:
    fenced = "```python\nprint(sqrt(16))\n```"
    assert run_python(fenced, limits=_with(limits, preamble="from math import *")).stdout == "4.0\n"
    crash = run_python("x = 1\ny = x / 0\n", limits=limits)
    assert not crash.ok and crash.returncode == 1
    assert 'File "main.py", line 2' in crash.text and "ZeroDivisionError" in crash.text
    assert "sandbox_runner" not in crash.text  # the runner's own frames are hidden


@needs_namespaces
def test_concurrent_calls_are_independent(limits: SandboxLimits) -> None:
    codes = [f"import time\ntime.sleep(0.2)\nprint({i} * {i})" for i in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda code: run_python(code, limits=limits), codes))
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(4)]


@needs_namespaces
def test_allowed_packages_only(limits: SandboxLimits) -> None:
    pytest.importorskip("numpy")
    missing = run_python("import numpy", limits=limits)
    assert not missing.ok and "ModuleNotFoundError" in missing.text
    with_numpy = _with(limits, packages=("numpy",), preamble="import numpy as np")
    assert run_python("print(int(np.arange(10).sum()))", limits=with_numpy).stdout == "45\n"


@needs_namespaces
def test_runs_unprivileged(limits: SandboxLimits) -> None:
    code = "import os\nprint(os.getuid(), os.geteuid())\nprint(open('/proc/self/status').read())"
    result = run_python(code, limits=limits)
    assert result.ok
    uids = result.stdout.splitlines()[0].split()
    assert "0" not in uids
    if os.geteuid() == 0:
        assert uids == [str(limits.uid)] * 2
    status = dict(line.split(":\t", 1) for line in result.stdout.splitlines()[1:] if ":\t" in line)
    assert status["CapEff"].strip() == status["CapPrm"].strip() == status["CapBnd"].strip() == "0" * 16
    assert status["NoNewPrivs"].strip() == "1"


@needs_namespaces
def test_threads_and_multiprocessing_work_but_user_namespaces_are_refused(limits: SandboxLimits) -> None:
    pool = "from multiprocessing.pool import ThreadPool\nprint(ThreadPool(2).map(abs, [-1, -2]))"
    assert run_python(pool, limits=limits).stdout == "[1, 2]\n"
    subprocess_ok = "import subprocess\nprint(subprocess.run(['echo', 'hi'], capture_output=True).stdout)"
    assert run_python(subprocess_ok, limits=limits).stdout == "b'hi\\n'\n"
    new_userns = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.unshare(0x10000000), ctypes.get_errno())"
    assert run_python(new_userns, limits=limits).stdout == "-1 1\n"  # EPERM from the seccomp filter


@needs_namespaces
def test_process_limit_refuses_extra_processes(limits: SandboxLimits) -> None:
    """Harmless check of the fork limit before any bomb: 50 sleeps are refused beyond max_processes."""
    code = """
import subprocess
started = 0
for _ in range(50):
    try:
        subprocess.Popen(["sleep", "120"])
    except OSError:
        break
    started += 1
print(started)
"""
    result = run_python(code, limits=_with(limits, max_processes=6))
    assert result.ok
    assert 0 < int(result.stdout) < 6  # the interpreter itself is one of the six
    assert result.wall_s < 20  # the sleepers (120 s) died with the call; nobody waited for them


@needs_namespaces
def test_output_is_truncated(limits: SandboxLimits) -> None:
    result = run_python(
        "print('x' * 100_000)\nimport sys\nprint('e' * 50_000, file=sys.stderr)", limits=limits
    )
    assert result.ok and result.truncated
    assert result.stdout.startswith("x" * limits.max_output_bytes) and result.stdout.endswith(
        "[output truncated]"
    )
    assert (
        len(result.stdout) < limits.max_output_bytes + 100
        and len(result.stderr) < limits.max_output_bytes + 100
    )


@needs_namespaces
def test_endless_output_flood_is_killed(limits: SandboxLimits) -> None:
    result = run_python("while True:\n    print('y' * 10_000)", limits=limits)
    assert not result.ok and "OutputLimitExceeded" in (result.error or "")
    assert len(result.stdout) < limits.max_output_bytes + 100


# ------------------------------------------------------------------------------------- hostile behaviour


@needs_namespaces
def test_network_is_unreachable(limits: SandboxLimits) -> None:
    with socket.socket() as listener:  # a host listener the sandbox tries to reach: nothing may arrive
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.3)
        port = listener.getsockname()[1]
        code = (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
        )
        connect = run_python(code, limits=limits)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert not connect.ok and "connected" not in connect.stdout and "OSError" in connect.text
    lookup = run_python("import socket\nprint(socket.getaddrinfo('localhost', 80))", limits=limits)
    assert not lookup.ok and "gaierror" in lookup.text


@needs_namespaces
def test_cannot_read_project_files(limits: SandboxLimits) -> None:
    path = PROJECT_ROOT / "pyproject.toml"
    assert path.exists()
    result = run_python(f"print(open({str(path)!r}).read())", limits=limits)
    assert not result.ok and "FileNotFoundError" in result.text and "[project]" not in result.stdout
    listing = run_python("import os\nprint(sorted(os.listdir('/')))", limits=limits)
    assert PROJECT_ROOT.parts[1] not in ast.literal_eval(listing.stdout)  # e.g. no /work at all


@needs_namespaces
def test_cannot_write_outside_its_directory(limits: SandboxLimits, tmp_path: Path) -> None:
    outside = [
        Path("/tmp") / f"xyz-outside-{os.getpid()}",
        PROJECT_ROOT / "pwned",
        tmp_path / "pwned",
        Path("/usr/pwned"),
    ]
    for target in outside:
        result = run_python(f"open({str(target)!r}, 'w').write('x')", limits=limits)
        assert not result.ok and ("Error" in result.text), target
        assert not target.exists(), target
    inside = run_python("open('notes.txt', 'w').write('ok')\nprint(open('notes.txt').read())", limits=limits)
    assert inside.ok and inside.stdout == "ok\n"
    big = run_python("open('big', 'wb').write(b'x' * (40 << 20))", limits=_with(limits, max_file_mb=16))
    assert not big.ok and "File too large" in big.text


@needs_namespaces
def test_memory_bomb_fails(limits: SandboxLimits) -> None:
    result = run_python("x = bytearray(10 * 1024**3)\nprint('allocated')", limits=limits)
    assert not result.ok and "MemoryError" in result.text and "allocated" not in result.stdout


@needs_namespaces
def test_cpu_loop_is_killed(limits: SandboxLimits) -> None:
    result = run_python("while True:\n    pass", limits=_with(limits, cpu_s=1, timeout_s=60))
    assert result.timed_out and not result.ok and "CPU time limit" in (result.error or "")
    assert result.wall_s < 40  # the CPU limit fired, not the 60 s wall clock


@needs_namespaces
def test_wall_clock_timeout_keeps_partial_output(limits: SandboxLimits) -> None:
    code = "import time\nprint('started')\ntime.sleep(60)"
    result = run_python(code, limits=_with(limits, timeout_s=1))
    assert result.timed_out and not result.ok and result.returncode is None
    assert result.stdout == "started\n" and "TimeoutError" in result.text
    assert result.wall_s < 20  # not the 60 s sleep


@needs_namespaces
def test_grandchild_does_not_survive(limits: SandboxLimits) -> None:
    """A detached (setsid) sleeping grandchild dies with the call, both on normal exit and on timeout."""
    spawn = "import subprocess\nsubprocess.Popen(['sleep', '600'], start_new_session=True)\nprint('spawned')"
    result = run_python(spawn, limits=limits)
    assert result.ok and result.stdout == "spawned\n" and result.wall_s < 20  # not the 600 s sleep
    daemon = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(600)
    os._exit(0)
time.sleep(600)
"""
    late = run_python(daemon, limits=_with(limits, timeout_s=1))
    assert late.timed_out and late.wall_s < 20
    # the fixture then asserts that no process of the sandbox uid exists anywhere on the host


@needs_namespaces
def test_capped_fork_bomb_is_contained(limits: SandboxLimits) -> None:
    """Runs after the harmless process-limit test above; the bomb's own loop is capped at 2**8 processes."""
    bomb = """
import os, time
for _ in range(8):
    try:
        os.fork()
    except OSError:
        pass
time.sleep(120)
"""
    started = time.monotonic()
    result = run_python(bomb, limits=_with(limits, max_processes=8, timeout_s=2))
    assert result.timed_out and not result.ok
    assert time.monotonic() - started < 30  # the 120 s sleeps were killed with the call
    assert os.getpid() > 0 and run_python("print('still fine')", limits=limits).stdout == "still fine\n"


def test_namespaces_mode_refuses_without_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    import envs.tools.sandbox as sandbox

    monkeypatch.setattr(sandbox, "namespaces_available", lambda: False)
    with pytest.raises(SandboxUnavailable):
        run_python("print(1)", limits=SandboxLimits(isolation="namespaces"))


# ---------------------------------------------------------------------------------------- memory, together


@pytest.fixture
def private_slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The host-wide slot files of these tests live in a fresh directory (no other test shares them)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _mem_available_mb() -> float:
    line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemAvailable:"))
    return int(line.split()[1]) / 1024


@needs_namespaces
def test_forked_processes_share_one_memory_bound(limits: SandboxLimits, private_slots: Path) -> None:
    """Seven forks and their parent each touch 300 MB (2.4 GB together, each within RLIMIT_AS): the call as a
    whole is held to memory_mb, and the host's free memory never drops by much more than that."""
    bomb = """
import os, time
for _ in range(7):
    if os.fork() == 0:
        break
block = b"x" * (300 << 20)  # touched, not merely reserved
time.sleep(60)
"""
    lowest, done = [_mem_available_mb()], False
    baseline = lowest[0]

    def sample() -> None:
        while not done:
            lowest.append(_mem_available_mb())
            time.sleep(0.005)

    with ThreadPoolExecutor(1) as pool:
        sampler = pool.submit(sample)
        result = run_python(bomb, limits=_with(limits, memory_mb=512, timeout_s=60))
        done = True
        sampler.result()
    assert not result.ok and "together used more than 512 MB" in (result.error or ""), result
    assert result.wall_s < 30  # killed by the watchdog, not by the 60 s timeout
    assert baseline - min(lowest) < 512 + 700  # the bound plus what one polling interval lets through


@needs_namespaces
def test_a_host_wide_slot_limit_serialises_calls(limits: SandboxLimits, private_slots: Path) -> None:
    code = "import time\nstart = time.time()\ntime.sleep(0.4)\nprint(start, time.time())"
    one_at_a_time = _with(limits, max_concurrent_calls=1)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: run_python(code, limits=one_at_a_time), range(3)))
    spans = sorted(tuple(map(float, r.stdout.split())) for r in results)
    assert all(r.ok for r in results)
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))


def test_a_slot_held_by_another_process_makes_calls_wait_and_frees_when_it_dies(private_slots: Path) -> None:
    import signal
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "from envs.tools.sandbox_budget import HostSlots\n"
         f"s = HostSlots(1, 5, {str(private_slots)!r}); s.acquire(); print('held', flush=True)\n"
         "import time; time.sleep(60)"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        busy = run_python("print(1)", limits=SandboxLimits(max_concurrent_calls=1, slot_wait_s=0.3))
        assert not busy.ok and (busy.error or "").startswith("sandbox busy")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert run_python("print(1)", limits=SandboxLimits(max_concurrent_calls=1, slot_wait_s=5)).stdout == "1\n"


def test_the_default_slot_count_fits_the_host_memory() -> None:
    from envs.tools.sandbox_budget import default_slots, host_memory_mb

    assert default_slots(1024, 0.5) == max(1, int(host_memory_mb() * 0.5 // 1024))
    assert default_slots(10**9, 0.5) == 1  # a bound larger than the host still runs one call at a time
