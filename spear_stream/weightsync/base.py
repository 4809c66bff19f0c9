"""Weight sync interface: an announcement, a publisher (learner side), a subscriber (worker side).

The learner publishes a full state dict with a policy version; the publisher returns a small JSON-serialisable
:class:`WeightAnnouncement` that the ZeroMQ transport carries to the workers; a worker hands it to its
subscriber, which fetches the tensors by whatever method the announcement names, between generation chunks.

Why our own layer rather than torchrl's weight-sync schemes (docs/design.md section 10): those take
``model.state_dict()`` (DTensor shards under FSDP2, so no FSDP support) and sync LLM engines only over
NCCL + HTTP (GPU-only). Here the learner gathers the full state dict itself and any method can carry it.
Every method bounds every wait by a timeout and raises :class:`WeightSyncError` naming the method, the
peer and what timed out: a dead or hung peer never hangs the learner or a worker silently.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

METHODS = (
    "dist",
    "disk",
    "shm",
    "sglang_disk",
    "sglang_nccl",
)  # sglang_*: the learner updates SGLang servers itself
DEFAULT_BUCKET_MB = 64


class WeightSyncError(RuntimeError):
    """A weight sync failed or timed out; the message says which method, which peer and what went wrong."""


class WeightVersionGone(WeightSyncError):
    """The announced version is no longer held by the publisher (a newer one replaced it): fetch the newer one."""

    def __init__(self, message: str, latest: int | None = None) -> None:
        super().__init__(message)
        self.latest = latest


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without the "torch." prefix, as SGLang's update endpoints expect it

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_from_name(self.dtype)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.torch_dtype.itemsize


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(dtype, torch.dtype):
        raise WeightSyncError(f"weight manifest: unknown dtype {name!r}")
    return dtype


@dataclass
class WeightAnnouncement:
    """What a worker needs to fetch one published version. ``location`` is method-specific:
    disk/shm: ``{"path", "host"}``; dist: ``{"host", "port", "token", "backend"}``."""

    version: int
    method: str
    location: dict[str, Any]
    manifest: list[TensorSpec]
    bucket_bytes: int = DEFAULT_BUCKET_MB << 20
    created_at: float = field(default_factory=time.time)

    @property
    def nbytes(self) -> int:
        return sum(spec.nbytes for spec in self.manifest)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "method": self.method,
                "location": self.location,
                # [name, shape, dtype] triples: a 7B model has ~300 entries, keep the message small
                "manifest": [[s.name, list(s.shape), s.dtype] for s in self.manifest],
                "bucket_bytes": self.bucket_bytes,
                "created_at": self.created_at,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> WeightAnnouncement:
        """Parse and type-check an announcement (it arrives over the network: reject anything malformed)."""
        try:
            raw = json.loads(text)
            manifest = [
                TensorSpec(str(name), tuple(int(d) for d in shape), str(dtype))
                for name, shape, dtype in raw["manifest"]
            ]
            ann = cls(
                version=int(raw["version"]),
                method=str(raw["method"]),
                location=dict(raw["location"]),
                manifest=manifest,
                bucket_bytes=int(raw["bucket_bytes"]),
                created_at=float(raw["created_at"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise WeightSyncError(f"malformed weight announcement: {err!r}") from err
        for spec in ann.manifest:
            spec.torch_dtype  # noqa: B018 - validates the dtype name
            if any(d < 0 for d in spec.shape):
                raise WeightSyncError(f"malformed weight announcement: negative shape for {spec.name}")
        if ann.bucket_bytes <= 0:
            raise WeightSyncError("malformed weight announcement: bucket_bytes must be positive")
        return ann


@runtime_checkable
class WeightPublisher(Protocol):
    method: str

    def publish(self, state_dict: Mapping[str, torch.Tensor], version: int) -> WeightAnnouncement:
        """Snapshot ``state_dict`` (full CPU tensors, tied weights once) as ``version`` (strictly increasing)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class WeightSubscriber(Protocol):
    method: str

    def fetch(
        self, announcement: WeightAnnouncement, timeout_s: float | None = None
    ) -> dict[str, torch.Tensor]:
        """The announced tensors, verified against the manifest; raises WeightSyncError within the timeout."""
        ...

    def close(self) -> None: ...


def make_publisher(
    method: str,
    *,
    run_dir: str | Path,
    timeout_s: float,
    host: str = "127.0.0.1",
    bucket_mb: int = DEFAULT_BUCKET_MB,
    keep_last: int = 2,
    backend: str = "gloo",
    sglang_urls: list[str] | None = None,
    model_dir: str | Path | None = None,
    port_range: list[int] | None = None,
) -> WeightPublisher:
    """The learner-side publisher for ``method`` (config ``sync.method``).

    ``run_dir``: disk writes ``run_dir/weights/v{version}/``. ``host``: the address dist announces for its
    rendezvous store and gloo pairs (must be reachable by the workers). ``keep_last``: versions kept on
    disk/shm. ``backend``: dist's collective backend, gloo (CPU tensors) or nccl (CUDA, untested here).
    ``sglang_urls``, ``model_dir``: the servers the sglang methods update, and the model whose config.json goes
    into each version directory.
    """
    bucket_bytes = int(bucket_mb) << 20
    if method == "disk":
        from spear_stream.weightsync.disk import DiskPublisher

        return DiskPublisher(Path(run_dir) / "weights", keep_last=keep_last, bucket_bytes=bucket_bytes)
    if method == "shm":
        from spear_stream.weightsync.shm import ShmPublisher

        return ShmPublisher(keep_last=keep_last, bucket_bytes=bucket_bytes)
    if method == "dist":
        from spear_stream.weightsync.dist import DistPublisher

        return DistPublisher(host=host, timeout_s=timeout_s, bucket_bytes=bucket_bytes, backend=backend)
    if method.startswith("sglang_"):
        from spear_stream.weightsync.sglang import SGLangDiskPublisher
        from spear_stream.weightsync.sglang_nccl import SGLangNCCLPublisher

        common: dict[str, Any] = {
            "model_dir": model_dir or "", "timeout_s": timeout_s, "keep_last": keep_last, "bucket_bytes": bucket_bytes
        }  # fmt: skip
        if method == "sglang_disk":
            return SGLangDiskPublisher(sglang_urls or [], Path(run_dir) / "weights", **common)
        return SGLangNCCLPublisher(
            sglang_urls or [], Path(run_dir) / "weights", host=host, port_range=port_range or [29600, 29699],
            backend=backend, **common,
        )  # fmt: skip
    raise ValueError(f"sync.method must be one of {METHODS}, got {method!r}")


def make_subscriber(method: str, *, timeout_s: float) -> WeightSubscriber:
    """The worker-side subscriber for ``method``; ``timeout_s`` bounds each fetch unless the call overrides it."""
    if method == "disk":
        from spear_stream.weightsync.disk import DiskSubscriber

        return DiskSubscriber(timeout_s=timeout_s)
    if method == "shm":
        from spear_stream.weightsync.shm import ShmSubscriber

        return ShmSubscriber(timeout_s=timeout_s)
    if method == "dist":
        from spear_stream.weightsync.dist import DistSubscriber

        return DistSubscriber(timeout_s=timeout_s)
    raise ValueError(f"sync.method must be one of {METHODS}, got {method!r}")
