"""Group-relative advantages (docs/algorithm.md section 3): GRPO and GiGPO.

Rows are flat tensors of length N. Groups are found with ``torch.unique(return_inverse=True)`` and reduced
with ``index_add_``, so nothing loops over rows in Python. Standard deviations are sample standard deviations
(Bessel's correction, what ``torch.std`` computes), as in the reference code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


@dataclass
class GroupStats:
    """Per-group statistics; ``inverse[i]`` is the position of row i's group in ``group_ids``."""

    group_ids: Tensor  # [G] sorted unique ids
    mean: Tensor  # [G]
    std: Tensor  # [G] sample std; 1 for a group of one
    count: Tensor  # [G] int64
    inverse: Tensor  # [N] int64


def _segment_mean_std(values: Tensor, inverse: Tensor, n_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, Bessel-corrected std (nan for singletons) and count of ``values`` [N] per segment id in ``inverse``."""
    count = torch.zeros(n_groups, dtype=torch.int64, device=values.device).index_add_(
        0, inverse, torch.ones_like(inverse)
    )
    total = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, inverse, values)
    mean = total / count.to(values.dtype)
    # Two-pass variance: subtracting the mean first avoids the cancellation of sum(x^2) - n mean^2.
    sq_dev = (values - mean[inverse]) ** 2
    ss = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, inverse, sq_dev)
    std = (ss / (count - 1).to(values.dtype)).sqrt()
    return mean, std, count


def group_stats(rewards: Tensor, group_ids: Tensor) -> GroupStats:
    """Mean and std of ``rewards`` [N] per ``group_ids`` [N]; a group of one gets mean 0 and std 1."""
    values = rewards.float() if not rewards.is_floating_point() else rewards
    ids, inverse = torch.unique(group_ids, return_inverse=True)
    mean, std, count = _segment_mean_std(values, inverse, ids.numel())
    single = count == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    return GroupStats(group_ids=ids, mean=mean, std=std, count=count, inverse=inverse)


def grpo_advantages(
    rewards: Tensor, group_ids: Tensor, *, std_norm: bool, eps: float = 1e-6
) -> tuple[Tensor, GroupStats]:
    """GRPO: ``A = R - mean_g(R)``, divided by ``std_g(R) + eps`` when ``std_norm``. [N] -> ([N], stats).

    Statistics are over all rows of a group (in window mode longer trajectories weigh more, as in the
    reference). A group of one gets mean 0 and std 1, so its advantage is its reward (scaled by 1/(1+eps)).
    """
    stats = group_stats(rewards, group_ids)
    adv = rewards.to(stats.mean.dtype) - stats.mean[stats.inverse]
    if std_norm:
        adv = adv / (stats.std[stats.inverse] + eps)
    return adv, stats


def discounted_returns(step_rewards: Tensor, traj_ids: Tensor, step_idx: Tensor, gamma: float) -> Tensor:
    """``G_t = sum_{k >= t} gamma^(k - t) r_k`` over the rows of each trajectory ordered by ``step_idx``. [N] -> [N].

    Exponents count positions in that order (steps are contiguous in practice).
    """
    n = step_rewards.numel()
    rewards = step_rewards.float() if not step_rewards.is_floating_point() else step_rewards
    if n == 0:
        return rewards.clone()
    # Lexicographic sort by (traj_id, step_idx): stable sort by the minor key, then by the major key.
    by_step = torch.argsort(step_idx, stable=True)
    order = by_step[torch.argsort(traj_ids[by_step], stable=True)]
    sorted_traj = traj_ids[order]
    sorted_rewards = rewards[order]
    _, lengths = torch.unique_consecutive(sorted_traj, return_counts=True)
    starts = torch.cumsum(lengths, 0) - lengths
    position = torch.arange(n, device=rewards.device) - torch.repeat_interleave(starts, lengths)
    steps_to_end = torch.repeat_interleave(lengths, lengths) - 1 - position
    returns = torch.zeros_like(sorted_rewards)
    # Backwards over "steps before the end": one vectorised update per step depth, not per row.
    for depth in range(int(lengths.max())):
        rows = (steps_to_end == depth).nonzero().squeeze(1)
        if depth == 0:
            returns[rows] = sorted_rewards[rows]
        else:
            returns[rows] = sorted_rewards[rows] + gamma * returns[rows + 1]
    out = torch.empty_like(returns)
    out[order] = returns
    return out


def anchor_step_advantages(
    step_returns: Tensor, group_ids: Tensor, anchor_keys: Tensor, *, std_norm: bool, eps: float = 1e-6
) -> Tensor:
    """GiGPO step level: normalise ``G_t`` within anchor-state groups (same task group, identical observation).

    ``A_step = (G_t - mean_anchor) / (std_anchor + eps)``; a singleton anchor group gives 0. [N] -> [N].
    """
    values = step_returns.float() if not step_returns.is_floating_point() else step_returns
    if values.numel() == 0:
        return values.clone()
    pairs = torch.stack([group_ids.long(), anchor_keys.long()], dim=1)
    _, inverse = torch.unique(pairs, dim=0, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    mean, std, count = _segment_mean_std(values, inverse, n_groups)
    adv = values - mean[inverse]
    if std_norm:
        adv = adv / (std[inverse] + eps)
    return torch.where(count[inverse] > 1, adv, torch.zeros_like(adv))


def gigpo_advantages(
    episode_rewards: Tensor,
    step_returns: Tensor,
    group_ids: Tensor,
    anchor_keys: Tensor,
    *,
    omega: float,
    mode: Literal["mean_std_norm", "mean_norm"],
    eps: float = 1e-6,
) -> Tensor:
    """GiGPO (arXiv 2505.10978): ``A = A_episode + omega * A_step``. All inputs [N]; returns [N].

    ``mode`` picks std division for both levels, as the reference's ``remove_std`` flag does:
    ``mean_std_norm`` divides by ``std + eps``, ``mean_norm`` only subtracts the mean.
    The intrinsic tool reward belongs in ``episode_rewards`` only, never in ``step_returns``.
    """
    if mode not in ("mean_std_norm", "mean_norm"):
        raise ValueError(f"unknown GiGPO mode {mode!r}")
    std_norm = mode == "mean_std_norm"
    episode_adv, _ = grpo_advantages(episode_rewards, group_ids, std_norm=std_norm, eps=eps)
    step_adv = anchor_step_advantages(step_returns, group_ids, anchor_keys, std_norm=std_norm, eps=eps)
    return episode_adv + omega * step_adv
