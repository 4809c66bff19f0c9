"""Worker side of the rollout channel (protocol: :mod:`spear_stream.transport.common`) and its errors."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter, deque
from typing import Any

import zmq
from tensordict import TensorDictBase

from spear_stream.transport.codec import encode_group, parse_control, worker_header
from spear_stream.transport.common import (
    HWM,
    KIND_BYE,
    KIND_HEARTBEAT,
    KIND_HELLO,
    WeightsAnnouncement,
    worker_identity,
)

_LOG = logging.getLogger(__name__)


class TransportError(RuntimeError):
    """The channel cannot make progress (peer gone, send timed out)."""


class CreditTimeout(TransportError, TimeoutError):
    """A worker waited longer than its timeout for a credit from the learner."""


class ChannelStopped(TransportError):
    """The learner told this worker to stop."""


class RolloutSender:
    """Worker side: a DEALER that sends groups against credits and collects control messages.

    Call :meth:`poll` from the worker loop between generation chunks: it applies credits, weight announcements
    and stop requests, and sends a heartbeat when the channel has been idle for ``heartbeat_s``.
    """

    def __init__(
        self,
        address: str,
        *,
        worker_id: int,
        run_token: str,
        start_seq: int = 0,
        heartbeat_s: float = 2.0,
        send_timeout_s: float = 60.0,
        context: zmq.Context | None = None,
    ) -> None:
        self.address, self.worker_id, self.run_token = address, worker_id, run_token
        self._token = run_token.encode()
        self.seq = start_seq  # sequence number of the next group
        self.heartbeat_s, self.send_timeout_s = heartbeat_s, send_timeout_s
        self.credits = 0  # granted, not yet reserved
        self.reserved = 0  # reserved for groups being generated, not yet sent
        self.latest_weights: WeightsAnnouncement | None = None
        self.stop_requested = False
        self.counters: Counter[str] = Counter()
        self.stats: dict[
            str, float
        ] = {}  # the worker's own counters, reported to the learner with heartbeats
        self._stats_sent: dict[str, float] = {}
        self._sock = (context or zmq.Context.instance()).socket(zmq.DEALER)
        for option, value in (
            (zmq.ROUTING_ID, worker_identity(worker_id)),
            (zmq.SNDHWM, HWM),
            (zmq.RCVHWM, HWM),
            (zmq.SNDTIMEO, int(send_timeout_s * 1000)),
        ):
            self._sock.setsockopt(option, value)
        self._sock.connect(address)
        self._last_send = 0.0
        self._last_stats = 0.0
        self._unsent: deque[zmq.MessageTracker] = deque()  # trackers of groups libzmq may still be reading
        self._send_control(KIND_HELLO)

    def poll(self, timeout_ms: int = 0) -> list[dict[str, Any]]:
        """Apply the control messages that arrive within ``timeout_ms``; returns them."""
        if time.monotonic() - self._last_send >= self.heartbeat_s or (
            self.stats != self._stats_sent and time.monotonic() - self._last_stats >= self.heartbeat_s
        ):
            self._send_control(KIND_HEARTBEAT)
        messages: list[dict[str, Any]] = []
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return messages
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return messages
            message = self._apply_control(frames)
            if message is not None:
                messages.append(message)

    def reserve(self, timeout_s: float | None = None) -> None:
        """Take one credit for a group about to be generated; blocks up to ``timeout_s`` (default send timeout)."""
        timeout = self.send_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        self.poll(0)
        while True:
            if self.stop_requested:
                raise ChannelStopped(f"worker {self.worker_id}: the learner at {self.address} requested stop")
            if self.credits > 0:
                self.credits -= 1
                self.reserved += 1
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CreditTimeout(
                    f"worker {self.worker_id}: no credit from the learner at {self.address} within {timeout:.1f}s "
                    f"({self.seq} groups sent, {self.reserved} reserved); is the learner alive and granting credits?"
                )
            self.poll(max(1, int(min(remaining, self.heartbeat_s) * 1000)))

    def send_group(self, rows: list[TensorDictBase] | TensorDictBase, timeout_s: float | None = None) -> int:
        """Send a group (reserving a credit first if none is reserved); returns its sequence number."""
        if self.reserved == 0:
            self.reserve(timeout_s)
        frames = encode_group(rows, run_token=self.run_token, worker_id=self.worker_id, seq=self.seq)
        self.reserved -= 1
        try:
            tracker = self._sock.send_multipart(frames, copy=False, track=True)
        except zmq.Again:
            raise TransportError(
                f"worker {self.worker_id}: sending to {self.address} timed out after {self.send_timeout_s:.1f}s"
            ) from None
        self._unsent.append(tracker)
        while self._unsent and self._unsent[0].done:
            self._unsent.popleft()
        seq, self.seq = self.seq, self.seq + 1
        self._last_send = time.monotonic()
        self.counters["sender/groups_sent"] += 1
        self.counters["sender/bytes_sent"] += sum(len(frame) for frame in frames)
        return seq

    def heartbeat(self) -> None:
        self._send_control(KIND_HEARTBEAT)

    def state_dict(self) -> dict[str, Any]:
        return {"seq": self.seq}

    def close(self, bye: bool = True, timeout_s: float = 10.0) -> None:
        """Wait up to ``timeout_s`` for sent groups to leave, then close.

        Zero-copy frames are read by libzmq's I/O thread after ``send`` returns. A process that exits while a
        large buffer is still queued frees it under that thread (libzmq aborts with "Bad address"), so we wait
        on each group's tracker, and drop (linger 0) what could not be delivered.
        """
        if bye:  # best effort: otherwise the receiver sees the worker go silent
            with contextlib.suppress(zmq.ZMQError):
                self._send_control(KIND_BYE, flags=zmq.NOBLOCK)
        deadline = time.monotonic() + timeout_s
        undelivered = 0
        for tracker in self._unsent:
            try:
                tracker.wait(max(0.001, deadline - time.monotonic()))
            except zmq.NotDone:
                undelivered += 1
        if undelivered:
            _LOG.warning(
                "worker %d: %d groups undelivered after %.1fs; dropped",
                self.worker_id,
                undelivered,
                timeout_s,
            )
        self._sock.close(linger=0 if undelivered else 1000)  # only small copied control frames may linger

    def __enter__(self) -> RolloutSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send_control(self, kind: str, flags: int = 0) -> None:
        extra: dict[str, Any] = {}
        if kind == KIND_HEARTBEAT and self.stats:
            extra["stats"] = self._stats_sent = dict(self.stats)
            self._last_stats = time.monotonic()
        header = worker_header(
            kind, run_token=self.run_token, worker_id=self.worker_id, seq=self.seq, **extra
        )
        self._sock.send(json.dumps(header).encode(), flags)
        self._last_send = time.monotonic()

    def _apply_control(self, frames: list[bytes]) -> dict[str, Any] | None:
        message = parse_control(frames[0], self._token) if len(frames) == 1 else None
        if message is None:
            self.counters["sender/rejected_control"] += 1
            return None
        if message["kind"] == "credit":
            self.credits += message["n"]
        elif message["kind"] == "weights":
            self.latest_weights = WeightsAnnouncement(message["version"], message["location"])
        else:
            self.stop_requested = True
        return message
