"""Reward shaping (docs/algorithm.md section 2), applied at training time from the recorded counts.

Workers never need the curriculum state: rows carry ``outcome_reward``, ``step_reward``, ``n_tool_calls``,
``action_valid`` and ``success``; the learner adds the intrinsic term with the current ``mu(t)``.
"""

from __future__ import annotations

from torch import Tensor

from spear_stream.config import RewardConfig


def tool_call_reward(n_tool_calls: Tensor, cfg: RewardConfig) -> Tensor:
    """Intrinsic tool-call reward ``r_tc = min(cap, per_call * n_tool_calls)``. [N] -> [N] float."""
    return (cfg.tool_reward_per_call * n_tool_calls.float()).clamp(max=cfg.tool_reward_cap)


def shaped_reward(
    outcome_reward: Tensor,
    n_tool_calls: Tensor,
    mu: float,
    cfg: RewardConfig,
    *,
    success: Tensor | None = None,
) -> Tensor:
    """Shaped episode reward [N].

    ``episode``: ``R = R_outcome + mu * r_tc``.
    ``correct_only`` (Qwen3 math recipe): a correct answer (``success``) gets ``mu * 1[n_tool_calls > 0]``
    added, a wrong one nothing; rewarding tool use only when it led to a right answer avoids paying for
    tool spam on failures.
    """
    outcome = outcome_reward.float()
    if cfg.tool_reward_variant == "episode":
        return outcome + mu * tool_call_reward(n_tool_calls, cfg)
    if cfg.tool_reward_variant == "correct_only":
        if success is None:
            raise ValueError("tool_reward_variant 'correct_only' needs the per-row 'success' flags")
        bonus = (success.bool() & (n_tool_calls > 0)).float()
        return outcome + mu * bonus
    raise ValueError(f"unknown tool_reward_variant {cfg.tool_reward_variant!r}")


def step_reward_with_penalty(
    step_reward: Tensor, action_valid: Tensor, penalty: float | RewardConfig
) -> Tensor:
    """Per-step environment reward minus the invalid-action penalty on rows whose action did not parse. [N].

    The same subtraction applies to a row's episode-level reward in the reference code (the penalty lands on
    the row of the invalid step); the intrinsic tool reward is never part of step rewards (GiGPO returns).
    """
    amount = penalty.invalid_penalty if isinstance(penalty, RewardConfig) else float(penalty)
    return step_reward.float() - amount * (~action_valid.bool()).float()


def invalid_action_penalty(action_valid: Tensor, cfg: RewardConfig) -> Tensor:
    """The penalty to subtract from each row's reward: ``cfg.invalid_penalty`` where the action was invalid. [N]."""
    return cfg.invalid_penalty * (~action_valid.bool()).float()
