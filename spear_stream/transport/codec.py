"""A group of rows <-> ZeroMQ frames (docs/design.md section 4, docs/design.md section 10).

Wire format of one group (worker -> learner), two frames:

* frame 0: UTF-8 JSON header ``{"schema_version", "worker_id", "seq", "kind": "group", "wire", "n_rows",
  "policy_versions": [oldest, newest], "meta": <consolidated tensordict metadata>, "mac"}``;
* frame 1: the raw ``uint8`` buffer of the group's consolidated TensorDict (below), sent zero-copy.

Worker control messages (``hello`` / ``auth`` / ``heartbeat`` / ``bye``) are the same header without the group
keys, alone. Learner -> worker control is one JSON frame ``{"kind": "challenge" | "credit" | "weights" | "stop",
..., "mac"}``. The run token never travels: ``mac`` is the message's tag under the session key of the worker's
authenticated session (``transport/auth.py``); ``hello`` and ``challenge`` open that session and carry nonces.

Layout (``wire`` = :data:`WIRE_FORMAT`): a ``TensorDict`` of batch ``[n_rows]`` whose ``"tokens"`` entry is a lazy
stack of the rows' four per-token fields (ragged rows round-trip bit-exactly) and whose other entries are the 20
scalar fields stacked into ``[n_rows]`` tensors. Why columnar scalars: tensordict's consolidate and rebuild cost
tens of microseconds per leaf, and a row has 20 scalars against 4 token fields; one leaf per scalar field instead of
one per row and field made a 1 MB group of 8 rows 5x cheaper to encode (tools/bench_transport.py). The receiver
rebuilds the rows as views into the received frame (no copy).

tensordict has no public "rebuild from (metadata, buffer)" call: :func:`rebuild_consolidated` wraps the private
one (pinned by ``tensordict>=0.14.3,<0.15``; ``tests/unit/test_transport.py`` guards it with a round trip). The
metadata is untrusted input, so :func:`_check_meta` restricts its shape before the private function sees it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import LazyStackedTensorDict, TensorDict, TensorDictBase, lazy_stack

from spear_stream.schema import (
    ALL_FIELDS,
    SCALAR_FIELDS,
    SCHEMA_VERSION,
    TOKEN_FIELDS,
    SchemaError,
    validate_row,
)
from spear_stream.transport import auth

KIND_GROUP = "group"
WIRE_FORMAT = 2  # 1: a lazy stack of whole rows; 2: token fields lazily stacked, scalar fields stacked
_TOKENS = "tokens"  # the wire TensorDict's entry holding the lazy stack of per-token fields
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
MAX_HEADER_BYTES = (
    4 << 20
)  # a group's header (tensordict metadata) is a few kB; JSON beyond this is never parsed
_GROUP_TYPES: dict[str, type] = {"wire": int, "n_rows": int, "policy_versions": list, "meta": dict}
_TD_META_KEYS = {"cls", "non_tensors", "leaves", "cls_metadata"}
_ALLOWED_DTYPES = {str(dtype) for dtype in ALL_FIELDS.values()}


class DecodeError(ValueError):
    """A message is malformed; ``reason`` is a short counter-friendly tag, the message says what is wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def as_row_stack(rows: Sequence[TensorDictBase] | TensorDictBase) -> LazyStackedTensorDict:
    """A list of rows, a lazy stack or a dense ``[N]`` TensorDict (equal lengths) -> lazy stack of ``[]`` rows."""
    if isinstance(rows, LazyStackedTensorDict) and rows.stack_dim == 0 and rows.batch_dims == 1:
        return rows
    items = list(rows.unbind(0)) if isinstance(rows, TensorDictBase) else list(rows)
    if not items:
        raise ValueError("a group needs at least one row")
    return lazy_stack(items)


