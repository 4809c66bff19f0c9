"""Policy losses (docs/algorithm.md section 5 and the SIL loss of section 6).

All functions are pure: tensors in, ``(loss, metrics)`` out. Shapes: B rows (sequences) by T tokens; every
per-token tensor is right-padded and ``mask`` marks the loss tokens (policy-generated, not filtered).

Global normalisation: ``num_tokens`` / ``num_seqs`` are the counts of the *whole* learner batch (all
micro-batches on all data-parallel ranks), so summing the micro-batch losses gives exactly the full-batch
loss and its gradient. Use :func:`loss_token_counts` on each micro-batch's mask and sum.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from spear_stream.config import CovConfig

Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]

# exp() of a log-ratio beyond this overflows float32 gradients; tokens that far off-policy are clipped anyway.
_MAX_LOG_RATIO = 20.0


def loss_token_counts(mask: Tensor) -> tuple[int, int]:
    """(loss tokens, rows with at least one loss token) of a [B, T] mask: the terms to sum into global counts."""
    m = mask.bool()
    return int(m.sum()), int(m.any(dim=-1).sum())


def aggregate(
    token_loss: Tensor,
    mask: Tensor,
    mode: Aggregation,
    *,
    norm_len: int,
    num_tokens: int | None = None,
    num_seqs: int | None = None,
) -> Tensor:
    """Reduce token losses [B, T] over the loss tokens of ``mask`` [B, T] to a scalar.

    token-mean: ``sum / num_tokens``. seq-mean-token-mean: ``sum_i(mean of row i) / num_seqs``.
    seq-mean-token-sum-norm (Dr. GRPO): ``sum / (num_seqs * norm_len)``, a constant divisor, so long and short
    answers get the same per-token weight. Counts default to this batch's (rows without loss tokens do not count).
    """
    m = mask.bool()
    masked = torch.where(m, token_loss, torch.zeros_like(token_loss))
    if mode == "token-mean":
        denom = num_tokens if num_tokens is not None else int(m.sum())
        return masked.sum() / max(denom, 1)
    n_seqs = num_seqs if num_seqs is not None else int(m.any(dim=-1).sum())
    if mode == "seq-mean-token-mean":
        row_tokens = m.sum(dim=-1).clamp(min=1).to(masked.dtype)
        return (masked.sum(dim=-1) / row_tokens).sum() / max(n_seqs, 1)
    if mode == "seq-mean-token-sum-norm":
        if norm_len <= 0:
            raise ValueError("seq-mean-token-sum-norm needs norm_len > 0 (the maximum response length)")
        return masked.sum() / (max(n_seqs, 1) * norm_len)
    raise ValueError(f"unknown aggregation {mode!r}")


def token_covariance(advantages: Tensor, logp: Tensor, mask: Tensor) -> Tensor:
    """Per-token ``(A - mean(A)) * (logp - mean(logp))`` with means over the valid tokens; -inf elsewhere. [B, T]."""
    m = mask.bool()
    n = m.sum().clamp(min=1)
    adv = advantages.detach().float()
    lp = logp.detach().float()
    zero = torch.zeros_like(lp)
    mean_adv = torch.where(m, adv, zero).sum() / n
    mean_lp = torch.where(m, lp, zero).sum() / n
    cov = (adv - mean_adv) * (lp - mean_lp)
    return torch.where(m, cov, torch.full_like(cov, -math.inf))


def _budget(ratio: float, n_valid: int) -> int:
    return max(1, math.floor(ratio * n_valid))


def clip_cov_select(
    advantages: Tensor,
    logp: Tensor,
    mask: Tensor,
    clipped: Tensor,
    *,
    ratio: float,
    lb: float,
    ub: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Clip-Cov (arXiv 2505.22617): tokens whose gradient is cut. All [B, T]; returns bool [B, T].

    Candidates are valid, not PPO-clipped tokens with ``lb < cov < ub``; ``max(1, floor(ratio * n_valid))`` of
    them are drawn uniformly without replacement (all of them if fewer, none if there are none).
    """
    m = mask.bool()
    n_valid = int(m.sum())
    selected = torch.zeros_like(m)
    if n_valid == 0:
        return selected
    cov = token_covariance(advantages, logp, m)  # means over all valid tokens, clipped ones included
    cov = cov.masked_fill(clipped.bool(), -math.inf)
    candidates = ((cov > lb) & (cov < ub)).flatten().nonzero().squeeze(1)
    k = _budget(ratio, n_valid)
    if candidates.numel() > k:
        device = generator.device if generator is not None else candidates.device
        perm = torch.randperm(candidates.numel(), generator=generator, device=device)[:k]
        candidates = candidates[perm.to(candidates.device)]
    selected.view(-1)[candidates] = True
    return selected


