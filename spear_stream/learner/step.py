"""One learner update: rows -> shaped rewards -> advantages -> filtered loss masks -> micro-batched loss -> step.

Infrastructure-free: the same code runs in a single process and under FSDP2 (the caller passes the global
token/sequence counts so that micro-batches and data-parallel ranks sum to the full-batch gradient).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase

from spear_stream.algo.advantages import discounted_returns, gigpo_advantages, grpo_advantages
from spear_stream.algo.filters import low_variance_group_keep, row_loss_keep
from spear_stream.algo.losses import kl_to_reference, policy_loss, sil_loss
from spear_stream.algo.rewards import invalid_action_penalty, shaped_reward, step_reward_with_penalty
from spear_stream.config import AlgoConfig, CovConfig, LossConfig
from spear_stream.learner.forward import micro_batches, right_pad, token_logprobs

TOKEN_KEYS = ("tokens", "loss_mask", "behavior_logp", "token_version")


@dataclass
class PreparedBatch:
    """Rows with their scalar advantage and whether their tokens count in the loss."""

    rows: list[TensorDictBase]
    advantages: torch.Tensor  # [N]
    loss_keep: torch.Tensor  # [N] bool
    metrics: dict[str, float]
    rewards: torch.Tensor  # [N] shaped episode reward the advantages were computed from
    group_ids: torch.Tensor  # [N]


def _column(rows: list[TensorDictBase], key: str) -> torch.Tensor:
    return torch.stack([r[key] for r in rows])


def minibatch_bounds(n_rows: int, n_minibatches: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` ranges of ``n_minibatches`` near-equal consecutive parts (rows stay in group order)."""
    cuts = [round(i * n_rows / n_minibatches) for i in range(n_minibatches + 1)]
    return list(itertools.pairwise(cuts))


def loss_token_count(rows: list[TensorDictBase], keep: torch.Tensor) -> int:
    """Loss tokens of the kept rows (at least 1): the token-mean divisor shared by all micro-batches and ranks."""
    return max(1, sum(int(r["loss_mask"].sum()) for r, k in zip(rows, keep) if k))


def prepare_batch(rows: list[TensorDictBase], algo: AlgoConfig, mu: float) -> PreparedBatch:
    """Rewards, advantages (GRPO or GiGPO) and Dr.BoT filters for a batch of whole groups."""
    outcome = _column(rows, "outcome_reward")
    n_tool_calls = _column(rows, "n_tool_calls")
    success = _column(rows, "success")
    action_valid = _column(rows, "action_valid")
    group_ids = _column(rows, "group_id")
    shaped = shaped_reward(outcome, n_tool_calls, mu, algo.reward, success=success)
    # Invalid-action penalty: on the row of each step whose output could not be parsed.
    episode_reward = shaped - invalid_action_penalty(action_valid, algo.reward)
    adv_cfg = algo.advantage
    if adv_cfg.estimator == "grpo":
        advantages, _ = grpo_advantages(episode_reward, group_ids, std_norm=adv_cfg.std_norm, eps=adv_cfg.eps)
    else:
        step_rewards = step_reward_with_penalty(
            _column(rows, "step_reward"), action_valid, algo.reward.invalid_penalty
        )
        returns = discounted_returns(
            step_rewards, _column(rows, "traj_id"), _column(rows, "step_idx"), adv_cfg.gigpo_gamma
        )
        advantages = gigpo_advantages(
            episode_reward,
            returns,
            group_ids,
            _column(rows, "anchor_key"),
            omega=adv_cfg.gigpo_omega,
            mode=adv_cfg.gigpo_mode,
            eps=adv_cfg.eps,
        )
    f = algo.filters
    flags = {name: _column(rows, name) for name in ("overlong", "incomplete", "repetitive", "unreadable")}
    keep = row_loss_keep(**flags, cfg=f)
    keep &= low_variance_group_keep(episode_reward, group_ids, f.group_keep_ratio)
    metrics = {
        "rollout/reward_mean": float(outcome.mean()),
        "rollout/shaped_reward_mean": float(episode_reward.mean()),
        "rollout/success_rate": float(success.float().mean()),
        "rollout/tool_calls_mean": float(n_tool_calls.float().mean()),
        "rollout/invalid_frac": float((~action_valid).float().mean()),
        "filter/kept_rows_frac": float(keep.float().mean()),
        **{f"filter/{name}": float(flag.sum()) for name, flag in flags.items()},
        "advantage/mean": float(advantages.mean()),
        "advantage/abs_mean": float(advantages.abs().mean()),
    }
    return PreparedBatch(rows, advantages, keep, metrics, episode_reward, group_ids)


