"""Learner side of the rollout channel: a ROUTER that validates incoming groups and hands out credits.

Protocol, sockets and flow control: :mod:`spear_stream.transport.common`.

Receiver checks, in order, before anything reaches the replay: frame count, size (``max_message_mb``; frames beyond
twice that are cut by libzmq's ``MAXMSGSIZE`` and disconnect the peer), header shape, run token (constant-time),
schema version, sender identity, credit, sequence number, then decode + per-row schema validation. A rejected
message is counted (``transport/rejected`` and ``transport/rejected/<reason>``), logged (rate-limited) and dropped;
:meth:`RolloutReceiver.poll` never raises because of what a peer sent.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import zmq
from tensordict import LazyStackedTensorDict

from spear_stream.config import TransportConfig
from spear_stream.schema import SCHEMA_VERSION
from spear_stream.transport.codec import (
    KIND_GROUP,
    DecodeError,
    decode_group,
    encode_control,
    parse_header,
    parse_stats,
)
from spear_stream.transport.common import (
    HWM,
    KIND_BYE,
    KIND_HEARTBEAT,
    KIND_HELLO,
    WeightsAnnouncement,
    worker_identity,
)

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedGroup:
    worker_id: int
    seq: int
    rows: LazyStackedTensorDict  # views into the received frame: clone before writing in place
    policy_versions: tuple[int, int]  # (oldest, newest) token version
    nbytes: int


class _RateLimitedLog:
    """At most one warning per reason every ``every_s`` seconds, reporting how many were suppressed."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, reason: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -float("inf")) < self.every_s:
            self._suppressed[reason] += 1
            return
        extra = f" ({self._suppressed.pop(reason)} more suppressed)" if self._suppressed[reason] else ""
        self._last[reason] = now
        _LOG.warning("transport (%s): %s%s", reason, message, extra)