def group_versions(rows: LazyStackedTensorDict) -> tuple[int, int]:
    """``(oldest, newest)`` policy version of a group's generated tokens (staleness uses the oldest)."""
    oldest = min(int(row["policy_version"]) for row in rows.tensordicts)
    newest = max(max(int(row["policy_version"]), int(row["token_version"].max())) for row in rows.tensordicts)
    return oldest, newest


def worker_header(kind: str, *, key: bytes | None, worker_id: int, seq: int, **fields: Any) -> dict[str, Any]:
    """The header every worker -> learner message starts with (``fields``: a group's n_rows, meta ...; a hello's
    nonce; an auth's proof), tagged under the session ``key`` once the session is open."""
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


def to_wire(rows: LazyStackedTensorDict) -> TensorDict:
    """The columnar group TensorDict that travels (module docstring); shares the rows' token tensors."""
    items = rows.tensordicts
    scalars = {key: torch.stack([row.get(key) for row in items]) for key in SCALAR_FIELDS}
    tokens = lazy_stack([row.select(*TOKEN_FIELDS) for row in items])
    return TensorDict({_TOKENS: tokens, **scalars}, batch_size=[len(items)])


def from_wire(wire: TensorDictBase) -> LazyStackedTensorDict:
    """Inverse of :func:`to_wire`: a lazy stack of schema rows, every field a view into ``wire``."""
    columns = {key: wire.get(key) for key in SCALAR_FIELDS}
    token_rows = wire.get(_TOKENS).tensordicts
    return lazy_stack(
        [
            TensorDict({**dict(tok.items()), **{k: v[i] for k, v in columns.items()}}, batch_size=[])
            for i, tok in enumerate(token_rows)
        ]
    )


def encode_group(
    rows: Sequence[TensorDictBase] | TensorDictBase, *, key: bytes | None, worker_id: int, seq: int
) -> list[bytes | memoryview]:
    """Frames ``[header, buffer]`` for ``send_multipart(..., copy=False)``; the buffer is a view, not a copy."""
    stack = as_row_stack(rows)
    consolidated = to_wire(stack).consolidate(metadata=True)
    header = worker_header(
        KIND_GROUP,
        key=key,
        worker_id=worker_id,
        seq=seq,
        wire=WIRE_FORMAT,
        n_rows=len(stack.tensordicts),
        policy_versions=list(group_versions(stack)),
        meta=consolidated._consolidated["metadata"],
    )
    storage: torch.Tensor = consolidated._consolidated["storage"]
    return [
        json.dumps(header, separators=(",", ":")).encode(),
        storage.numpy().data,
    ]  # a zero-copy memoryview of the buffer


