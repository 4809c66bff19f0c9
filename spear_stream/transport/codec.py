"""A group of rows <-> ZeroMQ frames (``docs/design.md`` section 4).

Wire format of one group (worker -> learner; ``wire`` = :data:`WIRE_FORMAT`), ``1 + len(GROUP_FRAMES)`` frames:

* frame 0: UTF-8 JSON header ``{"schema_version", "worker_id", "seq", "kind": "group", "wire", "n_rows",
  "n_tokens", "policy_versions": [oldest, newest], "mac"}``;
* then one raw buffer per entry of :data:`GROUP_FRAMES`, each sent zero-copy from the group's own tensor: the
  four per-token fields of every row concatenated (``[n_tokens]`` each), the row offsets (``[n_rows + 1]``
  int64), and the 20 scalar fields in one ``[k, n_rows]`` block per dtype (:data:`SCALAR_BLOCKS`).

The layout is the jagged group of :mod:`spear_stream.group`; dtypes and shapes follow from the schema and the
header's two counts, so the header carries no tensor metadata and every frame's size is known before it is read.
The header (with those counts and the version range) is what the session tag covers; the buffers are bound to
the authenticated connection (``transport/auth.py``).

Why frames per field rather than one consolidated buffer (wire format 2): the sender's tensors go out as they
are (no consolidate copy), the receiver wraps each frame in one tensor (no per-leaf rebuild of tensordict
metadata), and the checks run once per group over flat fields (:func:`spear_stream.group.validate_group`). A 1 MB
group of 8 rows cost ~4 ms to receive in format 2, most of it per leaf and per row (``tools/bench_transport.py``).

Worker control messages (``hello`` / ``auth`` / ``heartbeat`` / ``bye``) are the same header without the group
keys, alone. Learner -> worker control is one JSON frame ``{"kind": "challenge" | "credit" | "weights" | "stop",
..., "mac"}``. The run token never travels: ``mac`` is the message's tag under the session key of the worker's
authenticated session (``transport/auth.py``); ``hello`` and ``challenge`` open that session and carry nonces.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

from spear_stream.group import (
    FLAT,
    OFFSETS,
    ROWS,
    SCALAR_BLOCKS,
    group_from_rows,
    group_versions,
    validate_group,
)
from spear_stream.schema import SCHEMA_VERSION, TOKEN_FIELDS, SchemaError
from spear_stream.transport import auth

KIND_GROUP = "group"
# 1: a lazy stack of whole rows; 2: one consolidated buffer, token fields lazily stacked, scalars stacked;
# 3: the jagged group, one frame per field buffer
WIRE_FORMAT = 3
KIND_AUTH = "auth"
CONTROL_FIELDS: dict[str, dict[str, type]] = {
    "challenge": {"nonce": str},
    "credit": {"n": int},
    "weights": {"version": int, "location": str},
    "stop": {},
}
_HEADER_TYPES: dict[str, type] = {
    "schema_version": int,
    "worker_id": int,
    "seq": int,
    "kind": str,
}
MAX_HEADER_BYTES = 64 << 10  # a group's header is ~300 bytes; JSON beyond this is never parsed
_GROUP_TYPES: dict[str, type] = {"n_rows": int, "n_tokens": int, "policy_versions": list}
GROUP_FRAMES: tuple[str, ...] = (*TOKEN_FIELDS, OFFSETS, *(f"scalars:{str(d)[6:]}" for d, _ in SCALAR_BLOCKS))


class DecodeError(ValueError):
    """A message is malformed; ``reason`` is a short counter-friendly tag, the message says what is wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def worker_header(kind: str, *, key: bytes | None, worker_id: int, seq: int, **fields: Any) -> dict[str, Any]:
    """The header every worker -> learner message starts with (``fields``: a group's counts; a hello's nonce; an
    auth's proof), tagged under the session ``key`` once the session is open."""
    header = {"schema_version": SCHEMA_VERSION, "worker_id": worker_id, "seq": seq, "kind": kind, **fields}
    if key is not None:
        header["mac"] = auth.tag(key, header)
    return header


_MAX_STATS = 32


def parse_stats(value: Any) -> dict[str, float]:
    """A heartbeat's ``stats``: at most 32 counters, names of ``[a-z0-9_/]`` up to 64 characters, finite >= 0."""
    if not isinstance(value, dict) or len(value) > _MAX_STATS:
        raise DecodeError("bad_header", f"header field 'stats' must be an object of <= {_MAX_STATS} counters")
    out: dict[str, float] = {}
    for key, number in value.items():
        ok_key = isinstance(key, str) and 0 < len(key) <= 64 and all(c.isalnum() or c in "_/" for c in key)
        ok_value = isinstance(number, int | float) and not isinstance(number, bool) and 0 <= number < 1e15
        if not (ok_key and ok_value):
            raise DecodeError("bad_header", f"bad stats entry {key!r:.70}: {number!r:.30}")
        out[key] = float(number)
    return out


