"""``dist`` method: a torch.distributed broadcast (gloo on CPU, NCCL on GPU) in groups of its own.

Design: one short-lived 2-party group per fetch (publisher rank 0, subscriber rank 1), served by a background
thread of the publisher. Chosen over one group of all workers per "membership epoch" because:

* a worker that joins late, is replaced or restarts needs no re-forming of anybody else's group: each fetch
  is its own rendezvous (~5 ms for a 2-rank gloo group, measured; tiny next to the transfer);
* a subscriber that dies mid-transfer fails only its own session, after the group timeout, and the publisher
  records a WeightSyncError and carries on; one that never shows up costs nothing, because the publisher
  only reacts to requests (no collective waits for a missing member);
* ``publish()`` only snapshots the weights into flat buckets (one memcpy on the caller's thread, needed
  anyway since the learner mutates its tensors right after) and returns; transfers run in session threads.
  With gloo the payload goes root-to-each-peer anyway, so pairs cost no bandwidth over a shared group. NCCL
  would ring a shared group; the ``sglang`` method will build that group over HTTP instead.

Rendezvous is a c10d TCPStore hosted by the publisher (free port, announced). A subscriber pushes a hello
{session, version, token, peer} onto the store queue ``hellos`` (one atomic op: a subscriber dying half-way
through registering cannot wedge the accept loop); the publisher's accept thread pops it, a session thread
answers ``resp/{session}`` and both sides build the pair group under the prefix ``session/{session}`` and
broadcast the buckets as uint8. The publisher keeps only the newest ``keep_versions`` snapshots; a
request for an older one gets WeightVersionGone. Each thread opens its own store client, because a blocking
c10d store call holds that client's lock (group construction blocks on it until the peer arrives).

GIL: store calls and ``work.wait()`` release the GIL, so session threads hold it only for microseconds of
Python between C++ calls; the learner's step competes with them for CPU (gloo's socket copies), not the GIL.

Why not torchrl's ``DistributedWeightSyncScheme``: it calls ``init_process_group(world_size=num_workers + 1)``,
i.e. the default group with a membership fixed at start, which neither survives a replaced worker nor
coexists with the learner's own torchrun group. Groups here are built from ``ProcessGroupGloo(PrefixStore,
rank, size, _Options)`` outside ``init_process_group``, as torch's ``_new_process_group_helper`` does (private
``_Options``, pinned torch; the unit tests guard it). The TCPStore listens on all interfaces and is unauthenticated: bind the learner on a
trusted network; the per-publisher token only rejects stale announcements.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch.distributed import PrefixStore, ProcessGroupGloo, TCPStore

from spear_stream.weightsync.base import (
    DEFAULT_BUCKET_MB,
    WeightAnnouncement,
    WeightSyncError,
    WeightVersionGone,
)
from spear_stream.weightsync.buckets import (
    Bucket,
    empty_buffers,
    flatten,
    in_manifest_order,
    plan_buckets,
    prepare_state_dict,
    unflatten,
)
from spear_stream.weightsync.disk import check_method

HELLOS = "hellos"  # TCPStore queue of subscriber requests


def _pair_group(
    store: Any, session: str, rank: int, timeout: timedelta, backend: str, local_host: str
) -> Any:
    prefixed = PrefixStore(f"session/{session}", store)
    if backend == "gloo":
        options = ProcessGroupGloo._Options()  # type: ignore[attr-defined]  # private, missing from the stubs
        options._timeout = timeout
        wildcard = local_host in ("", "0.0.0.0", "::")
        device = (
            ProcessGroupGloo.create_default_device()
            if wildcard
            else ProcessGroupGloo.create_device(hostname=local_host)
        )
        options._devices = [device]
        return ProcessGroupGloo(prefixed, rank, 2, options)
    if backend == "nccl":
        # Not exercised here (no GPU): the same pair protocol, buffers on the current CUDA device.
        from torch.distributed import ProcessGroupNCCL

        options = ProcessGroupNCCL.Options()
        options._timeout = timeout
        return ProcessGroupNCCL(prefixed, rank, 2, options)
    raise ValueError(f"dist weight sync: backend must be gloo or nccl, got {backend!r}")


def _forget_session_keys(store: Any, session: str) -> None:
    """Best effort: the keys a 2-rank group leaves in the store (else they accumulate over a long run)."""
    for key in (f"session/{session}/0/0", f"session/{session}/0/1"):
        with contextlib.suppress(Exception):
            store.delete_key(key)


def _local_address_towards(host: str) -> str:
    """This machine's address on the route to ``host`` (what the publisher's gloo pair must connect to)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))  # UDP connect sends nothing; it only selects the route
            return probe.getsockname()[0]
    except OSError:
        return ""