def parse_header(frame: bytes | memoryview) -> dict[str, Any]:
    """JSON header -> dict with the common keys type-checked (and the group keys when ``kind == "group"``).

    Sizes are the caller's to bound before this parse (:data:`MAX_HEADER_BYTES`); deeply nested JSON is refused.
    """
    if len(frame) > MAX_HEADER_BYTES:
        raise DecodeError("too_large", f"header of {len(frame)} bytes > {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(frame))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DecodeError("bad_header", f"header is not JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise DecodeError("bad_header", f"header must be a JSON object, got {type(header).__name__}")
    types = {**_HEADER_TYPES, **(_GROUP_TYPES if header.get("kind") == KIND_GROUP else {})}
    for key, tp in types.items():
        value = header.get(key)
        # bool is an int subclass in Python; a JSON true is never a valid count or id.
        if not isinstance(value, tp) or isinstance(value, bool):
            raise DecodeError("bad_header", f"header field '{key}' must be {tp.__name__}, got {value!r:.60}")
    if header["worker_id"] < 0 or header["seq"] < 0:
        raise DecodeError("bad_header", "header fields 'worker_id' and 'seq' must be >= 0")
    if header["kind"] == KIND_GROUP:
        versions = header["policy_versions"]
        if header["n_rows"] < 1 or len(versions) != 2 or not all(type(v) is int for v in versions):
            raise DecodeError("bad_header", "header needs n_rows >= 1 and policy_versions = [oldest, newest]")
    return header


def rebuild_consolidated(meta: dict[str, Any], storage: torch.Tensor) -> TensorDictBase:
    """The single call into tensordict's private consolidated-rebuild (what unpickling a consolidated TD runs).

    The result's leaves are views into ``storage``. Pinned to tensordict 0.14.x; guarded by a round-trip test.
    """
    from tensordict._reductions import _rebuild_tensordict_files_consolidated

    return _rebuild_tensordict_files_consolidated(meta, storage)


def decode_group(
    header: dict[str, Any],
    payload: Any,
    *,
    vocab_size: int | None = None,
    max_len: int | None = None,
    max_rows: int | None = None,
) -> LazyStackedTensorDict:
    """Rebuild a group from its parsed header and buffer frame; every row is schema-validated.

    ``max_len`` / ``max_rows``: the limits the replay and learner enforce (``rollout.max_seq_len``, the replay
    capacity): a longer row or a larger group is refused here, not later inside the learner.

    ``payload`` is anything exposing the buffer protocol (a ``zmq.Frame``, ``memoryview``, ``bytes``). Rows are
    views into it: clone before writing in place. Raises :class:`DecodeError` for anything wrong.
    """
    if max_rows is not None and header["n_rows"] > max_rows:
        raise DecodeError("too_many_rows", f"{header['n_rows']} rows > {max_rows} (the replay's limit)")
    if header["wire"] != WIRE_FORMAT:  # a worker from another build of spear_stream
        raise DecodeError("wire_format", f"group wire format {header['wire']}, expected {WIRE_FORMAT}")
    view = memoryview(payload).cast("B")
    if view.readonly:
        # torch.frombuffer wants a writable buffer; zmq frames are writable, so only bytes pay this copy.
        view = memoryview(bytearray(view))
    storage = torch.frombuffer(view, dtype=torch.uint8) if len(view) else torch.empty(0, dtype=torch.uint8)
    _check_meta(header["meta"], header["n_rows"], storage.numel())
    try:
        rows = from_wire(rebuild_consolidated(header["meta"], storage))
    except Exception as exc:  # the private rebuild raises assorted types on inconsistent input
        raise DecodeError("bad_payload", f"cannot rebuild rows ({type(exc).__name__}: {exc})") from None
    if len(rows.tensordicts) != header["n_rows"]:
        raise DecodeError("bad_payload", "payload does not hold n_rows rows")
    oldest, newest = [], []
    for i, row in enumerate(rows.tensordicts):
        try:
            row_oldest, row_newest = validate_row(row, vocab_size)
        except SchemaError as exc:
            raise DecodeError("bad_row", f"row {i}: {exc}") from None
        if max_len is not None and int(row["length"]) > max_len:
            raise DecodeError("row_too_long", f"row {i} has {int(row['length'])} tokens > {max_len}")
        if int(row["worker_id"]) != header["worker_id"]:
            raise DecodeError("header_mismatch", f"row {i} has worker_id {int(row['worker_id'])}")
        oldest.append(row_oldest)
        newest.append(row_newest)
    if [min(oldest), max(newest)] != header["policy_versions"]:  # = group_versions(rows), without a re-read
        raise DecodeError("header_mismatch", f"policy_versions {header['policy_versions']} do not match rows")
    return rows


def _check_meta(meta: dict[str, Any], n_rows: int, n_bytes: int) -> None:
    """Accept only the metadata shape :func:`encode_group` produces (see :func:`to_wire`).

    Bounds every leaf inside the buffer and refuses non-tensor data, nested tensors and unknown classes, so
    the private rebuild only ever sees well-formed input.
    """
    if set(meta) != {*_TD_META_KEYS, _TOKENS} or meta.get("cls") != "TensorDict" or meta["non_tensors"]:
        raise DecodeError("bad_meta", f"meta must describe a columnar group (wire format {WIRE_FORMAT})")
    _check_td_class_meta(meta["cls_metadata"], [n_rows], "group")
    leaves = meta["leaves"]
    if not isinstance(leaves, dict) or set(leaves) != set(SCALAR_FIELDS):
        raise DecodeError("bad_meta", "the group's own leaves must be exactly the scalar fields")
    for key, leaf in leaves.items():
        _check_leaf("group", key, leaf, n_bytes, shape=[n_rows])
    tokens = meta[_TOKENS]
    # Compare sizes first: n_rows is untrusted and must not size any allocation before it is checked.
    if not isinstance(tokens, dict) or len(tokens) != n_rows + len(_TD_META_KEYS):
        raise DecodeError("bad_meta", f"'{_TOKENS}' must be a lazy stack of {n_rows} rows")
    if set(tokens) != {*_TD_META_KEYS, *map(str, range(n_rows))} or tokens["cls"] != "LazyStackedTensorDict":
        raise DecodeError("bad_meta", f"'{_TOKENS}' must be a lazy stack of {n_rows} rows")
    cls_meta = tokens["cls_metadata"]
    if (
        tokens["non_tensors"]
        or tokens["leaves"]
        or not isinstance(cls_meta, dict)
        or cls_meta.get("stack_dim") != 0
    ):
        raise DecodeError("bad_meta", "lazy stack must be along dim 0 with no own leaves")
    for i in range(n_rows):
        row = tokens[str(i)]
        if not isinstance(row, dict) or set(row) != _TD_META_KEYS or row["cls"] != "TensorDict":
            raise DecodeError("bad_meta", f"row {i} meta must be a flat TensorDict")
        if row["non_tensors"]:
            raise DecodeError("bad_meta", f"row {i} must have no non-tensor data")
        _check_td_class_meta(row["cls_metadata"], [], f"row {i}")
        if not isinstance(row["leaves"], dict) or set(row["leaves"]) != set(TOKEN_FIELDS):
            raise DecodeError("bad_meta", f"row {i} leaves must be exactly the per-token fields")
        for key, leaf in row["leaves"].items():
            _check_leaf(f"row {i}", key, leaf, n_bytes)


def _check_td_class_meta(cls_meta: Any, batch_size: list[int], where: str) -> None:
    if (
        not isinstance(cls_meta, dict)
        or cls_meta.get("batch_size") != batch_size
        or set(cls_meta) - {"device", "names", "batch_size", "is_locked"}
        or cls_meta.get("device") is not None
    ):
        raise DecodeError("bad_meta", f"{where} must be a CPU TensorDict of batch size {batch_size}")


def _check_leaf(where: str, key: str, leaf: Any, n_bytes: int, shape: list[int] | None = None) -> None:
    if key not in ALL_FIELDS:
        raise DecodeError("bad_row", f"{where}: unknown field '{key}'")
    if not isinstance(leaf, list) or len(leaf) != 5:
        raise DecodeError("bad_meta", f"{where} field '{key}': leaf must be [dtype, shape, start, stop, pad]")
    dtype, leaf_shape, start, stop, pad = leaf
    if dtype not in _ALLOWED_DTYPES:
        raise DecodeError("bad_row", f"{where}: field '{key}' has dtype {dtype!r:.40}")
    ints = [start, stop, pad, *leaf_shape] if isinstance(leaf_shape, list) else None
    if ints is None or not all(type(v) is int and v >= 0 for v in ints) or not start <= stop <= n_bytes:
        raise DecodeError("bad_meta", f"{where} field '{key}': shape/offsets out of bounds")
    if shape is not None and leaf_shape != shape:
        raise DecodeError("bad_meta", f"{where} field '{key}': shape {leaf_shape}, expected {shape}")
    numel = 1
    for dim in leaf_shape:
        numel *= dim
    itemsize = getattr(torch, dtype.removeprefix("torch.")).itemsize
    if numel * itemsize > stop - start:
        raise DecodeError(
            "bad_meta", f"{where} field '{key}': shape {leaf_shape} does not fit its byte range"
        )
