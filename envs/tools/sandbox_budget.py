"""Memory of sandbox calls bounded together: per call, and across every concurrent call on the host.

``RLIMIT_AS`` bounds one process, but a call may run ``max_processes`` of them, the math environment runs
several calls at once (``asyncio.to_thread``), and a host runs several rollout workers. Two bounds together keep
the total at ``max_concurrent_calls * memory_mb`` (plus what one polling interval lets through):

* **Per call** (:func:`call_rss_mb`): the host side of ``run_python`` sums the resident memory of the call's
  processes every :data:`WATCH_S` and kills the call when the sum exceeds ``memory_mb``.
* **Across calls** (:class:`HostSlots`): a host-wide semaphore of ``max_concurrent_calls`` slots, one
  ``flock``-ed file each. A slot is released by the kernel when its holder dies, even by SIGKILL, so a crashed
  worker never leaks one. By default as many calls run at once as fit in ``host_memory_fraction`` of the host's
  memory (or of this process's memory cgroup limit, if lower) at ``memory_mb`` each (:func:`default_slots`).

Why not a memory cgroup per call: that needs a writable, delegated cgroup hierarchy, which containers and CI
machines often lack; these two bounds need only ``/proc`` and ``flock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from pathlib import Path

WATCH_S = 0.02  # how often a call's memory is summed
_RETRY_S = 0.01


def call_rss_mb(root_pid: int) -> float:
    """Resident memory (MiB) of ``root_pid`` and all its descendants; processes that end meanwhile count 0."""
    total_kb, stack, seen = 0, [root_pid], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
                    break
        for task in _tasks(pid):
            with contextlib.suppress(OSError, ValueError):
                stack += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return total_kb / 1024


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def host_memory_mb() -> float:
    """Physical memory, or this process's cgroup memory limit when that is lower (containers)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    for path in _cgroup_limit_files():
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text().strip()
            if text != "max":
                total = min(total, int(text) / 2**20)
    return total


def _cgroup_limit_files() -> list[Path]:
    files = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            if controllers == "":  # cgroup v2
                files.append(Path("/sys/fs/cgroup") / rel.lstrip("/") / "memory.max")
            elif "memory" in controllers.split(","):  # cgroup v1
                files.append(Path("/sys/fs/cgroup/memory") / rel.lstrip("/") / "memory.limit_in_bytes")
    return files


def default_slots(memory_mb: int, host_memory_fraction: float) -> int:
    """How many calls of ``memory_mb`` fit in ``host_memory_fraction`` of the host's memory (at least 1)."""
    return max(1, int(host_memory_mb() * host_memory_fraction // memory_mb))


class HostSlots:
    """A host-wide counting semaphore (per user) over ``n`` lock files; use as a context manager.

    ``acquire`` waits up to ``wait_s`` and raises :class:`TimeoutError` when every slot stays taken.
    """

    def __init__(self, n: int, wait_s: float, directory: str | Path | None = None) -> None:
        self.n, self.wait_s = n, wait_s
        base = Path(directory or tempfile.gettempdir())
        self.dir = base / f"spear-sandbox-slots-{os.getuid()}"
        self._fd: int | None = None

    def acquire(self) -> int:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        while True:
            for slot in range(self.n):
                fd = os.open(self.dir / f"slot-{slot}", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._fd = fd
                return slot
            if time.monotonic() >= deadline:
                raise TimeoutError(f"all {self.n} sandbox slots stayed busy for {self.wait_s:g} s")
            time.sleep(_RETRY_S)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> HostSlots:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
