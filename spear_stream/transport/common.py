"""Rollout channel worker -> learner over ZeroMQ, with credit-based flow control (docs/design.md section 4).

Sockets: each worker's :class:`~spear_stream.transport.sender.RolloutSender` is a DEALER with routing id
``worker-<id>``, connected to the learner's :class:`~spear_stream.transport.receiver.RolloutReceiver`, a ROUTER
bound on ``TransportConfig.host:port``. This module holds what both ends share.

Worker -> learner: ``hello`` and ``auth`` (open a session: :mod:`spear_stream.transport.auth`; it resets the
sequence and credits), ``heartbeat``, ``bye`` and ``group``; learner -> worker: ``challenge``, ``credit``,
``weights`` (policy version + location) and ``stop``. Every message after the handshake is tagged under the
session key; the run token never travels. Message formats are in :mod:`spear_stream.transport.codec`.

Flow control: a credit lets a worker start (and send) one group. The learner grants credits (``grant``), or the
receiver keeps every known worker topped up to ``credits_per_worker`` (``auto_credit``). A worker without credit
blocks in :meth:`RolloutSender.reserve` until granted or a timeout. So in-flight groups are bounded by the credits,
and nothing is dropped by a full socket: HWMs sit above any credit count (:func:`queue_limit`), DEALER sends block
rather than drop, and the ROUTER has ``ROUTER_MANDATORY`` (an unroutable or full peer is an error, counted, never a
silent drop). The HWM also bounds what one peer can queue at the learner: ``queue_limit`` messages of at most
``max_message_mb`` each.
"""

from __future__ import annotations

from dataclasses import dataclass

KIND_HELLO, KIND_HEARTBEAT, KIND_BYE = "hello", "heartbeat", "bye"


def queue_limit(credits_per_worker: int) -> int:
    """Messages queued per peer: every credited group plus heartbeats and control, and no more."""
    return 4 * credits_per_worker + 64


def worker_identity(worker_id: int) -> bytes:
    """ZeroMQ routing id of a worker; the receiver checks it against the header's ``worker_id``."""
    return f"worker-{worker_id}".encode()


@dataclass(frozen=True)
class WeightsAnnouncement:
    version: int
    location: str
