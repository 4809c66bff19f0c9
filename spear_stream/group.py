"""A group of rows in the jagged layout: what a worker sends, what the learner validates and what the replay reads.

One TensorDict (``batch_size=[]``) per group::

    group["flat"]     TensorDict [n_tokens]: tokens, loss_mask, behavior_logp, token_version of every row,
                      concatenated in row order
    group["offsets"]  int64 [n_rows + 1]: row i is flat[offsets[i]:offsets[i + 1]]
    group["rows"]     TensorDict [n_rows]: the scalar fields of ``spear_stream.schema`` (one column each)

Why our own offsets rather than ``torch.nested`` (jagged layout): the wire carries each flat field as one buffer
and the checks below are whole-tensor reductions over the flat values; a nested tensor would be built from and
taken apart into exactly these values and offsets at each end, and its jagged layout supports only part of the
reductions we need (``aminmax``, ``cumsum`` of a bool, ``repeat_interleave`` by lengths) on CPU.

:func:`validate_group` checks a whole group with a fixed number of vectorised operations (the same rules as
:func:`spear_stream.schema.validate_row`, which a row-at-a-time check paid per row and per field).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from spear_stream.schema import ALL_FIELDS, SCALAR_FIELDS, TOKEN_FIELDS, SchemaError

FLAT, OFFSETS, ROWS = "flat", "offsets", "rows"
# the scalar fields grouped by dtype, in schema order: one stack each here, one wire frame each in the codec
SCALAR_BLOCKS: tuple[tuple[torch.dtype, tuple[str, ...]], ...] = tuple(
    (dtype, tuple(k for k, d in SCALAR_FIELDS.items() if d == dtype))
    for dtype in dict.fromkeys(SCALAR_FIELDS.values())
)
_INT32_MAX = torch.iinfo(torch.int32).max


def is_group(value: object) -> bool:
    return (
        isinstance(value, TensorDictBase) and value.batch_size == torch.Size([]) and OFFSETS in value.keys()
    )


def make_group(
    flat: dict[str, torch.Tensor], offsets: torch.Tensor, rows: dict[str, torch.Tensor]
) -> TensorDict:
    """The group TensorDict of its parts, which the caller built to the layout above (flat fields [n_tokens],
    offsets [n_rows + 1], scalar columns [n_rows]).

    Built with tensordict's unchecked constructor (pinned tensordict 0.14.x): its per-leaf checks cost ~60 us a
    group, on the learner's receive path; the round-trip tests cover the result.
    """
    n_tokens, n_rows = flat["tokens"].shape[0], offsets.shape[0] - 1
    return TensorDict._new_unsafe(
        {
            FLAT: TensorDict._new_unsafe(flat, batch_size=torch.Size([n_tokens])),
            OFFSETS: offsets,
            ROWS: TensorDict._new_unsafe(rows, batch_size=torch.Size([n_rows])),
        },
        batch_size=torch.Size([]),
    )


def group_from_rows(rows: Sequence[TensorDictBase] | TensorDictBase) -> TensorDict:
    """The jagged group of schema rows (a list or a stack): one concatenation per per-token field."""
    if is_group(rows):
        return rows  # type: ignore[return-value]
    items = list(rows.unbind(0)) if isinstance(rows, TensorDictBase) else list(rows)
    if not items:
        raise SchemaError("a group needs at least one row")
    fields = [dict(row.items()) for row in items]
    for i, f in enumerate(fields):  # the wire has no dtypes: a wrong one fails here, at the sender
        unknown = f.keys() - ALL_FIELDS.keys()
        if unknown:
            raise SchemaError(f"row {i} has unknown field '{sorted(unknown)[0]}'")
        for key, dtype in ALL_FIELDS.items():
            value = f.get(key)
            if not isinstance(value, torch.Tensor) or value.dtype != dtype:
                raise SchemaError(
                    f"row {i}: field '{key}' must be a {dtype} tensor, got {getattr(value, 'dtype', value)!r:.40}"
                )
    lengths = torch.tensor([f["tokens"].numel() for f in fields], dtype=torch.int64)
    offsets = torch.zeros(len(items) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    for i, f in enumerate(fields):
        length = f["tokens"].shape[0] if f["tokens"].dim() == 1 else -1
        for key in TOKEN_FIELDS:
            if f[key].dim() != 1 or f[key].shape[0] != length:
                raise SchemaError(f"row {i}: field '{key}' must be 1-D, as long as 'tokens'")
        for key in SCALAR_FIELDS:
            if f[key].dim() != 0:
                raise SchemaError(f"row {i}: field '{key}' must be a scalar")
    flat = {key: torch.cat([f[key] for f in fields]) for key in TOKEN_FIELDS}
    columns: dict[str, torch.Tensor] = {}
    for _, keys in SCALAR_BLOCKS:  # one stack per dtype, not per field: a stack costs ~5 us however small
        block = torch.stack([f[k] for k in keys for f in fields]).view(len(keys), len(fields))
        columns.update(zip(keys, block.unbind(0), strict=True))
    return make_group(flat, offsets, columns)


def group_rows(group: TensorDictBase) -> list[TensorDict]:
    """The group's schema rows, every field a view into the group."""
    offsets = group[OFFSETS].tolist()
    flat = {key: group[FLAT, key] for key in TOKEN_FIELDS}
    columns = {key: group[ROWS, key] for key in SCALAR_FIELDS}
    return [
        TensorDict(
            {
                **{k: v[offsets[i] : offsets[i + 1]] for k, v in flat.items()},
                **{k: v[i] for k, v in columns.items()},
            },
            batch_size=[],
        )
        for i in range(len(offsets) - 1)
    ]