def kl_cov_select(advantages: Tensor, logp: Tensor, mask: Tensor, *, ratio: float) -> Tensor:
    """KL-Cov: the top ``max(1, floor(ratio * n_valid))`` valid tokens by covariance. All [B, T]; bool [B, T]."""
    m = mask.bool()
    n_valid = int(m.sum())
    selected = torch.zeros_like(m)
    if n_valid == 0:
        return selected
    # Means over all valid tokens, as the means of Clip-Cov; but PPO-clipped tokens stay eligible here since
    # the KL penalty still has a gradient on them.
    cov = token_covariance(advantages, logp, m)
    top = torch.topk(cov.flatten(), min(_budget(ratio, n_valid), n_valid)).indices
    selected.view(-1)[top] = True
    return selected


def _as_token_tensor(advantages: Tensor, like: Tensor) -> Tensor:
    # A scalar advantage per row ([B]) is broadcast to every token of the row.
    return advantages[:, None].expand_as(like) if advantages.dim() == 1 else advantages.expand_as(like)


def _masked_mean(values: Tensor, m: Tensor) -> float:
    n = int(m.sum())
    return float(torch.where(m, values, torch.zeros_like(values)).sum()) / n if n else 0.0


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float = 0.0,
    aggregation: Aggregation = "token-mean",
    norm_len: int = 0,
    num_tokens: int | None = None,
    num_seqs: int | None = None,
    behavior_logp: Tensor | None = None,
    is_cap: float | None = None,
    cov: CovConfig | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    sample_weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate with optional dual-clip, decoupled importance weights, Clip-/KL-Cov and entropy bonus.

    Args:
        logp: [B, T] log-probs of the policy being trained (carries the gradient).
        old_logp: [B, T] log-probs anchoring the trust region: the behaviour policy's in the PPO form,
            the proximal policy's (recomputed by the learner) in the decoupled form.
        advantages: [B, T] (or [B], broadcast over tokens).
        mask: [B, T] bool, loss tokens.
        behavior_logp: [B, T] engine log-probs; given => decoupled (AReaL) form with importance weight
            ``w = exp(old_logp - behavior_logp)``; tokens with ``w > is_cap`` are dropped (zero loss, counted).
        sample_weights: [B] per-row multipliers (prioritized-replay importance weights).
        entropy: [B, T] per-token policy entropy, for the bonus ``- entropy_coef * aggregate(entropy)``.

    Per token ``L = max(-A rho, -A clip(rho, 1 - clip_low, 1 + clip_high))``, and ``min(L, -dual_clip * A)``
    for A < 0 when ``dual_clip > 0``. Dropped and Clip-Cov tokens keep counting in the denominators (their
    loss is 0), as masked-out tokens do in the reference code.
    """
    valid = mask.bool()
    adv = _as_token_tensor(advantages, logp).detach()
    zero = torch.zeros_like(logp)
    kept = valid
    weight = torch.ones_like(logp)
    if behavior_logp is not None:
        log_w = (
            torch.where(valid, old_logp - behavior_logp, zero).detach().clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        )
        weight = log_w.exp()
        if is_cap is not None:
            kept = valid & (weight <= is_cap)
    # Masked positions get log-ratio 0: exp() of padding garbage must not produce inf * 0 = nan gradients.
    log_ratio = torch.where(kept, logp - old_logp.detach(), zero).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = log_ratio.exp()
    surr = -adv * ratio
    surr_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    token_loss = torch.maximum(surr, surr_clipped)
    clipped = kept & (surr_clipped > surr)
    dual = torch.zeros_like(valid)
    if dual_clip > 0:
        lower_bound = -dual_clip * adv
        dual = kept & (adv < 0) & (token_loss > lower_bound)
        token_loss = torch.where(adv < 0, torch.minimum(token_loss, lower_bound), token_loss)
    selected = torch.zeros_like(valid)
    if cov is not None and cov.mode == "clip_cov":
        # Dual-clipped tokens have no gradient either: "already clipped", not worth a Clip-Cov slot.
        selected = clip_cov_select(
            adv, logp, kept, clipped | dual, ratio=cov.ratio, lb=cov.lb, ub=cov.ub, generator=generator
        )
        token_loss = torch.where(selected, zero, token_loss)
    elif cov is not None and cov.mode == "kl_cov":
        selected = kl_cov_select(adv, logp, kept, ratio=cov.ratio)
        token_loss = token_loss + torch.where(selected, cov.kl_coef * log_ratio.abs(), zero)
    token_loss = token_loss * weight
    if sample_weights is not None:
        token_loss = token_loss * sample_weights.detach()[:, None].to(token_loss.dtype)
    token_loss = torch.where(kept, token_loss, zero)
    counts = {"num_tokens": num_tokens, "num_seqs": num_seqs}
    loss = aggregate(token_loss, valid, aggregation, norm_len=norm_len, **counts)
    metrics = _loss_metrics(valid, kept, clipped, dual, selected, ratio, log_ratio, weight, behavior_logp)
    if entropy is not None:
        ent = torch.where(kept, entropy, zero)
        metrics["entropy"] = _masked_mean(ent.detach(), kept)
        if entropy_coef != 0.0:
            loss = loss - entropy_coef * aggregate(ent, valid, aggregation, norm_len=norm_len, **counts)
    return loss, metrics


def _loss_metrics(
    valid: Tensor,
    kept: Tensor,
    clipped: Tensor,
    dual: Tensor,
    selected: Tensor,
    ratio: Tensor,
    log_ratio: Tensor,
    weight: Tensor,
    behavior_logp: Tensor | None,
) -> dict[str, float]:
    n_valid = int(valid.sum())
    n_kept = int(kept.sum())
    frac = (lambda x: float(x.sum()) / n_kept) if n_kept else (lambda x: 0.0)
    # k3 estimator of KL(old || new): unbiased and always >= 0.
    approx_kl = _masked_mean((ratio - 1.0 - log_ratio).detach(), kept)
    ess = 1.0
    if behavior_logp is not None and n_kept:
        w = weight[kept].double()
        ess = float(w.sum() ** 2 / (n_kept * (w**2).sum()))
    n_dropped = n_valid - n_kept
    return {
        "clip_frac": frac(clipped),
        "dual_clip_frac": frac(dual),
        "approx_kl": approx_kl,
        "ess": ess,
        "dropped_frac": n_dropped / n_valid if n_valid else 0.0,
        "dropped_tokens": float(n_dropped),
        "cov_selected_frac": frac(selected),
        "is_weight_mean": _masked_mean(weight, kept) if behavior_logp is not None else 1.0,
    }


def sil_loss(
    logp: Tensor,
    behavior_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    gamma: float,
    clip_low: float,
    clip_high: float,
    dual_clip: float = 0.0,
    aggregation: Aggregation = "token-mean",
    norm_len: int = 0,
    cov: CovConfig | None = None,
    sample_weights: Tensor | None = None,
    num_tokens: int | None = None,
    num_seqs: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Self-imitation loss: ``gamma(t) *`` the clipped surrogate on replayed rows. Shapes as :func:`policy_loss`.

    The trust region is anchored at the stored behaviour log-probs (no recompute), ``advantages`` are the
    recalibrated ``A_tilde``, ``cov`` carries the replay Clip-Cov parameters, ``sample_weights`` [B] the
    prioritized sampler's importance weights. No KL, no entropy bonus.
    """
    loss, metrics = policy_loss(
        logp,
        behavior_logp,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        dual_clip=dual_clip,
        aggregation=aggregation,
        norm_len=norm_len,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        cov=cov,
        sample_weights=sample_weights,
        generator=generator,
    )
    metrics["gamma"] = float(gamma)
    return gamma * loss, metrics


def kl_to_reference(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    *,
    aggregation: Aggregation,
    norm_len: int,
    num_tokens: int | None = None,
    num_seqs: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """KL(pi_theta || pi_ref) per token with the low-variance k3 estimator, aggregated like the policy loss.

    logp, ref_logp, mask: [B, T]. ``k3 = exp(ref - logp) - (ref - logp) - 1 >= 0`` (Schulman's unbiased,
    non-negative estimator, as in verl's ``low_var_kl``), clamped to [-10, 10] in log space for stability.
    Returns (aggregated KL [], metrics {"kl_ref"}). Dr.BoT trick 1 turns this term off (kl_coef = 0).
    """
    log_ratio = torch.where(mask, (ref_logp - logp).clamp(-10.0, 10.0), torch.zeros_like(logp))
    k3 = log_ratio.exp() - log_ratio - 1.0
    kl = aggregate(k3, mask, aggregation, norm_len=norm_len, num_tokens=num_tokens, num_seqs=num_seqs)
    return kl, {"kl_ref": _masked_mean(k3.detach(), mask)}
