"""Graceful stop: SIGTERM or Ctrl-C ends the run after the current learner step, with a checkpoint.

The first SIGTERM or SIGINT only sets a flag. The trainer checks it between steps (and rank 0 while it waits
for rollouts); all ranks agree on it through the step's metric all-reduce, stop after the same step, and save a
checkpoint (model, optimizer, replay, SIL buffer, counters) that ``--resume`` continues from.

A second signal of the same kind, at least :data:`FORCE_AFTER_S` after the first, stops at once (Python's
default handlers: ``KeyboardInterrupt`` or termination), for a run stuck where the flag is not checked. A
repeat that comes sooner is a launcher forwarding the first one (``torchrun`` passes the signal it got to every
rank, which a terminal's Ctrl-C has already reached) and is ignored.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType
from typing import Any

FORCE_AFTER_S = 2.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Installs the handlers while entered (main thread only: elsewhere it is a flag that is never set)."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal received
        self._at = 0.0
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by that signal (130 for Ctrl-C, 143 for SIGTERM)."""
        return 0 if self.signum is None else 128 + self.signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum, self._at = signum, time.monotonic()
            # os.write, not print: a handler can interrupt a print in progress (reentrant buffered write)
            os.write(
                2,
                f"learner: {name}: stopping after this step and saving a checkpoint "
                f"(send {name} again to stop at once)\n".encode(),
            )
        elif signum == self.signum and time.monotonic() - self._at >= FORCE_AFTER_S:
            previous = self._previous.get(signum)
            self._restore()
            # What that signal does by default, even where the process started with it ignored (a background job
            # of a non-interactive shell ignores SIGINT): KeyboardInterrupt, or termination.
            if callable(previous) and previous is not signal.default_int_handler:
                previous(signum, _frame)
            elif signum == signal.SIGINT:
                raise KeyboardInterrupt
            else:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)