class RolloutReceiver:
    """Learner side: a ROUTER that validates incoming groups and hands out credits. Single-threaded; poll it."""

    def __init__(
        self,
        cfg: TransportConfig,
        *,
        auto_credit: bool = True,
        vocab_size: int | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.run_token = cfg.run_token or secrets.token_hex(16)
        self._token = self.run_token.encode()
        self.credits_per_worker = cfg.credits_per_worker
        self.max_message_bytes = int(cfg.max_message_mb * 2**20)
        self.auto_credit = auto_credit
        self.vocab_size = vocab_size
        self.counters: Counter[str] = Counter()
        self.last_seen: dict[int, float] = {}  # time.monotonic() of the last authenticated message
        self._last_seq: dict[int, int] = {}
        self._outstanding: dict[int, int] = {}  # granted credits not yet used by a received group
        self._latest_weights: WeightsAnnouncement | None = None
        self.worker_stats: dict[int, dict[str, float]] = {}  # the newest counters each worker reported
        self.retired_stats: Counter[str] = Counter()  # counters of earlier sessions (restarted workers)
        self._log = _RateLimitedLog()
        self._sock = (context or zmq.Context.instance()).socket(zmq.ROUTER)
        for option, value in (
            (zmq.ROUTER_MANDATORY, 1),
            (zmq.ROUTER_HANDOVER, 1),  # a restarted worker with the same id takes over its routing id
            (zmq.SNDHWM, HWM),
            (zmq.RCVHWM, HWM),
            (zmq.MAXMSGSIZE, 2 * self.max_message_bytes),  # memory guard; poll() counts sizes up to this
            (zmq.LINGER, 0),
        ):
            self._sock.setsockopt(option, value)
        self._sock.bind(f"tcp://{cfg.host}:{cfg.port or '*'}")
        self.address: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    @property
    def workers(self) -> list[int]:
        return sorted(self.last_seen)

    def outstanding(self, worker_id: int) -> int:
        return self._outstanding.get(worker_id, 0)

    def grant(self, worker_id: int, n: int) -> bool:
        """Give ``worker_id`` ``n`` more credits; False if the worker is not connected (nothing granted)."""
        if n <= 0:
            return True
        if not self._send(worker_id, {"kind": "credit", "n": n}):
            return False
        self._outstanding[worker_id] = self.outstanding(worker_id) + n
        self.counters["transport/credits_granted"] += n
        return True

    def announce_weights(self, version: int, location: str, worker_ids: list[int] | None = None) -> list[int]:
        """Tell workers a new policy version is at ``location``; workers joining later get it on hello."""
        self._latest_weights = WeightsAnnouncement(version, location)
        body = {"kind": "weights", "version": version, "location": location}
        return [w for w in (self.workers if worker_ids is None else worker_ids) if self._send(w, body)]

    def stop_workers(self, worker_ids: list[int] | None = None) -> list[int]:
        return [
            w for w in (self.workers if worker_ids is None else worker_ids) if self._send(w, {"kind": "stop"})
        ]

    def dead_workers(self, timeout_s: float) -> list[int]:
        now = time.monotonic()
        return [w for w, seen in self.last_seen.items() if now - seen > timeout_s]

    def forget(self, worker_id: int) -> None:
        """Drop a worker's liveness and credits (it said bye, or the launcher replaced it)."""
        self.last_seen.pop(worker_id, None)
        self._outstanding.pop(worker_id, None)

    def poll(self, timeout_ms: int = 0, max_messages: int = 256) -> list[ReceivedGroup]:
        """Wait up to ``timeout_ms`` for traffic, then handle what is queued (at most ``max_messages``)."""
        groups: list[ReceivedGroup] = []
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return groups
        for _ in range(max_messages):
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            identity, body = frames[0].bytes, frames[1:]
            try:
                group = self._accept(identity, body)
            except DecodeError as exc:
                self._reject(exc.reason, identity, exc.detail)
            except Exception as exc:  # a bug or an input we did not foresee must not kill the learner
                self._reject("internal", identity, f"{type(exc).__name__}: {exc}")
            else:
                if group is not None:
                    groups.append(group)
        return groups

    def state_dict(self) -> dict[str, Any]:
        weights = self._latest_weights
        return {
            "last_seq": {str(w): s for w, s in self._last_seq.items()},
            "outstanding": {str(w): n for w, n in self._outstanding.items()},
            "latest_weights": None if weights is None else [weights.version, weights.location],
            "counters": dict(self.counters),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last_seq = {int(w): int(s) for w, s in state["last_seq"].items()}
        self._outstanding = {int(w): int(n) for w, n in state["outstanding"].items()}
        weights = state.get("latest_weights")
        self._latest_weights = (
            None if weights is None else WeightsAnnouncement(int(weights[0]), str(weights[1]))
        )
        self.counters = Counter(state.get("counters", {}))

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> RolloutReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------------------- internals

    def _accept(self, identity: bytes, body: list[zmq.Frame]) -> ReceivedGroup | None:
        if len(body) not in (1, 2):
            raise DecodeError("bad_frames", f"expected 1 or 2 frames after the routing id, got {len(body)}")
        nbytes = sum(len(frame) for frame in body)
        if nbytes > self.max_message_bytes:
            raise DecodeError(
                "too_large", f"{nbytes} bytes > max_message_mb ({self.max_message_bytes} bytes)"
            )
        header = parse_header(body[0].buffer)
        if not hmac.compare_digest(header["run_token"].encode(), self._token):
            raise DecodeError("bad_token", "run token does not match")
        if header["schema_version"] != SCHEMA_VERSION:
            raise DecodeError("schema_version", f"got {header['schema_version']}, expected {SCHEMA_VERSION}")
        worker = header["worker_id"]
        if identity != worker_identity(worker):
            raise DecodeError("worker_mismatch", f"routing id {identity!r:.40} sent as worker {worker}")
        kind = header["kind"]
        if (kind == KIND_GROUP) != (len(body) == 2):
            raise DecodeError("bad_frames", f"kind '{kind:.20}' with {len(body)} frames")
        self.last_seen[worker] = time.monotonic()
        if kind == KIND_GROUP:
            return self._accept_group(worker, header, body[1], nbytes)
        if kind == KIND_HELLO:
            self._on_hello(worker, header["seq"])
        elif kind == KIND_BYE:
            self.forget(worker)
        elif kind != KIND_HEARTBEAT:
            raise DecodeError("bad_kind", f"unknown kind '{kind:.20}'")
        if "stats" in header:
            self.worker_stats[worker] = parse_stats(header["stats"])
        return None

    def stats_totals(self) -> dict[str, float]:
        """Each counter the workers report (``engine/failovers`` ...), summed over workers and their restarts."""
        total = Counter(self.retired_stats)
        for stats in self.worker_stats.values():
            total.update(stats)
        return {f"rollout/{k}": float(v) for k, v in total.items()}

    def _accept_group(
        self, worker: int, header: dict[str, Any], payload: zmq.Frame, nbytes: int
    ) -> ReceivedGroup:
        try:
            if self.outstanding(worker) <= 0:
                raise DecodeError("no_credit", f"worker {worker} sent a group without credit")
            self._outstanding[worker] -= 1  # the sender spent a credit on this group, whatever its fate
            seq, last = header["seq"], self._last_seq.get(worker)
            if last is not None and seq <= last:
                raise DecodeError("duplicate_seq", f"worker {worker} seq {seq} <= last seen {last}")
            if last is not None and seq > last + 1:
                self.counters["transport/seq_gaps"] += seq - last - 1
            self._last_seq[worker] = seq
            rows = decode_group(header, payload, vocab_size=self.vocab_size)
        finally:
            if self.auto_credit:
                self._top_up(worker)
        self.counters["transport/accepted_groups"] += 1
        self.counters["transport/accepted_rows"] += len(rows.tensordicts)
        self.counters["transport/accepted_bytes"] += nbytes
        versions = header["policy_versions"]
        return ReceivedGroup(worker, seq, rows, (versions[0], versions[1]), nbytes)

    def _on_hello(self, worker: int, seq: int) -> None:
        # A hello starts a new sender session: its sequence restarts at ``seq`` and it holds no credits yet.
        self.retired_stats.update(self.worker_stats.pop(worker, {}))
        self._last_seq[worker] = seq - 1
        self._outstanding[worker] = 0
        self.counters["transport/hellos"] += 1
        if self.auto_credit:
            self._top_up(worker)
        if self._latest_weights is not None:
            weights = self._latest_weights
            self._send(worker, {"kind": "weights", "version": weights.version, "location": weights.location})

    def _top_up(self, worker: int) -> None:
        self.grant(worker, self.credits_per_worker - self.outstanding(worker))

    def _send(self, worker: int, body: dict[str, Any]) -> bool:
        message = encode_control(self.run_token, **body)
        try:
            self._sock.send_multipart([worker_identity(worker), message], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            reason = "unroutable" if exc.errno == zmq.EHOSTUNREACH else "blocked"
            self.counters[f"transport/control_{reason}"] += 1
            self._log.warning(f"control_{reason}", f"cannot send {body['kind']} to worker {worker}: {exc}")
            return False
        return True

    def _reject(self, reason: str, identity: bytes, detail: str) -> None:
        self.counters["transport/rejected"] += 1
        self.counters[f"transport/rejected/{reason}"] += 1
        self._log.warning(reason, f"rejected a message from {identity!r:.40}: {detail:.300}")