def n_rows(group: TensorDictBase) -> int:
    return group[OFFSETS].numel() - 1


def group_versions(group: TensorDictBase) -> tuple[int, int]:
    """(oldest, newest) policy version: the oldest row version, the newest token (or row) version."""
    rows_version = group[ROWS, "policy_version"]
    newest_token = int(group[FLAT, "token_version"].max()) if group[FLAT].batch_size[0] else -1
    return int(rows_version.min()), max(int(rows_version.max()), newest_token)


def validate_group(
    group: TensorDictBase,
    *,
    vocab_size: int | None = None,
    max_len: int | None = None,
    max_rows: int | None = None,
) -> tuple[int, int]:
    """Raise :class:`SchemaError` naming the first rule a row breaks; return the group's (oldest, newest) versions.

    The caller guarantees keys, dtypes and flat shapes (the decoder builds them from the schema); this checks the
    values: offsets and lengths, scalar ranges, token ids, loss mask outside prompts, token versions, log-probs.
    A fixed number of whole-array operations per group, in numpy where its per-call cost (~1 us against torch's
    ~5-10 us) matters for small groups; the arrays are views of the group's tensors.
    """
    parts = dict(group.items())  # one lookup each: TensorDict item access costs microseconds per call
    offsets = parts[OFFSETS].numpy()
    n = offsets.size - 1
    if n < 1 or (max_rows is not None and n > max_rows):
        raise SchemaError(f"a group has 1 to {max_rows or 'any'} rows, got {n}")
    columns = {key: value.numpy() for key, value in parts[ROWS].items()}
    lengths = np.diff(offsets)
    n_tokens = parts[FLAT].batch_size[0]
    if offsets[0] != 0 or offsets[-1] != n_tokens or not np.array_equal(lengths, columns["length"]):
        raise SchemaError("field 'length' must match the row offsets")
    _check_columns(columns, lengths, max_len)
    flat = {key: value.numpy() for key, value in parts[FLAT].items()}
    newest_token = _check_flat(flat, offsets, columns, vocab_size)
    row_version = columns["policy_version"]
    return int(row_version.min()), max(int(row_version.max()), newest_token)


