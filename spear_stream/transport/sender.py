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

from spear_stream.transport import auth
from spear_stream.transport.codec import KIND_AUTH, encode_group, parse_control, worker_header
from spear_stream.transport.common import (
    KIND_BYE,
    KIND_HEARTBEAT,
    KIND_HELLO,
    WeightsAnnouncement,
    queue_limit,
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
    """Worker side: a DEALER that opens an authenticated session, sends groups against credits and collects
    control messages.

    Call :meth:`poll` from the worker loop: it answers the learner's challenge, applies credits, weight
    announcements and stop requests, re-sends ``hello`` while no session is open, and sends a heartbeat when the
    channel has been idle for ``heartbeat_s``.
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
        server_public_key: str | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.address, self.worker_id = address, worker_id
        self._token = run_token.encode()  # proves the session; never sent
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
        self._key: bytes | None = None  # the session key, once the learner accepted our proof
        self._nonce = auth.nonce()
        self._sock = (context or zmq.Context.instance()).socket(zmq.DEALER)
        for option, value in (
            (zmq.ROUTING_ID, worker_identity(worker_id)),
            (zmq.SNDHWM, queue_limit(64)),
            (zmq.RCVHWM, queue_limit(64)),
            (zmq.SNDTIMEO, int(send_timeout_s * 1000)),
        ):
            self._sock.setsockopt(option, value)
        if server_public_key:  # transport.curve: an encrypted link to the learner
            public, secret = zmq.curve_keypair()
            self._sock.curve_publickey, self._sock.curve_secretkey = public, secret
            self._sock.curve_serverkey = server_public_key.encode()
        self._sock.connect(address)
        self._last_send = 0.0
        self._last_stats = 0.0
        self._last_hello = 0.0
        self._unsent: deque[zmq.MessageTracker] = deque()  # trackers of groups libzmq may still be reading
        self._hello()

    @property
    def authenticated(self) -> bool:
        return self._key is not None

    def _hello(self) -> None:
        self._nonce = auth.nonce()
        self._send_header(
            worker_header(KIND_HELLO, key=None, worker_id=self.worker_id, seq=self.seq, nonce=self._nonce)
        )
        self._last_hello = time.monotonic()

    def poll(self, timeout_ms: int = 0) -> list[dict[str, Any]]:
        """Apply the control messages that arrive within ``timeout_ms``; returns them."""
        now = time.monotonic()
        if self._key is None:
            if now - self._last_hello >= self.heartbeat_s:  # the learner may have restarted or missed it
                self._hello()
        elif now - self._last_send >= self.heartbeat_s or (
            self.stats != self._stats_sent and now - self._last_stats >= self.heartbeat_s
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
        header, *buffers = encode_group(rows, key=self._key, worker_id=self.worker_id, seq=self.seq)
        self.reserved -= 1
        # One tracked frame per buffer: send_multipart's own tracker covers only the last frame (and none at all
        # when that frame is small enough for pyzmq to copy), while libzmq reads every buffer after send returns.
        frames = [zmq.Frame(buffer, copy=False, track=True) for buffer in buffers]
        try:
            self._sock.send_multipart([header, *frames], copy=False)
        except zmq.Again:
            raise TransportError(
                f"worker {self.worker_id}: sending to {self.address} timed out after {self.send_timeout_s:.1f}s"
            ) from None
        self._unsent.append(zmq.MessageTracker(*frames))
        while self._unsent and self._unsent[0].done:
            self._unsent.popleft()
        seq, self.seq = self.seq, self.seq + 1
        self._last_send = time.monotonic()
        self.counters["sender/groups_sent"] += 1
        self.counters["sender/bytes_sent"] += len(header) + sum(len(frame) for frame in frames)
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
        if bye and self._key is not None:  # best effort: otherwise the receiver sees the worker go silent
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
        self._send_header(
            worker_header(kind, key=self._key, worker_id=self.worker_id, seq=self.seq, **extra), flags
        )

    def _send_header(self, header: dict[str, Any], flags: int = 0) -> None:
        self._sock.send(json.dumps(header).encode(), flags)
        self._last_send = time.monotonic()

    def _apply_control(self, frames: list[bytes]) -> dict[str, Any] | None:
        message = parse_control(frames[0], self._key) if len(frames) == 1 else None
        if message is None:
            self.counters["sender/rejected_control"] += 1
            return None
        kind = message["kind"]
        if kind == "challenge":  # prove the run token; the session key is derived, never sent
            proof = auth.proof(self._token, self.worker_id, self._nonce, message["nonce"])
            self._key = auth.session_key(self._token, self.worker_id, self._nonce, message["nonce"])
            self.credits = self.reserved = 0  # a new session: the learner voided the old credits
            header = worker_header(KIND_AUTH, key=None, worker_id=self.worker_id, seq=self.seq, proof=proof)
            self._send_header(header)
        elif kind == "credit":
            self.credits += message["n"]
        elif kind == "weights":
            self.latest_weights = WeightsAnnouncement(message["version"], message["location"])
        else:
            self.stop_requested = True
        return message