def encode_control(key: bytes | None, kind: str, **fields: Any) -> bytes:
    """A learner -> worker control frame, tagged under the session ``key`` (only a challenge goes untagged)."""
    message = {"kind": kind, **fields}
    if key is not None:
        message["mac"] = auth.tag(key, message)
    return json.dumps(message).encode()


def parse_control(frame: bytes, key: bytes | None) -> dict[str, Any] | None:
    """A well-typed control frame with a valid tag under ``key`` (a challenge: no tag needed), else None."""
    try:
        message = json.loads(frame)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    fields = CONTROL_FIELDS.get(message.get("kind"))  # type: ignore[arg-type]
    if fields is None or any(type(message.get(k)) is not tp for k, tp in fields.items()):
        return None
    if message["kind"] != "challenge" and not auth.verify(key, message):
        return None
    return None if message["kind"] == "credit" and message["n"] <= 0 else message


def frame_sizes(n_rows: int, n_tokens: int) -> list[int]:
    """The byte size of each frame of :data:`GROUP_FRAMES` for a group of these counts."""
    tokens = [n_tokens * dtype.itemsize for dtype in TOKEN_FIELDS.values()]
    return [
        *tokens,
        8 * (n_rows + 1),
        *(len(keys) * n_rows * dtype.itemsize for dtype, keys in SCALAR_BLOCKS),
    ]


def encode_group(
    rows: Sequence[TensorDictBase] | TensorDictBase, *, key: bytes | None, worker_id: int, seq: int
) -> list[bytes | memoryview]:
    """Frames ``[header, *buffers]`` for ``send_multipart(..., copy=False)``: the buffers are views, not copies.

    ``rows``: a jagged group (:mod:`spear_stream.group`) or schema rows, which are concatenated into one first.
    """
    group = group_from_rows(rows)
    parts = dict(group.items())
    flat, columns = dict(parts[FLAT].items()), dict(parts[ROWS].items())
    buffers = [flat[k] for k in TOKEN_FIELDS]
    buffers.append(parts[OFFSETS])
    buffers += [torch.stack([columns[k] for k in keys]) for _, keys in SCALAR_BLOCKS]
    header = worker_header(
        KIND_GROUP,
        key=key,
        worker_id=worker_id,
        seq=seq,
        wire=WIRE_FORMAT,
        n_rows=parts[OFFSETS].shape[0] - 1,
        n_tokens=buffers[0].shape[0],
        policy_versions=list(group_versions(group)),
    )
    # memoryviews of the tensors' own memory (bool as uint8: the buffer protocol has no torch.bool)
    views = [(b.view(torch.uint8) if b.dtype == torch.bool else b).contiguous().numpy().data for b in buffers]
    return [json.dumps(header, separators=(",", ":")).encode(), *views]


