"""Small process-level helpers shared by every entry point."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
from collections.abc import Iterator


def set_threads(n: int) -> None:
    """One torch thread per process by default: measured ~10x faster than 2 under contention on 2 cores."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # already set once in this process
        torch.set_num_interop_threads(1)


def keep_large_buffers(limit_mb: int = 1024) -> bool:
    """Let glibc's malloc reuse freed buffers of up to ``limit_mb`` instead of returning each one to the OS.

    Call it at process start, before any thread (libzmq's I/O threads, gloo's) allocates. Two settings:

    * the mmap and trim thresholds: glibc serves an allocation above its mmap threshold (adaptive, but capped
      at 32 MiB) with fresh pages and unmaps it on free, so a process that builds one large buffer after
      another (a rollout worker consolidating each group for the wire) pays every page fault again:
      consolidating a 50 MB group took 33 ms, 13 ms with this;
    * one malloc arena for all threads: libzmq's I/O thread allocates every received frame, the main thread
      frees it, and a thread's own arena is made of heaps of at most 64 MiB that glibc unmaps once empty, so a
      50 MB frame faulted ~5,000 of its 12,800 pages in again on every message (the learner's receive thread
      spent 24 ms per 50 MB group, 14 ms with this; tools/bench_transport.py). The cost of a single arena is a
      malloc lock shared by all threads; these processes allocate from one busy thread at a time.

    The cost of both is that up to ``limit_mb`` of freed heap stays mapped. Returns False (and changes nothing)
    off glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # glibc's <malloc.h>
    limit = limit_mb * 2**20
    # trim first: setting the mmap threshold explicitly also freezes the (adaptive) trim threshold
    return (
        bool(mallopt(m_trim_threshold, 2 * limit))
        and bool(mallopt(m_mmap_threshold, limit))
        and bool(mallopt(m_arena_max, 1))
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _Bar:
    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, description: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, info=description)


@contextlib.contextmanager
def progress(label: str, total: int, enabled: bool = True) -> Iterator[_Bar]:
    """A rich progress bar (disabled, or on a non-terminal, it degrades to nothing)."""
    if not enabled:
        yield _Bar(None, None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(label, total=total, info="")
        yield _Bar(bar, task)
