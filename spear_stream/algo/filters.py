"""Dr.BoT filters (docs/algorithm.md section 4, tricks 5-9).

Row filters 5-8 (over-long, incomplete, repetitive, unreadable) zero a row's loss mask but keep the row in
its group's mean/std, so the other rows' advantages do not change. Filter 9 drops whole groups whose rewards
barely vary: they carry almost no learning signal.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from spear_stream.config import FilterConfig

# Mojibake: UTF-8 bytes decoded as Latin-1 / cp1252. 'é' -> 'Ã©', '’' -> 'â€™', NBSP -> 'Â ', BOM -> 'ï»¿'.
# 'Ã'/'Â' followed by a Latin-1 continuation character, or 'â€', almost never occur in real text.
_MOJIBAKE = re.compile("[\u00c2\u00c3][\u0080-\u00bf]|\u00e2\u20ac|\u00ef\u00bb\u00bf")


def is_repetitive(tokens: Tensor, n: int = 20, repeats: int = 10) -> bool:
    """True when some n-gram of token ids occurs ``repeats`` or more times (overlapping occurrences count).

    tokens: [T] int. A degenerate loop ("the the the ...") is the typical catch.
    """
    if tokens.numel() < n or repeats < 1:
        return False
    ngrams = tokens.reshape(-1).unfold(0, n, 1)  # [T - n + 1, n]
    _, counts = torch.unique(ngrams, dim=0, return_counts=True)
    return bool(counts.max() >= repeats)


def is_unreadable(text: str) -> bool:
    """True when decoded text contains U+FFFD (invalid bytes) or common UTF-8-as-Latin-1 mojibake."""
    return "\ufffd" in text or _MOJIBAKE.search(text) is not None


def row_loss_keep(
    *,
    overlong: Tensor,
    incomplete: Tensor,
    repetitive: Tensor,
    unreadable: Tensor,
    cfg: FilterConfig,
) -> Tensor:
    """Rows whose loss mask survives filters 5-8 (each only when its switch is on). Flags [N] bool -> [N] bool."""
    keep = torch.ones_like(overlong, dtype=torch.bool)
    for enabled, flag in (
        (cfg.overlong, overlong),
        (cfg.incomplete, incomplete),
        (cfg.repetitive, repetitive),
        (cfg.unreadable, unreadable),
    ):
        if enabled:
            keep &= ~flag.bool()
    return keep


def low_variance_group_keep(rewards: Tensor, group_ids: Tensor, keep_ratio: float) -> Tensor:
    """Filter 9: keep the rows of the ``n_keep`` groups with the highest within-group reward std. [N] -> [N] bool.

    ``n_keep = max(1, floor(keep_ratio * n_groups + 0.5))`` (round half up: 0.75 x 6 = 4.5 keeps 5 groups).
    Std is the sample std; a group of one has std 0. Ties keep the smaller group id (deterministic).
    """
    if rewards.numel() == 0 or keep_ratio >= 1.0:
        return torch.ones_like(group_ids, dtype=torch.bool)
    ids, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = ids.numel()
    values = rewards.double()
    count = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, torch.ones_like(values))
    mean = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, values) / count
    ss = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, (values - mean[inverse]) ** 2)
    std = torch.where(count > 1, (ss / (count - 1).clamp(min=1)).sqrt(), torch.zeros_like(ss))
    n_keep = max(1, math.floor(keep_ratio * n_groups + 0.5))
    # ids are sorted ascending, so a stable sort on -std keeps the smaller id first among equal stds.
    ranked = torch.argsort(-std, stable=True)
    kept_groups = torch.zeros(n_groups, dtype=torch.bool)
    kept_groups[ranked[:n_keep]] = True
    return kept_groups[inverse]
