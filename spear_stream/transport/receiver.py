"""Learner side of the rollout channel: a ROUTER that authenticates workers, validates groups, hands out credits.

Protocol, sockets and flow control: :mod:`spear_stream.transport.common`; authentication: :mod:`.auth`.

Checks, in order, before anything reaches the replay, none of which parses a large frame first:

1. the routing id must be ``worker-<id>`` (no takeover of a live id: the ROUTER refuses a second connection);
2. size: the message within ``max_message_mb`` (libzmq's ``MAXMSGSIZE`` cuts frames beyond twice that and
   disconnects the peer), the header frame within :data:`~.codec.MAX_HEADER_BYTES`; before its session is open a peer may send
   only single small frames (``hello``, ``auth``): nothing it sends is parsed beyond that;
3. header shape (types, nesting) and the worker id matching the routing id;
4. the session: ``hello`` gets a challenge, ``auth`` must prove the run token, and every later message must
   carry a valid tag under the session key;
5. groups: a credit, a sequence number above the last accepted one and within the credits granted, then the
   decode with per-row schema validation, the replay's limits (``max_len``, ``max_rows``) included.

A rejected message is counted (``transport/rejected`` and ``transport/rejected/<reason>``), logged (rate-limited)
and dropped; the sequence number advances only when a group is accepted. :meth:`RolloutReceiver.poll` never
raises because of what a peer sent; an unexpected exception is counted as ``internal`` and logged with its
traceback (a bug: the tests fail on any).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

import zmq
from tensordict import TensorDict

from spear_stream.config import TransportConfig
from spear_stream.schema import SCHEMA_VERSION
from spear_stream.transport import auth
from spear_stream.transport.codec import (
    GROUP_FRAMES,
    KIND_AUTH,
    KIND_GROUP,
    MAX_HEADER_BYTES,
    DecodeError,
    decode_group,
    encode_control,
    parse_header,
    parse_stats,
)
from spear_stream.transport.common import (
    KIND_BYE,
    KIND_HEARTBEAT,
    KIND_HELLO,
    WeightsAnnouncement,
    queue_limit,
    worker_identity,
)

_LOG = logging.getLogger(__name__)
_IDENTITY = re.compile(rb"worker-(\d{1,9})")
_PRE_AUTH_BYTES = 4096  # what a peer may send before its session is open: one small hello or auth frame
_PENDING = 1024  # challenges awaiting an answer (oldest dropped first: a flood of hellos cannot grow memory)


@dataclass(frozen=True)
class ReceivedGroup:
    worker_id: int
    seq: int
    group: (
        TensorDict  # the jagged group (spear_stream/group.py), views into the received frames: clone to write
    )
    policy_versions: tuple[int, int]  # (oldest, newest) token version
    nbytes: int


class _RateLimitedLog:
    """At most one warning per reason every ``every_s`` seconds, reporting how many were suppressed."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, reason: str, message: str, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -float("inf")) < self.every_s:
            self._suppressed[reason] += 1
            return
        extra = f" ({self._suppressed.pop(reason)} more suppressed)" if self._suppressed[reason] else ""
        self._last[reason] = now
        _LOG.warning("transport (%s): %s%s", reason, message, extra, exc_info=exc_info)


