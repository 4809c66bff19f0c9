"""The learner's batch arithmetic, by hand: prepare_batch (rewards, advantages, filters), loss_over_rows (the
code the trainer runs for both loss terms), and how much of a batch fresh groups, replay and credits supply."""

from __future__ import annotations

import math

import pytest
import torch

from spear_stream.algo.curriculum import CurriculumValues
from spear_stream.config import load_config
from spear_stream.learner.batches import BatchAssembler
from spear_stream.learner.step import loss_over_rows, prepare_batch
from spear_stream.learner.stream_source import credits_to_grant
from spear_stream.schema import make_row

LOG_HALF = math.log(0.5)


def row(gen: list[int], *, logp: float = LOG_HALF, **scalars) -> object:
    """A row of one prompt token then ``gen`` (loss tokens), each generated with log-prob ``logp``."""
    return make_row(
        tokens=[0, *gen],
        loss_mask=[False] + [True] * len(gen),
        behavior_logp=[0.0] + [logp] * len(gen),
        token_version=[-1] + [0] * len(gen),
        prompt_length=1,
        **scalars,
    )


# ------------------------------------------------------------------------------------------- prepare_batch


def test_prepare_batch_shapes_rewards_computes_grpo_advantages_and_filters() -> None:
    algo = load_config(
        None,
        ["--algo.advantage.std_norm", "false", "--algo.filters.overlong", "true",
         "--algo.filters.group_keep_ratio", "0.5"],
    ).algo  # fmt: skip
    rows = [
        row([1], group_id=1, outcome_reward=10.0, n_tool_calls=2, success=True),
        row([1], group_id=1, outcome_reward=0.0, n_tool_calls=5, overlong=True),
        row([1], group_id=2, outcome_reward=0.0, n_tool_calls=0, action_valid=False),
        row([1], group_id=2, outcome_reward=0.0, n_tool_calls=1),
    ]
    batch = prepare_batch(rows, algo, mu=0.5)
    # R = outcome + mu * min(1, 0.1 * calls) - 0.1 * invalid = [10.1, 0.25, -0.1, 0.05]
    torch.testing.assert_close(batch.rewards, torch.tensor([10.1, 0.25, -0.1, 0.05]))
    # no std: A = R - group mean; group 1 mean 5.175, group 2 mean -0.025
    torch.testing.assert_close(batch.advantages, torch.tensor([4.925, -4.925, -0.075, 0.075]))
    # row 1 is overlong (filter on); group 2 has the lower reward std, and keep ratio 0.5 drops it
    assert batch.loss_keep.tolist() == [True, False, False, False]
    assert batch.metrics["rollout/success_rate"] == 0.25
    assert batch.metrics["rollout/invalid_frac"] == 0.25
    assert batch.metrics["filter/overlong"] == 1.0


# ------------------------------------------------------------------------------------------- loss_over_rows


class ConstantLogits(torch.nn.Module):
    """logits = ``bias`` at every position, whatever the input: logp(token) = log_softmax(bias)[token]."""

    def __init__(self, vocab: int = 2) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(vocab))
        self.forwards = 0

    def forward(self, input_ids, attention_mask):
        self.forwards += 1
        logits = self.bias.expand(*input_ids.shape, -1)
        return type("Out", (), {"logits": logits})()


def run_loss(kind: str, rows, advantages, *, sil_gamma=None, weights=None, extra=(), version=None):
    algo = load_config(None, ["--algo.loss.kind", kind, *extra]).algo
    model = ConstantLogits()
    n_tokens = sum(int(r["loss_mask"].sum()) for r in rows)
    m = loss_over_rows(
        model, rows, torch.tensor(advantages), torch.ones(len(rows), dtype=torch.bool), algo,
        temperature=1.0, norm_len=8, token_budget=10_000, num_tokens=n_tokens, num_seqs=len(rows),
        cov=algo.loss.cov, sil_gamma=sil_gamma, weights=weights, version=version,
    )  # fmt: skip
    return m, model