def parse_header(frame: bytes | memoryview) -> dict[str, Any]:
    """JSON header -> dict with the common keys type-checked (and the group keys when ``kind == "group"``).

    Sizes are the caller's to bound before this parse (:data:`MAX_HEADER_BYTES`); deeply nested JSON is refused.
    A group of another wire format is refused by name (``wire_format``) before its other keys are read.
    """
    if len(frame) > MAX_HEADER_BYTES:
        raise DecodeError("too_large", f"header of {len(frame)} bytes > {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(frame))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DecodeError("bad_header", f"header is not JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise DecodeError("bad_header", f"header must be a JSON object, got {type(header).__name__}")
    is_group = header.get("kind") == KIND_GROUP
    if is_group and header.get("wire") != WIRE_FORMAT:  # a worker from another build of spear_stream
        raise DecodeError(
            "wire_format", f"group wire format {header.get('wire')!r:.20}, this learner reads {WIRE_FORMAT}"
        )
    types = {**_HEADER_TYPES, **(_GROUP_TYPES if is_group else {})}
    for key, tp in types.items():
        value = header.get(key)
        # bool is an int subclass in Python; a JSON true is never a valid count or id.
        if not isinstance(value, tp) or isinstance(value, bool):
            raise DecodeError("bad_header", f"header field '{key}' must be {tp.__name__}, got {value!r:.60}")
    if header["worker_id"] < 0 or header["seq"] < 0:
        raise DecodeError("bad_header", "header fields 'worker_id' and 'seq' must be >= 0")
    if is_group:
        versions = header["policy_versions"]
        if header["n_rows"] < 1 or header["n_tokens"] < 0:
            raise DecodeError("bad_header", "header needs n_rows >= 1 and n_tokens >= 0")
        if len(versions) != 2 or not all(type(v) is int for v in versions):
            raise DecodeError("bad_header", "header needs policy_versions = [oldest, newest]")
    return header


def decode_group(
    header: dict[str, Any],
    buffers: Sequence[Any],
    *,
    vocab_size: int | None = None,
    max_len: int | None = None,
    max_rows: int | None = None,
) -> TensorDict:
    """The jagged group of a parsed header and its buffer frames; every row is checked (``validate_group``).

    ``max_len`` / ``max_rows``: the limits the replay and learner enforce (``rollout.max_seq_len``, the replay
    capacity): a longer row or a larger group is refused here, before any tensor is built.

    ``buffers`` are anything exposing the buffer protocol (``zmq.Frame``, ``memoryview``, ``bytes``). The
    group's tensors are views into them: clone before writing in place. Raises :class:`DecodeError`.
    """
    n_rows, n_tokens = header["n_rows"], header["n_tokens"]
    if max_rows is not None and n_rows > max_rows:
        raise DecodeError("too_many_rows", f"{n_rows} rows > {max_rows} (the replay's limit)")
    if max_len is not None and n_tokens > n_rows * max_len:
        raise DecodeError("row_too_long", f"{n_tokens} tokens in {n_rows} rows of at most {max_len}")
    group = group_from_buffers(header, buffers)
    try:
        oldest, newest = validate_group(group, vocab_size=vocab_size, max_len=max_len, max_rows=max_rows)
    except SchemaError as exc:
        reason = "row_too_long" if "> max_len" in str(exc) else "bad_row"
        raise DecodeError(reason, str(exc)) from None
    if not bool((group[ROWS, "worker_id"] == header["worker_id"]).all()):
        raise DecodeError("header_mismatch", "a row's worker_id differs from the header's")
    if [oldest, newest] != header["policy_versions"]:
        raise DecodeError("header_mismatch", f"policy_versions {header['policy_versions']} do not match rows")
    return group


def group_from_buffers(header: dict[str, Any], buffers: Sequence[Any]) -> TensorDict:
    """The group's tensors as views of the buffers, after checking each buffer's size; values are not checked
    (that is :func:`decode_group`'s ``validate_group``)."""
    n_rows, n_tokens = header["n_rows"], header["n_tokens"]
    if len(buffers) != len(GROUP_FRAMES):
        raise DecodeError("bad_frames", f"a group has {len(GROUP_FRAMES)} buffers, got {len(buffers)}")
    views = [memoryview(b).cast("B") for b in buffers]
    for name, view, size in zip(GROUP_FRAMES, views, frame_sizes(n_rows, n_tokens), strict=True):
        if len(view) != size:
            raise DecodeError("bad_payload", f"buffer '{name}' has {len(view)} bytes, expected {size}")
    tensors = [_tensor(view, dtype) for view, dtype in zip(views, _FRAME_DTYPES, strict=True)]
    flat = dict(zip(TOKEN_FIELDS, tensors[: len(TOKEN_FIELDS)], strict=True))
    columns: dict[str, torch.Tensor] = {}
    for (_, keys), block in zip(SCALAR_BLOCKS, tensors[len(TOKEN_FIELDS) + 1 :], strict=True):
        columns.update(zip(keys, block.view(len(keys), n_rows).unbind(0), strict=True))
    # Built unchecked (tensordict's own checks cost ~60 us a group): every shape and dtype here follows from the
    # schema and the sizes just checked. Pinned tensordict 0.14.x; the round-trip tests cover it.
    return TensorDict._new_unsafe(
        {
            FLAT: TensorDict._new_unsafe(flat, batch_size=torch.Size([n_tokens])),
            OFFSETS: tensors[len(TOKEN_FIELDS)],
            ROWS: TensorDict._new_unsafe(columns, batch_size=torch.Size([n_rows])),
        },
        batch_size=torch.Size([]),
    )


_FRAME_DTYPES: tuple[torch.dtype, ...] = (
    *TOKEN_FIELDS.values(),
    torch.int64,
    *(dtype for dtype, _ in SCALAR_BLOCKS),
)


def _tensor(view: memoryview, dtype: torch.dtype) -> torch.Tensor:
    if view.readonly:  # torch.frombuffer wants a writable buffer; zmq frames are, so only bytes pay this copy
        view = memoryview(bytearray(view))
    if not len(view):
        return torch.empty(0, dtype=dtype)
    if dtype == torch.bool:  # bytes other than 0/1 would be bools that are neither true nor false
        raw = torch.frombuffer(view, dtype=torch.uint8)
        if int(raw.max()) > 1:
            raise DecodeError("bad_payload", "a bool buffer holds bytes other than 0 and 1")
        return raw.view(torch.bool)
    return torch.frombuffer(view, dtype=dtype)