def _check_columns(columns: dict[str, np.ndarray], lengths: np.ndarray, max_len: int | None) -> None:
    if lengths.min() < 2:
        raise SchemaError(
            f"field 'length' = {lengths.min()}: a row needs a prompt and at least one generated token"
        )
    if max_len is not None and lengths.max() > max_len:
        raise SchemaError(f"field 'length' = {lengths.max()} > max_len {max_len}")
    prompt = columns["prompt_length"]
    if prompt.min() < 1 or (prompt >= lengths).any():
        raise SchemaError("field 'prompt_length' out of range [1, length - 1]")
    for key in ("outcome_reward", "step_reward", "created_at"):
        if not np.isfinite(columns[key]).all():
            raise SchemaError(f"field '{key}' must be finite")
    for key in ("n_tool_calls", "step_idx", "worker_id", "policy_version"):
        if columns[key].min() < 0:
            raise SchemaError(f"field '{key}' must be >= 0")


def _check_flat(
    flat: dict[str, np.ndarray], offsets: np.ndarray, columns: dict[str, np.ndarray], vocab_size: int | None
) -> int:
    """Value checks of the per-token fields; returns the newest token version (-1 if nothing is generated)."""
    tokens, mask, logp, version = (flat[key] for key in TOKEN_FIELDS)
    lo, hi = (int(v) for v in torch.aminmax(torch.from_numpy(tokens)))  # one pass, where numpy needs two
    if lo < 0 or (vocab_size is not None and hi >= vocab_size):
        raise SchemaError(f"field 'tokens' has ids outside [0, {vocab_size or 'inf'})")
    # segments [start, start + prompt) and [start + prompt, next start): any loss token in each, in one pass
    starts = offsets[:-1]
    bounds = np.empty(2 * starts.size, dtype=np.int64)
    bounds[0::2], bounds[1::2] = starts, starts + columns["prompt_length"]
    any_loss = np.logical_or.reduceat(mask, bounds)
    if any_loss[0::2].any():
        raise SchemaError("field 'loss_mask' is set inside the prompt")
    # generated tokens carry a version >= 0, every other token -1
    v_lo, v_hi = int(version.min()), int(version.max())
    if v_lo < -1 or not np.array_equal(version >= 0, mask):
        raise SchemaError("field 'token_version' must be >= 0 on generated tokens and -1 elsewhere")
    logp_lo, logp_hi = float(logp.min()), float(logp.max())  # NaN propagates: finite extremes, finite values
    if not (math.isfinite(logp_lo) and math.isfinite(logp_hi)):
        raise SchemaError("field 'behavior_logp' must be finite")
    if logp_hi > 1e-4:
        raise SchemaError("field 'behavior_logp' must be <= 0")
    # each row's policy_version is the oldest version among its generated tokens (-1 & INT32_MAX = INT32_MAX)
    generated = any_loss[1::2]
    oldest = np.minimum.reduceat(version & _INT32_MAX, starts)
    if not np.array_equal(oldest[generated], columns["policy_version"][generated]):
        raise SchemaError("field 'policy_version' must equal the oldest token_version of generated tokens")
    return v_hi


def pad_group(group: TensorDictBase, max_len: int, pad_token: int = 0) -> TensorDict:
    """The group as a dense ``[n_rows]`` TensorDict with token fields padded to ``max_len`` (the replay's rows).

    One scatter per per-token field (as :func:`spear_stream.schema.pad_rows` does row by row).
    """
    offsets, flat, columns = group[OFFSETS], group[FLAT], group[ROWS]
    n = offsets.numel() - 1
    lengths = offsets[1:] - offsets[:-1]
    if n and int(lengths.max()) > max_len:
        raise SchemaError(f"a row has length {int(lengths.max())} > max_len {max_len}")
    row_of_token = torch.repeat_interleave(torch.arange(n), lengths)
    index = row_of_token * max_len + (torch.arange(flat.batch_size[0]) - offsets[:-1][row_of_token])
    out: dict[str, torch.Tensor] = {}
    for key, dtype in TOKEN_FIELDS.items():
        fill = {"tokens": pad_token, "token_version": -1}.get(key, 0)
        buf = torch.full((n * max_len,), fill, dtype=dtype)
        buf[index] = flat[key]
        out[key] = buf.view(n, max_len)
    out.update({key: columns[key] for key in SCALAR_FIELDS})
    return TensorDict(out, batch_size=[n])