def _term_loss(
    logp: torch.Tensor,
    entropy: torch.Tensor | None,
    behavior_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    loss_cfg: LossConfig,
    *,
    cov: CovConfig,
    sil_gamma: float | None,
    sample_weights: torch.Tensor | None,
    generator: torch.Generator | None,
    norm_len: int,
    num_tokens: int,
    num_seqs: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch's loss ([B, T] tensors, ``advantages`` [B]): the on-policy or the self-imitation term.

    On-policy, ``ppo``: the trust region is anchored at the engine's behaviour log-probs. ``decoupled``
    (AReaL): anchored at the proximal policy, which is these parameters before this optimizer step, i.e.
    ``logp.detach()`` (no second forward: the parameters do not change between the micro-batches of one step),
    with the importance weight ``pi_prox / pi_behav`` truncated at ``is_cap``.
    Self-imitation (``sil_gamma`` given): :func:`~spear_stream.algo.losses.sil_loss`, against the stored behaviour
    log-probs, without entropy bonus.
    """
    if sil_gamma is not None:
        return sil_loss(
            logp, behavior_logp, advantages, mask, gamma=sil_gamma, clip_low=loss_cfg.clip_low,
            clip_high=loss_cfg.clip_high, dual_clip=loss_cfg.dual_clip, aggregation=loss_cfg.aggregation,
            norm_len=norm_len, num_tokens=num_tokens, num_seqs=num_seqs, cov=cov, sample_weights=sample_weights,
            generator=generator,
        )  # fmt: skip
    if loss_cfg.entropy_coef == 0 and entropy is not None:
        entropy = entropy.detach()  # logged as loss/entropy, not optimised
    decoupled = loss_cfg.kind == "decoupled"
    return policy_loss(
        logp, logp.detach() if decoupled else behavior_logp, advantages, mask, clip_low=loss_cfg.clip_low,
        clip_high=loss_cfg.clip_high, dual_clip=loss_cfg.dual_clip, aggregation=loss_cfg.aggregation,
        norm_len=norm_len, num_tokens=num_tokens, num_seqs=num_seqs,
        behavior_logp=behavior_logp if decoupled else None, is_cap=loss_cfg.is_cap if decoupled else None,
        cov=cov, entropy=entropy, entropy_coef=loss_cfg.entropy_coef, generator=generator,
        sample_weights=sample_weights,
    )  # fmt: skip


def loss_over_rows(
    model,
    rows: list[TensorDictBase],
    advantages: torch.Tensor,
    loss_keep: torch.Tensor,
    algo: AlgoConfig,
    *,
    temperature: float,
    norm_len: int,
    token_budget: int,
    num_tokens: int,
    num_seqs: int,
    cov: CovConfig,
    sil_gamma: float | None = None,
    weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    ref_model=None,
    version: int | None = None,
) -> dict[str, float]:
    """Forward + backward over ``rows`` in micro-batches (gradients accumulate; no optimizer step).

    The on-policy term (:func:`~spear_stream.algo.losses.policy_loss`, ``algo.loss.kind``) by default; with
    ``sil_gamma`` the self-imitation term :func:`~spear_stream.algo.losses.sil_loss`: ``gamma(t)`` times the
    clipped surrogate against the stored behaviour log-probs, ``advantages`` being ``A_tilde`` and ``weights``
    the prioritized sampler's importance weights (``docs/algorithm.md`` section 6).

    ``version``: the policy version of these parameters; the sums ``loss/logprob_diff_sum`` and
    ``loss/logprob_diff_tokens`` then compare the engine's log-probs with ours on the tokens that version
    generated (they should agree up to kernel numerics; a growing gap means the engine and learner diverge).
    """
    loss_cfg = algo.loss
    sums: dict[str, float] = defaultdict(float)
    lengths = [int(r["length"]) for r in rows]
    batches = micro_batches(len(rows), lengths, token_budget)
    for idx in batches:
        mb = right_pad([rows[i] for i in idx], TOKEN_KEYS)
        mask = mb["loss_mask"] & loss_keep[idx, None]
        logp, entropy = token_logprobs(
            model, mb["tokens"], mb["attention"], temperature, with_entropy=sil_gamma is None
        )
        loss, m = _term_loss(
            logp, entropy, mb["behavior_logp"], advantages[idx], mask, loss_cfg, cov=cov, sil_gamma=sil_gamma,
            sample_weights=None if weights is None else weights[idx], generator=generator, norm_len=norm_len,
            num_tokens=num_tokens, num_seqs=num_seqs,
        )  # fmt: skip
        if ref_model is not None and loss_cfg.kl_coef > 0:  # KL to a frozen reference (off in Dr.BoT)
            with torch.no_grad():
                ref_logp, _ = token_logprobs(ref_model, mb["tokens"], mb["attention"], temperature)
            kl, kl_metrics = kl_to_reference(
                logp,
                ref_logp,
                mask,
                aggregation=loss_cfg.aggregation,
                norm_len=norm_len,
                num_tokens=num_tokens,
                num_seqs=num_seqs,
            )
            loss = loss + loss_cfg.kl_coef * kl
            m.update(kl_metrics)
        loss.backward()
        if version is not None:
            same = mask & (mb["token_version"] == version)
            sums["loss/logprob_diff_sum"] += float((logp.detach() - mb["behavior_logp"]).abs()[same].sum())
            sums["loss/logprob_diff_tokens"] += float(same.sum())
        weight = float(mask.sum()) / max(num_tokens, 1)
        sums["loss/policy"] += float(loss.detach())
        for key, value in m.items():
            sums[f"loss/{key}"] += float(value) * weight
    return dict(sums)