class RolloutReceiver:
    """Learner side: a ROUTER that authenticates workers and validates incoming groups. Single-threaded; poll it."""

    def __init__(
        self,
        cfg: TransportConfig,
        *,
        auto_credit: bool = True,
        vocab_size: int | None = None,
        max_len: int | None = None,
        max_rows: int | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.run_token = cfg.run_token or secrets.token_hex(16)
        self._token = self.run_token.encode()
        self.credits_per_worker = cfg.credits_per_worker
        self.max_message_bytes = int(cfg.max_message_mb * 2**20)
        self.auto_credit = auto_credit
        self.vocab_size, self.max_len, self.max_rows = vocab_size, max_len, max_rows
        self.counters: Counter[str] = Counter()
        self.last_seen: dict[int, float] = {}  # authenticated, live workers: time of their last message
        self.worker_stats: dict[int, dict[str, float]] = {}  # the newest counters each worker reported
        self.retired_stats: Counter[str] = Counter()  # counters of earlier sessions (restarted workers)
        self._sessions: dict[int, bytes] = {}  # worker -> session key (kept after forget(): its groups drain)
        self._pending: OrderedDict[int, tuple[str, str]] = OrderedDict()  # worker -> (client, server) nonce
        self._last_seq: dict[int, int] = {}
        self._outstanding: dict[int, int] = {}  # granted credits not yet used by a received group
        self._latest_weights: WeightsAnnouncement | None = None
        self._log = _RateLimitedLog()
        self._sock = (context or zmq.Context.instance()).socket(zmq.ROUTER)
        queue = queue_limit(cfg.credits_per_worker)
        for option, value in (
            (zmq.ROUTER_MANDATORY, 1),  # no ROUTER_HANDOVER: a connection cannot take over a live worker's id
            (zmq.SNDHWM, queue),
            (zmq.RCVHWM, queue),  # per peer: at most this many messages queued, each within MAXMSGSIZE
            (zmq.MAXMSGSIZE, 2 * self.max_message_bytes),  # up to 2x is counted as too_large; beyond, cut
            (zmq.LINGER, 0),
        ):
            self._sock.setsockopt(option, value)
        self.curve_public_key = _setup_curve(self._sock) if cfg.curve else None
        self._sock.bind(f"tcp://{cfg.host}:{cfg.port or '*'}")
        self.address: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    # -------------------------------------------------------------------------------------------- credits
    @property
    def workers(self) -> list[int]:
        return sorted(self.last_seen)

    def outstanding(self, worker_id: int) -> int:
        return self._outstanding.get(worker_id, 0)

    def grant(self, worker_id: int, n: int) -> bool:
        """Give ``worker_id`` ``n`` more credits; False if it has no open session or is gone (nothing granted)."""
        if n <= 0:
            return True
        if worker_id not in self.last_seen or not self._send(worker_id, {"kind": "credit", "n": n}):
            return False
        self._outstanding[worker_id] = self.outstanding(worker_id) + n
        self.counters["transport/credits_granted"] += n
        return True

    def announce_weights(self, version: int, location: str, worker_ids: list[int] | None = None) -> list[int]:
        """Tell workers a new policy version is at ``location``; workers joining later get it once authenticated."""
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
        """A worker said bye or was replaced: no more credits for it. Groups it delivered before are still
        accepted (its session and credits stay until a new session of that worker id starts)."""
        self.last_seen.pop(worker_id, None)

    # -------------------------------------------------------------------------------------------- receiving
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
                self._reject("internal", identity, f"{type(exc).__name__}: {exc}", exc_info=True)
            else:
                if group is not None:
                    groups.append(group)
        return groups

    def _accept(self, identity: bytes, body: list[zmq.Frame]) -> ReceivedGroup | None:
        match = _IDENTITY.fullmatch(identity)
        if match is None:
            raise DecodeError("bad_identity", "routing id is not worker-<id>")
        worker = int(match.group(1))
        nbytes = sum(len(frame) for frame in body)
        key = self._sessions.get(worker)
        if key is None and (len(body) != 1 or nbytes > _PRE_AUTH_BYTES):
            raise DecodeError(
                "unauthenticated", f"{len(body)} frames, {nbytes} bytes before the session opened"
            )
        if len(body) not in (1, 1 + len(GROUP_FRAMES)):
            raise DecodeError("bad_frames", f"{len(body)} frames after the routing id")
        if nbytes > self.max_message_bytes:
            raise DecodeError(
                "too_large", f"{nbytes} bytes > max_message_mb ({self.max_message_bytes} bytes)"
            )
        if len(body[0]) > MAX_HEADER_BYTES:
            raise DecodeError("too_large", f"header of {len(body[0])} bytes")
        header = parse_header(body[0].buffer)
        if header["schema_version"] != SCHEMA_VERSION:
            raise DecodeError("schema_version", f"got {header['schema_version']}, expected {SCHEMA_VERSION}")
        if header["worker_id"] != worker:
            raise DecodeError(
                "worker_mismatch", f"routing id {identity!r:.40} sent as worker {header['worker_id']}"
            )
        kind = header["kind"]
        if kind in (KIND_HELLO, KIND_AUTH):
            (self._on_hello if kind == KIND_HELLO else self._on_auth)(worker, header)
            return None
        if not auth.verify(key, header):
            raise DecodeError("bad_mac", f"{kind:.20} from worker {worker} without a valid session tag")
        if (kind == KIND_GROUP) != (len(body) > 1):
            raise DecodeError("bad_frames", f"kind '{kind:.20}' with {len(body)} frames")
        if kind == KIND_GROUP:
            if worker in self.last_seen:
                self.last_seen[worker] = time.monotonic()
            return self._accept_group(worker, header, body[1:], nbytes)
        if kind == KIND_BYE:
            self.forget(worker)
        elif kind != KIND_HEARTBEAT:
            raise DecodeError("bad_kind", f"unknown kind '{kind:.20}'")
        else:
            if "stats" in header:
                self.worker_stats[worker] = parse_stats(header["stats"])
            self.last_seen[worker] = time.monotonic()
            self.counters["transport/heartbeats"] += 1
        return None

    def _accept_group(
        self, worker: int, header: dict[str, Any], buffers: list[zmq.Frame], nbytes: int
    ) -> ReceivedGroup:
        if self.outstanding(worker) <= 0:
            raise DecodeError("no_credit", f"worker {worker} sent a group without credit")
        seq, last = header["seq"], self._last_seq.get(worker, -1)
        if seq <= last:
            raise DecodeError("duplicate_seq", f"worker {worker} seq {seq} <= last accepted {last}")
        if seq > last + self.outstanding(worker) + self.counters["transport/rejected"] + 1:
            # a sender numbers its groups 0, 1, 2...: it cannot skip more than the groups it sent us
            raise DecodeError("seq_jump", f"worker {worker} seq {seq} after {last}")
        try:
            group = decode_group(
                header, buffers, vocab_size=self.vocab_size, max_len=self.max_len, max_rows=self.max_rows
            )
        finally:
            self._outstanding[worker] -= 1  # the sender spent a credit on this group, whatever its fate
            if self.auto_credit and worker in self.last_seen:
                self._top_up(worker)
        if seq > last + 1:
            self.counters["transport/seq_gaps"] += seq - last - 1
        self._last_seq[worker] = seq
        self.counters["transport/accepted_groups"] += 1
        self.counters["transport/accepted_rows"] += header["n_rows"]
        self.counters["transport/accepted_bytes"] += nbytes
        versions = header["policy_versions"]
        return ReceivedGroup(worker, seq, group, (versions[0], versions[1]), nbytes)

    # -------------------------------------------------------------------------------------------- sessions
    def _on_hello(self, worker: int, header: dict[str, Any]) -> None:
        client_nonce = header.get("nonce")
        if not isinstance(client_nonce, str) or not 16 <= len(client_nonce) <= 64:
            raise DecodeError("bad_header", "hello needs a nonce")
        server_nonce = auth.nonce()
        self._pending[worker] = (client_nonce, server_nonce)
        self._pending.move_to_end(worker)
        while len(self._pending) > _PENDING:
            self._pending.popitem(last=False)
        self.counters["transport/hellos"] += 1
        self._send(worker, {"kind": "challenge", "nonce": server_nonce}, key=None)

    def _on_auth(self, worker: int, header: dict[str, Any]) -> None:
        nonces = self._pending.pop(worker, None)
        proof = header.get("proof")
        if nonces is None or not isinstance(proof, str):
            raise DecodeError("bad_auth", f"auth from worker {worker} without a pending challenge")
        if not auth.hmac.compare_digest(proof, auth.proof(self._token, worker, *nonces)):
            raise DecodeError("bad_auth", f"worker {worker} failed the challenge (wrong run token?)")
        # A new session of this worker id: what an earlier one reported is history, its credits are void.
        self._sessions[worker] = auth.session_key(self._token, worker, *nonces)
        self.retired_stats.update(self.worker_stats.pop(worker, {}))
        self._last_seq[worker] = header["seq"] - 1
        self._outstanding[worker] = 0
        self.last_seen[worker] = time.monotonic()
        self.counters["transport/sessions"] += 1
        if self.auto_credit:
            self._top_up(worker)
        if self._latest_weights is not None:
            weights = self._latest_weights
            self._send(worker, {"kind": "weights", "version": weights.version, "location": weights.location})

    # -------------------------------------------------------------------------------------------- sending
    def _top_up(self, worker: int) -> None:
        self.grant(worker, self.credits_per_worker - self.outstanding(worker))

    def _send(self, worker: int, body: dict[str, Any], key: bytes | bool | None = True) -> bool:
        session = self._sessions.get(worker) if key is True else None
        if key is True and session is None:
            return False  # nothing goes to a peer without an open session but its challenge
        message = encode_control(session, **body)
        try:
            self._sock.send_multipart([worker_identity(worker), message], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            reason = "unroutable" if exc.errno == zmq.EHOSTUNREACH else "blocked"
            self.counters[f"transport/control_{reason}"] += 1
            self._log.warning(f"control_{reason}", f"cannot send {body['kind']} to worker {worker}: {exc}")
            return False
        return True

    def _reject(self, reason: str, identity: bytes, detail: str, exc_info: bool = False) -> None:
        self.counters["transport/rejected"] += 1
        self.counters[f"transport/rejected/{reason}"] += 1
        self._log.warning(
            reason, f"rejected a message from {identity!r:.40}: {detail:.300}", exc_info=exc_info
        )

    # -------------------------------------------------------------------------------------------- state
    def stats_totals(self) -> dict[str, float]:
        """Each counter the workers report (``engine/failovers`` ...), summed over workers and their restarts."""
        total = Counter(self.retired_stats)
        for stats in self.worker_stats.values():
            total.update(stats)
        return {f"rollout/{k}": float(v) for k, v in total.items()}

    def state_dict(self) -> dict[str, Any]:
        """Counters and the latest announcement; sessions are not saved (workers authenticate again)."""
        weights = self._latest_weights
        return {
            "latest_weights": None if weights is None else [weights.version, weights.location],
            "counters": dict(self.counters),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
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


def _setup_curve(sock: zmq.Socket) -> str:
    """CURVE server keys for this socket (``transport.curve``); returns the public key workers must be given."""
    if not zmq.has("curve"):
        raise RuntimeError("transport.curve: this libzmq build has no CURVE support")
    public, secret = zmq.curve_keypair()
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return public.decode()