def test_ppo_loss_and_gradient_by_hand() -> None:
    # logp = log 0.5 = behaviour: ratio 1, loss = -(1 * 2 tokens + 0.5 * 1 token) / 3 tokens
    m, model = run_loss("ppo", [row([1, 1]), row([0])], [1.0, 0.5])
    assert m["loss/policy"] == pytest.approx(-2.5 / 3)
    # d logp(1) / d bias = [-0.5, 0.5]; d logp(0) / d bias = [0.5, -0.5]
    # grad = -(1/3) * (2 * 1 * [-0.5, 0.5] + 0.5 * [0.5, -0.5]) = [0.25, -0.25]
    torch.testing.assert_close(model.bias.grad, torch.tensor([0.25, -0.25]))
    assert m["loss/entropy"] == pytest.approx(math.log(2))


def test_decoupled_loss_uses_one_forward_and_truncates_importance_weights() -> None:
    # row 0 was generated with p = 0.25 (behaviour), the proximal policy gives 0.5: w = 2
    rows = [row([1, 1], logp=math.log(0.25)), row([0])]
    m, model = run_loss("decoupled", rows, [1.0, 0.5])
    assert model.forwards == 1  # the proximal log-probs are this forward's, detached: no second pass
    assert m["loss/policy"] == pytest.approx(-(1.0 * 2 * 2 + 0.5) / 3)
    m, _ = run_loss("decoupled", rows, [1.0, 0.5], extra=["--algo.loss.is_cap", "1.5"])
    # w = 2 > cap: row 0's tokens are dropped, still counted in the denominator
    assert m["loss/policy"] == pytest.approx(-0.5 / 3)
    assert m["loss/dropped_frac"] == pytest.approx(2 / 3)


def test_sil_term_is_gamma_times_weighted_surrogate_without_entropy_bonus() -> None:
    # A_tilde = [1, 0.5], importance weights [2, 0.5], gamma 0.5, entropy bonus configured but not applied
    m, model = run_loss(
        "decoupled", [row([1, 1]), row([0])], [1.0, 0.5], sil_gamma=0.5, weights=torch.tensor([2.0, 0.5]),
        extra=["--algo.loss.entropy_coef", "0.1"],
    )  # fmt: skip
    assert m["loss/policy"] == pytest.approx(0.5 * -(1.0 * 2 * 2 + 0.5 * 0.5) / 3)
    assert m["loss/gamma"] == 0.5 and "loss/entropy" not in m
    # gradient = 0.5 * -(1/3) * (2 * 2 * [-0.5, 0.5] + 0.25 * [0.5, -0.5]) = [0.3125, -0.3125]
    torch.testing.assert_close(model.bias.grad, torch.tensor([0.3125, -0.3125]))


# ------------------------------------------------------------------------------------------- batch shares


def values(gamma: float = 1.0, sil_fraction: float = 0.25, max_staleness: int = 2) -> CurriculumValues:
    return CurriculumValues(
        mu=0.0, gamma=gamma, sil_fraction=sil_fraction, sync_every=1, max_staleness=max_staleness
    )


class NoTokenizer:
    pad_token_id = 0


def assembler(*overrides: str) -> BatchAssembler:
    cfg = load_config(None, ["--replay.on_disk", "false", "--sil.enabled", "true", *overrides])
    return BatchAssembler(cfg, NoTokenizer())


