"""The stop request: first signal sets a flag, a quick repeat (a launcher forwarding it) is ignored, a later one
stops at once; metrics of steps beyond a resumed checkpoint are dropped."""

from __future__ import annotations

import json
import signal

import pytest

from spear_stream.learner import stop
from spear_stream.learner.stop import StopRequest
from spear_stream.metrics import MetricsLogger, read_metrics


@pytest.mark.parametrize("started_with", ["default", "ignored"])  # ignored: a background job of a script
def test_first_signal_only_asks_and_a_later_repeat_forces(monkeypatch, started_with: str) -> None:
    clock = [100.0]
    monkeypatch.setattr(stop.time, "monotonic", lambda: clock[0])
    initial = signal.default_int_handler if started_with == "default" else signal.SIG_IGN
    before = signal.signal(signal.SIGINT, initial)
    try:
        _ask_then_force(clock)
    finally:
        assert signal.signal(signal.SIGINT, before) == initial  # restored on the way out


def _ask_then_force(clock: list[float]) -> None:
    with StopRequest() as request:
        signal.raise_signal(signal.SIGINT)
        assert request.requested and request.exit_code == 130
        clock[0] += 0.5
        signal.raise_signal(signal.SIGINT)  # torchrun forwarding the terminal's Ctrl-C: ignored
        signal.raise_signal(signal.SIGTERM)  # another kind of signal: ignored too
        assert request.signum == signal.SIGINT
        clock[0] += stop.FORCE_AFTER_S
        with pytest.raises(KeyboardInterrupt):  # the user pressed Ctrl-C again: stop at once
            signal.raise_signal(signal.SIGINT)


def test_handlers_are_restored_on_exit() -> None:
    before = {s: signal.getsignal(s) for s in stop.SIGNALS}
    with StopRequest() as request:
        assert all(signal.getsignal(s) == request._handle for s in stop.SIGNALS)
    assert {s: signal.getsignal(s) for s in stop.SIGNALS} == before
    assert not request.requested and request.exit_code == 0


def test_a_resumed_logger_drops_lines_beyond_the_checkpoint(tmp_path) -> None:
    lines = [{"step": 0, "eval/x": 1.0}] + [{"step": s, "loss/policy": float(s)} for s in (1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(m) + "\n" for m in lines) + '{"step": 5, "loss/pol'  # a half-written line
    )
    logger = MetricsLogger(tmp_path, resume_step=2)
    logger.log(3, {"loss/policy": 30.0})
    logger.close()
    assert [(m["step"], m.get("loss/policy")) for m in read_metrics(tmp_path)] == [
        (0, None), (1, 1.0), (2, 2.0), (3, 30.0),
    ]  # fmt: skip
