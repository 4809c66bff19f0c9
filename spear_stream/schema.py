"""The only definition of a training row (docs/design.md section 2, docs/algorithm.md section 1).

A row is one ``TensorDict`` with ``batch_size=[]``. Per-token fields have shape ``[T]`` (T = ``length``); every
other field is a 0-d tensor. Rows of different lengths travel and sit in memory as lazy stacks
(``tensordict.lazy_stack``); on-disk replay pads them to ``max_len`` (see :func:`pad_rows`).

Design choices:
* ``env_id`` (crc32 of the environment name, see :func:`env_id_of`) replaces a text ``env_name``: text never
  travels on the wire; names are resolved on demand.
* ``n_tool_calls`` is the *episode's* count on every row of a trajectory (the intrinsic reward is episode-level).
* ``policy_version`` is the oldest version among the row's generated tokens (what staleness is measured by).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

SCHEMA_VERSION = 1

TOKEN_FIELDS: dict[str, torch.dtype] = {
    "tokens": torch.int64,
    "loss_mask": torch.bool,
    "behavior_logp": torch.float32,
    "token_version": torch.int32,
}

SCALAR_FIELDS: dict[str, torch.dtype] = {
    "length": torch.int64,
    "prompt_length": torch.int64,
    "outcome_reward": torch.float32,
    "step_reward": torch.float32,
    "n_tool_calls": torch.int64,
    "action_valid": torch.bool,
    "success": torch.bool,
    "overlong": torch.bool,
    "incomplete": torch.bool,
    "repetitive": torch.bool,
    "unreadable": torch.bool,
    "group_id": torch.int64,
    "traj_id": torch.int64,
    "step_idx": torch.int64,
    "anchor_key": torch.int64,
    "task_id": torch.int64,
    "env_id": torch.int64,
    "worker_id": torch.int64,
    "policy_version": torch.int64,
    "created_at": torch.float64,
}

ALL_FIELDS: dict[str, torch.dtype] = {**TOKEN_FIELDS, **SCALAR_FIELDS}


class SchemaError(ValueError):
    """A row does not match the schema; the message names the field."""


def env_id_of(name: str) -> int:
    """Stable int64 id of an environment name (crc32; names are short identifiers)."""
    return zlib.crc32(name.encode())


def anchor_key_of(observation: str) -> int:
    """Stable int64 hash of a raw observation (GiGPO anchor states); 64-bit from two crc32s."""
    data = observation.encode("utf-8", "surrogatepass")
    return (zlib.crc32(data) << 31) ^ zlib.adler32(data)


def make_row(
    *,
    tokens: Sequence[int] | torch.Tensor,
    loss_mask: Sequence[bool] | torch.Tensor,
    behavior_logp: Sequence[float] | torch.Tensor,
    token_version: Sequence[int] | torch.Tensor,
    prompt_length: int,
    **scalars: Any,
) -> TensorDict:
    """Build a row from Python values; missing scalar fields take neutral defaults. Validates the result."""
    toks = torch.as_tensor(tokens, dtype=torch.int64)
    data: dict[str, torch.Tensor] = {
        "tokens": toks,
        "loss_mask": torch.as_tensor(loss_mask, dtype=torch.bool),
        "behavior_logp": torch.as_tensor(behavior_logp, dtype=torch.float32),
        "token_version": torch.as_tensor(token_version, dtype=torch.int32),
    }
    mask = data["loss_mask"]
    versions = data["token_version"][mask] if mask.shape == toks.shape else torch.zeros(0)
    defaults: dict[str, Any] = {
        "length": toks.numel(),
        "prompt_length": prompt_length,
        "outcome_reward": 0.0,
        "step_reward": 0.0,
        "n_tool_calls": 0,
        "action_valid": True,
        "success": False,
        "overlong": False,
        "incomplete": False,
        "repetitive": False,
        "unreadable": False,
        "group_id": 0,
        "traj_id": 0,
        "step_idx": 0,
        "anchor_key": 0,
        "task_id": 0,
        "env_id": 0,
        "worker_id": 0,
        "policy_version": int(versions.min()) if versions.numel() else 0,
        "created_at": time.time(),
    }
    unknown = set(scalars) - set(SCALAR_FIELDS)
    if unknown:
        raise SchemaError(f"unknown row field(s): {sorted(unknown)}")
    defaults.update(scalars)
    for key, dtype in SCALAR_FIELDS.items():
        data[key] = torch.tensor(defaults[key], dtype=dtype)
    row = TensorDict(data, batch_size=[])
    validate_row(row)
    return row


def validate_row(row: TensorDictBase, vocab_size: int | None = None) -> tuple[int, int]:
    """Raise :class:`SchemaError` naming the first offending field (keys, dtypes, shapes, value ranges).

    Returns the row's ``(oldest, newest)`` policy versions (as :func:`spear_stream.group.group_versions`
    counts them), so a receiver need not read the tokens again.
    """
    if not isinstance(row, TensorDictBase):
        raise SchemaError(f"row must be a TensorDict, got {type(row).__name__}")
    if row.batch_size != torch.Size([]):
        raise SchemaError(f"row batch_size must be [], got {list(row.batch_size)}")
    # One pass over the TensorDict, then plain-dict lookups: this runs on every row the learner receives, and
    # TensorDict item access costs microseconds per call (24 fields x several checks per row).
    fields = dict(row.items())
    missing = ALL_FIELDS.keys() - fields.keys()
    if missing:
        raise SchemaError(f"row is missing field '{sorted(missing)[0]}'")
    extra = fields.keys() - ALL_FIELDS.keys()
    if extra:
        raise SchemaError(f"row has unknown field '{sorted(extra)[0]}'")
    for key, dtype in ALL_FIELDS.items():
        value = fields[key]
        if not isinstance(value, torch.Tensor):
            raise SchemaError(f"field '{key}' must be a tensor, got {type(value).__name__}")
        if value.dtype != dtype:
            raise SchemaError(f"field '{key}' has dtype {value.dtype}, expected {dtype}")
    for key in SCALAR_FIELDS:
        if fields[key].dim() != 0:
            raise SchemaError(f"field '{key}' must be a scalar, got shape {list(fields[key].shape)}")
    length = int(fields["length"])
    for key in TOKEN_FIELDS:
        shape = tuple(fields[key].shape)
        if shape != (length,):
            raise SchemaError(f"field '{key}' has shape {list(shape)}, expected [{length}] (= length)")
    _check_scalars(fields, length)
    newest_token = _check_tokens(fields, vocab_size)
    oldest = int(fields["policy_version"])
    return oldest, max(oldest, newest_token)


def _check_scalars(fields: dict[str, torch.Tensor], length: int) -> None:
    if length < 2:
        raise SchemaError(f"field 'length' = {length}: a row needs a prompt and at least one generated token")
    prompt_length = int(fields["prompt_length"])
    if not 1 <= prompt_length < length:
        raise SchemaError(f"field 'prompt_length' = {prompt_length} out of range [1, {length - 1}]")
    for key in ("outcome_reward", "step_reward", "created_at"):
        if not math.isfinite(float(fields[key])):
            raise SchemaError(f"field '{key}' must be finite")
    for key in ("n_tool_calls", "step_idx", "worker_id", "policy_version"):
        if int(fields[key]) < 0:
            raise SchemaError(f"field '{key}' must be >= 0, got {int(fields[key])}")


def _check_tokens(fields: dict[str, torch.Tensor], vocab_size: int | None) -> int:
    """Value checks of the per-token fields; returns the newest token version (-1 if nothing is generated)."""
    # Whole-tensor reductions and byte-wide arithmetic only: rows can be 100k+ tokens long, boolean indexing
    # allocates per row, and torch's bool comparisons are several times slower than the same on uint8.
    lo, hi = torch.aminmax(fields["tokens"])
    if int(lo) < 0 or (vocab_size is not None and int(hi) >= vocab_size):
        raise SchemaError(f"field 'tokens' has ids outside [0, {vocab_size or 'inf'})")
    mask = fields["loss_mask"]
    if bool(mask[: int(fields["prompt_length"])].any()):
        raise SchemaError("field 'loss_mask' is set inside the prompt")
    version = fields["token_version"]
    v_lo, v_hi = (int(v) for v in torch.aminmax(version))
    # generated tokens carry a version >= 0, every other token -1: with every version >= -1, that is
    # "negative exactly where the loss mask is off", i.e. signbit + mask == 1 everywhere (as bytes)
    one_each = torch.signbit(version).view(torch.uint8) + mask.view(torch.uint8)
    if v_lo < -1 or tuple(int(v) for v in torch.aminmax(one_each)) != (1, 1):
        raise SchemaError("field 'token_version' must be >= 0 on generated tokens and -1 elsewhere")
    # min/max propagate NaN: finite extremes mean every value is finite
    logp_lo, logp_hi = torch.aminmax(fields["behavior_logp"])
    if not (math.isfinite(float(logp_lo)) and math.isfinite(float(logp_hi))):
        raise SchemaError("field 'behavior_logp' must be finite")
    if float(logp_hi) > 1e-4:  # context tokens carry 0, generated ones a log-probability
        raise SchemaError("field 'behavior_logp' must be <= 0")
    if v_hi >= 0:  # some token is generated: the row's version is its oldest (-1 & INT32_MAX = INT32_MAX)
        oldest = int((version & torch.iinfo(torch.int32).max).amin())
        if int(fields["policy_version"]) != oldest:
            raise SchemaError(
                "field 'policy_version' must equal the oldest token_version of generated tokens"
            )
    return v_hi


def pad_rows(rows: TensorDictBase, max_len: int, pad_token: int = 0) -> TensorDict:
    """Stack rows (a lazy stack or list) into a dense ``[N]`` TensorDict with token fields padded to ``max_len``."""
    items = list(rows.unbind(0)) if isinstance(rows, TensorDictBase) else list(rows)
    out: dict[str, torch.Tensor] = {}
    n = len(items)
    for key, dtype in TOKEN_FIELDS.items():
        fill = {"tokens": pad_token, "token_version": -1}.get(key, 0)
        buf = torch.full((n, max_len), fill, dtype=dtype)
        for i, row in enumerate(items):
            value = row[key]
            if value.numel() > max_len:
                raise SchemaError(f"row {i} has length {value.numel()} > max_len {max_len}")
            buf[i, : value.numel()] = value
        out[key] = buf
    for key in SCALAR_FIELDS:
        out[key] = (
            torch.stack([row[key] for row in items]) if items else torch.zeros(0, dtype=SCALAR_FIELDS[key])
        )
    return TensorDict(out, batch_size=[n])


def unpad_row(padded: TensorDictBase) -> TensorDict:
    """Inverse of :func:`pad_rows` for one row: trim token fields back to ``length``."""
    length = int(padded["length"])
    data = {k: padded[k][:length].clone() for k in TOKEN_FIELDS}
    data.update({k: padded[k].clone() for k in SCALAR_FIELDS})
    return TensorDict(data, batch_size=[])
