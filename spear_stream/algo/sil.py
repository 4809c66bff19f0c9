"""Self-imitation (SIL) math of docs/algorithm.md section 6, on tensors; the buffer itself is ``replay/sil.py``.

Rows enter with their on-policy advantage ``A > 0``. At replay time their advantage is recalibrated against
the baseline FIFO ``D_R`` of recent group-mean rewards: ``A_tilde = R - P50(D_R)``. The median of recent group
means tracks how good the current policy is, so stale wins the policy now routinely matches fall out without
extra rollouts.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sil_entry_mask(advantages: Tensor, n_tool_calls: Tensor, *, require_tool_call: bool) -> Tensor:
    """Rows that enter the SIL buffer: ``A > 0`` (and, for math, at least one tool call). [N] -> [N] bool."""
    keep = advantages > 0
    if require_tool_call:
        keep &= n_tool_calls > 0
    return keep


def p50(values: Tensor, empty: float) -> float:
    """Median with linear interpolation (mean of the two middle values for an even count); ``empty`` if none."""
    if values.numel() == 0:
        return float(empty)
    return float(torch.quantile(values.double().flatten(), 0.5))


def recalibrated_advantage(
    rewards: Tensor,
    baseline_values: Tensor,
    baseline_stds: Tensor | None = None,
    use_std: bool = False,
    eps: float = 1e-6,
) -> Tensor:
    """``A_tilde = R - P50(D_R)``, or ``(R - P50(D_R)) / (P50(stds) + eps)`` when ``use_std``. [N] -> [N].

    An empty baseline behaves like a group of one in GRPO: median 0 and std 1, so ``A_tilde = R`` until the
    first group means arrive.
    """
    a_tilde = rewards.double() - p50(baseline_values, empty=0.0)
    if use_std:
        std = p50(baseline_stds, empty=1.0) if baseline_stds is not None else 1.0
        a_tilde = a_tilde / (std + eps)
    return a_tilde.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def sil_replay_mask(a_tilde: Tensor, *, strict: bool) -> Tensor:
    """Rows that may be replayed: ``A_tilde >= 0`` (agent reference code) or ``> 0`` (math code, ``strict``)."""
    return a_tilde > 0 if strict else a_tilde >= 0


def paper_ready(n_survivors: int, capacity: int, fire_factor: float) -> bool:
    """Mode ``paper`` fires when more than ``fire_factor * capacity`` buffered rows survive the replay filter."""
    return n_survivors > fire_factor * capacity


def paper_batch_size(n_survivors: int, capacity: int) -> int:
    """``min(2^floor(log2 n), capacity)`` rows are drawn when mode ``paper`` fires (0 for n = 0)."""
    if n_survivors <= 0:
        return 0
    return min(1 << (int(n_survivors).bit_length() - 1), capacity)  # exact 2^floor(log2 n) for ints


def replay_beta(step: int, beta_start: float, beta_steps: int) -> float:
    """Prioritized-replay importance exponent, annealed linearly from ``beta_start`` to 1 over ``beta_steps``."""
    progress = min(max(step, 0) / max(beta_steps, 1), 1.0)
    return beta_start + (1.0 - beta_start) * progress


def replay_priorities(a_tilde: Tensor, eligible: Tensor, alpha: float, floor: float = 1e-6) -> Tensor:
    """Sampling priorities ``A_tilde^alpha`` of eligible rows (at least ``floor``, so ``A_tilde = 0`` rows stay
    reachable as the ``>= 0`` filter intends); 0 for the others. [N] -> [N] float64."""
    base = a_tilde.double().clamp(min=0.0)
    prio = base.pow(alpha) if alpha > 0 else torch.ones_like(base)
    return torch.where(eligible, prio.clamp(min=floor), torch.zeros_like(prio))


def importance_weights(sampled: Tensor, min_eligible: float, beta: float) -> Tensor:
    """PER weights ``(N P(i))^-beta`` normalised by their maximum, i.e. ``(p_i / p_min)^-beta``. [n] -> [n].

    ``sampled`` are the priorities of the drawn rows, ``min_eligible`` the smallest priority among all eligible
    rows (not only the drawn ones), so weights lie in (0, 1] and compare across draws.
    """
    return (sampled.double() / min_eligible).pow(-beta).to(torch.float32)