def test_fixed_stream_batches_give_sil_fraction_of_the_batch_to_replay() -> None:
    a = assembler()  # 16 groups of 8 per step
    assert a.sil is not None
    a.sil.num_eligible = lambda: 32  # type: ignore[method-assign]
    # share = min(0.25, 32 / 128) -> 16 - round(0.25 * 16) = 12 fresh groups
    assert a.fresh_groups_for_step(values()) == 12
    a.sil.num_eligible = lambda: 8  # type: ignore[method-assign]
    assert a.fresh_groups_for_step(values()) == 15  # share 8 / 128: one group's worth
    assert a.fresh_groups_for_step(values(gamma=0.0)) == 16  # no replay while gamma(t) = 0
    a.sil_share_groups = 4
    assert a.sil_rows_for(96, values()) == 32  # 96 fresh rows for 12 groups -> 4 groups' worth = 32 rows


def test_extra_stream_batches_add_replay_rows_on_top() -> None:
    a = assembler("--sil.stream_batch", "extra")
    a.sil.num_eligible = lambda: 1000  # type: ignore[method-assign,union-attr]
    assert a.fresh_groups_for_step(values()) == 16
    assert a.sil_rows_for(128, values()) == 43  # n / (n + 128) = 0.25 -> n = 42.67


class ScriptedSource:
    """Delivers groups of 2 rows on demand (what InProcessSource does, without an engine)."""

    def __init__(self) -> None:
        self.next_group = 0

    def fill(self, replay, need, version, values, per_step, *, should_stop) -> None:
        while replay.num_groups < need and not should_stop():
            g = self.next_group
            replay.extend_group(
                [row([1], group_id=g, traj_id=2 * g), row([1], group_id=g, traj_id=2 * g + 1)]
            )
            self.next_group += 1


def test_next_fresh_takes_the_step_share_and_cuts_the_last_step_to_the_budget() -> None:
    a = assembler("--sil.enabled", "false", "--env.groups_per_step", "3", "--env.group_size", "2")
    source = ScriptedSource()
    rows = a.next_fresh(source, version=0, values=values())
    assert [int(r["group_id"]) for r in rows] == [0, 0, 1, 1, 2, 2] and a.fresh_groups_in_batch == 3
    rows = a.next_fresh(source, version=1, values=values(), groups_left=1)  # max_groups budget: 1 group left
    assert [int(r["group_id"]) for r in rows] == [3, 3] and a.fresh_groups_in_batch == 1


def test_a_stop_while_waiting_takes_nothing_from_the_replay() -> None:
    a = assembler("--sil.enabled", "false", "--env.groups_per_step", "3", "--env.group_size", "2")
    source = ScriptedSource()
    source.fill(a.fresh, 2, 0, values(), 3, should_stop=lambda: False)  # 2 of the 3 groups have arrived
    assert a.next_fresh(source, version=0, values=values(), should_stop=lambda: True) is None
    assert a.fresh.num_groups == 2  # kept for the stop checkpoint


def test_credits_bound_what_is_in_flight() -> None:
    # async: (max_staleness + 1) batches of 4 = 12, less 3 buffered and 5 in flight
    assert credits_to_grant("async", per_step=4, max_staleness=2, buffered=3, in_flight=5) == 4
    assert (
        credits_to_grant("async", per_step=4, max_staleness=0, buffered=3, in_flight=5) == 0
    )  # never negative
    # sync: exactly one batch, generated by the version just published
    assert credits_to_grant("sync", per_step=4, max_staleness=2, buffered=1, in_flight=0) == 3


def test_engine_learner_logprob_gap_is_measured_on_tokens_of_the_trained_version() -> None:
    # row 0: 2 tokens by version 0 with engine log-prob log 0.25 (learner: log 0.5); row 1: version 3 (ignored)
    stale = make_row(tokens=[0, 0], loss_mask=[False, True], behavior_logp=[0.0, -5.0], token_version=[-1, 3],
                     prompt_length=1)  # fmt: skip
    m, _ = run_loss("ppo", [row([1, 1], logp=math.log(0.25)), stale], [1.0, 0.5], version=0)
    assert m["loss/logprob_diff_tokens"] == 2.0
    assert m["loss/logprob_diff_sum"] == pytest.approx(2 * math.log(2))