def _device(backend: str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


@dataclass(frozen=True)
class Transfer:
    version: int
    peer: str
    seconds: float
    nbytes: int


@dataclass(frozen=True)
class _Snapshot:
    version: int
    buckets: list[Bucket]
    buffers: list[torch.Tensor]


class DistPublisher:
    method = "dist"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout_s: float = 120.0,
        bucket_bytes: int = DEFAULT_BUCKET_MB << 20,
        backend: str = "gloo",
        keep_versions: int = 1,
    ) -> None:
        self.host, self.timeout_s, self.bucket_bytes = host, timeout_s, bucket_bytes
        self.backend, self.keep_versions = backend, max(1, keep_versions)
        self._timeout = timedelta(seconds=timeout_s)
        self._store: Any = None
        try:  # port 0: the OS picks a free port, no race between choosing and binding it
            self._store = TCPStore(host, port, None, True, self._timeout, wait_for_workers=False)
        except Exception as err:
            raise WeightSyncError(
                f"dist publisher: cannot host its rendezvous store on {host}:{port}: {err}"
            ) from err
        self.port = self._store.port
        self.token = secrets.token_hex(8)
        self._close_sentinel = f"close:{self.token}".encode()
        self._lock = threading.Lock()
        self._snapshots: dict[int, _Snapshot] = {}
        self._errors: list[WeightSyncError] = []
        self._delivered: dict[int, int] = {}
        self.transfers: deque[Transfer] = deque(maxlen=1000)
        self._closing = threading.Event()
        self._delivery = threading.Condition(self._lock)
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="weightsync-dist-accept", daemon=True
        )
        self._acceptor.start()

    @property
    def where(self) -> str:
        return f"dist publisher {self.host}:{self.port}"

    # ----------------------------------------------------------------------------------------- learner API

    def publish(self, state_dict: Mapping[str, torch.Tensor], version: int) -> WeightAnnouncement:
        if not self._acceptor.is_alive():
            raise WeightSyncError(f"{self.where}: its accept thread has stopped (closed or crashed)")
        latest = self.latest_version
        if latest is not None and version <= latest:
            raise ValueError(f"dist publish: version {version} must exceed the last one ({latest})")
        tensors, manifest = prepare_state_dict(state_dict)
        buckets = plan_buckets(manifest, self.bucket_bytes)
        snapshot = _Snapshot(version, buckets, flatten(tensors, buckets, _device(self.backend)))
        with self._lock:
            self._snapshots[version] = snapshot
            for old in sorted(self._snapshots)[: -self.keep_versions]:
                del self._snapshots[old]  # sessions already serving it keep their reference
        location = {"host": self.host, "port": self.port, "token": self.token, "backend": self.backend}
        return WeightAnnouncement(version, self.method, location, manifest, self.bucket_bytes)

    @property
    def latest_version(self) -> int | None:
        with self._lock:
            return max(self._snapshots) if self._snapshots else None

    def errors(self) -> list[WeightSyncError]:
        """Failed sessions since the last call (each names the peer and what failed); the caller logs them."""
        with self._lock:
            drained, self._errors = self._errors, []
        return drained

    def delivered(self, version: int) -> int:
        with self._lock:
            return self._delivered.get(version, 0)

    def wait_delivered(self, version: int, count: int, timeout_s: float | None = None) -> None:
        """Block until ``count`` subscribers received ``version`` (the ``sync`` mode's barrier)."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        with self._delivery:
            while self._delivered.get(version, 0) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = self._delivered.get(version, 0)
                    recent = "; ".join(str(e) for e in self._errors[-3:]) or "none"
                    raise WeightSyncError(
                        f"{self.where}: only {got}/{count} subscribers received v{version} before the timeout; "
                        f"recent errors: {recent}"
                    )
                self._delivery.wait(remaining)

    def close(self) -> None:
        """Stop accepting and free the port; transfers in flight finish or fail on their own timeout (their
        groups no longer need the store) in daemon threads. Idempotent."""
        if self._store is None:
            return
        self._closing.set()
        with contextlib.suppress(Exception):
            self._store.queue_push(HELLOS, self._close_sentinel)
        self._acceptor.join(timeout=5.0)
        with self._lock:
            self._snapshots.clear()
        self._store = None  # the last reference: stops the store's server, new requests fail to connect

    # ----------------------------------------------------------------------------------------- background

    def _client(self) -> Any:
        return TCPStore(self.host, self.port, None, False, self._timeout)

    def _record_error(self, message: str) -> None:
        with self._lock:
            self._errors.append(WeightSyncError(message))
            del self._errors[:-100]  # a learner that never drains them must not grow without bound

    def _accept_loop(self) -> None:
        # Blocks in queue_pop until a hello or close()'s sentinel arrives: no polling, and a day-long client
        # timeout so an idle publisher does not log c10d timeout warnings.
        store = TCPStore(self.host, self.port, None, False, timedelta(days=1))
        while not self._closing.is_set():
            try:
                hello = store.queue_pop(HELLOS)
            except Exception as err:
                if not self._closing.is_set():
                    self._record_error(f"{self.where}: waiting for requests failed: {err}")
                    time.sleep(1.0)  # store trouble: do not spin
                continue
            if hello == self._close_sentinel or self._closing.is_set():
                return
            threading.Thread(
                target=self._serve, args=(hello,), name="weightsync-dist-session", daemon=True
            ).start()

    def _serve(self, hello_raw: bytes) -> None:
        start = time.monotonic()
        try:
            hello = json.loads(hello_raw)
            session, version, peer = str(hello["session"]), int(hello["version"]), str(hello["peer"])
            token = str(hello["token"])
        except (ValueError, KeyError, TypeError) as err:
            self._record_error(f"{self.where}: malformed hello {hello_raw[:200]!r}: {err!r}")
            return
        store = group = None
        try:
            store = self._client()
            with self._lock:
                snapshot = self._snapshots.get(version)
                latest = max(self._snapshots) if self._snapshots else None
            if token != self.token:
                store.set(f"resp/{session}", json.dumps({"status": "bad_token"}))
                return
            if snapshot is None:
                store.set(f"resp/{session}", json.dumps({"status": "gone", "latest": latest}))
                return
            store.set(f"resp/{session}", json.dumps({"status": "ok"}))
            group = _pair_group(store, session, 0, self._timeout, self.backend, self.host)
            for buffer in snapshot.buffers:
                group.broadcast([buffer.view(torch.uint8)]).wait(self._timeout)
            nbytes = sum(b.nbytes for b in snapshot.buckets)
            with self._delivery:
                self._delivered[version] = self._delivered.get(version, 0) + 1
                self.transfers.append(Transfer(version, peer, time.monotonic() - start, nbytes))
                self._delivery.notify_all()
        except Exception as err:
            self._record_error(
                f"{self.where}: subscriber {peer} failed to receive v{version} after "
                f"{time.monotonic() - start:.1f}s (timeout {self.timeout_s:g}s); skipped it: {err}"
            )
        finally:
            if store is not None:
                _forget_session_keys(store, session)
            del group


class _Deadline:
    """One deadline for a whole fetch; each stage's failure or timeout becomes a WeightSyncError naming it."""

    def __init__(self, at: float, where: str) -> None:
        self.at, self.where, self.current = at, where, ""
        self.started = time.monotonic()

    def left(self) -> timedelta:
        left = self.at - time.monotonic()
        if left <= 0:
            raise WeightSyncError(f"{self.where}: timed out {self.current}")
        return timedelta(seconds=left)

    @contextlib.contextmanager
    def stage(self, what: str) -> Iterator[None]:
        self.current = what
        self.left()
        try:
            yield
        except WeightSyncError:
            raise
        except Exception as err:
            elapsed = time.monotonic() - self.started
            raise WeightSyncError(f"{self.where}: failed {what} after {elapsed:.1f}s: {err}") from err


class DistSubscriber:
    method = "dist"

    def __init__(self, *, timeout_s: float, peer: str | None = None) -> None:
        self.timeout_s = timeout_s
        self.peer = peer or f"{socket.gethostname()}:{os.getpid()}"
        self._store: Any = None  # kept across fetches from the same publisher (saves a connect per sync)
        self._store_key: tuple[str, int, str] | None = None

    def fetch(
        self, announcement: WeightAnnouncement, timeout_s: float | None = None
    ) -> dict[str, torch.Tensor]:
        check_method(announcement, self.method)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        loc = announcement.location
        host, port, backend = str(loc["host"]), int(loc["port"]), str(loc.get("backend", "gloo"))
        where = f"dist subscriber {self.peer} <- publisher {host}:{port} (v{announcement.version}, timeout {timeout:g}s)"
        deadline = _Deadline(time.monotonic() + timeout, where)
        try:
            store = self._connect(host, port, str(loc.get("token")), deadline)
            session = self._request(store, announcement, deadline)
            buckets = plan_buckets(announcement.manifest, announcement.bucket_bytes)
            buffers = empty_buffers(buckets, _device(backend))
            with deadline.stage("joining the pair group"):
                group = _pair_group(store, session, 1, deadline.left(), backend, _local_address_towards(host))
            for i, buffer in enumerate(buffers):
                with deadline.stage(f"receiving bucket {i + 1}/{len(buffers)} (publisher died or hung?)"):
                    group.broadcast([buffer.view(torch.uint8)]).wait(deadline.left())
        except WeightVersionGone:
            raise
        except WeightSyncError:
            self.close()  # the next fetch reconnects from scratch
            raise
        return in_manifest_order(unflatten(buffers, buckets), announcement.manifest)

    def _connect(self, host: str, port: int, token: str, deadline: _Deadline) -> Any:
        if self._store is None or self._store_key != (host, port, token):
            with deadline.stage("connecting to the publisher's store (is the learner up?)"):
                # c10d's client retries a refused connect after a randomised back-off that can outlast the
                # deadline (4.6 s for a 1.5 s timeout, seen in CI); a plain TCP connect is refused at once
                socket.create_connection((host, port), timeout=deadline.left().total_seconds()).close()
                self._store = TCPStore(host, port, None, False, deadline.left())
            self._store_key = (host, port, token)
        return self._store

    def _request(self, store: Any, announcement: WeightAnnouncement, deadline: _Deadline) -> str:
        """Ask for the announced version; the session id on success, else WeightVersionGone/WeightSyncError."""
        session = secrets.token_hex(8)
        token = announcement.location.get("token")
        hello = {"session": session, "version": announcement.version, "token": token, "peer": self.peer}
        with deadline.stage("waiting for the publisher to answer (publisher busy or gone?)"):
            store.queue_push(HELLOS, json.dumps(hello))
            store.wait([f"resp/{session}"], deadline.left())
            response = json.loads(store.get(f"resp/{session}"))
            store.delete_key(f"resp/{session}")
        status = response.get("status")
        if status == "gone":
            latest = response.get("latest")
            held = (
                f"only v{latest}; fetch that announcement" if latest is not None else "no version (closed?)"
            )
            raise WeightVersionGone(f"{deadline.where}: the publisher holds {held}", latest)
        if status != "ok":
            raise WeightSyncError(
                f"{deadline.where}: publisher refused the request ({status}); stale announcement?"
            )
        return session

    def close(self) -> None:
        self._store, self._store_key = None, None
