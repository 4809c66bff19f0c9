import pytest
import torch

from spear_stream.schema import SchemaError, make_row, pad_rows, unpad_row, validate_row


def row(**kw):
    base = dict(
        tokens=[5, 6, 7, 8, 9],
        loss_mask=[False, False, True, True, False],
        behavior_logp=[0.0, 0.0, -0.5, -1.0, 0.0],
        token_version=[-1, -1, 3, 4, -1],
        prompt_length=2,
    )
    base.update(kw)
    return make_row(**base)


def test_make_row_fills_defaults_and_policy_version():
    r = row(outcome_reward=10.0, group_id=7)
    assert int(r["length"]) == 5 and int(r["policy_version"]) == 3
    assert r["tokens"].dtype == torch.int64 and r["token_version"].dtype == torch.int32
    assert float(r["outcome_reward"]) == 10.0 and int(r["group_id"]) == 7


MUTATIONS = [  # (mutation of row(), the field the error names); tests/unit/test_group.py runs them too
    (lambda r: r.set("tokens", r["tokens"].float()), "tokens"),
    (lambda r: r.set("loss_mask", r["loss_mask"][:3]), "loss_mask"),
    (
        lambda r: r.set("behavior_logp", torch.tensor([0, 0, 0.5, -1, 0], dtype=torch.float32)),
        "behavior_logp",
    ),
    (
        lambda r: r.set("token_version", torch.tensor([0, -1, 3, 4, -1], dtype=torch.int32)),
        "token_version",
    ),
    # the version pattern: masked tokens >= 0, every other token exactly -1
    (
        lambda r: r.set("token_version", torch.tensor([-1, -1, -1, 4, -1], dtype=torch.int32)),
        "token_version",
    ),
    (
        lambda r: r.set("token_version", torch.tensor([-1, -1, 3, 4, -2], dtype=torch.int32)),
        "token_version",
    ),
    (
        lambda r: r.set("token_version", torch.tensor([-1, -1, 3, 4, 5], dtype=torch.int32)),
        "token_version",
    ),
    (lambda r: r.set("policy_version", torch.tensor(4)), "policy_version"),
    # context tokens carry 0; a positive log-probability anywhere is corrupt
    (
        lambda r: r.set("behavior_logp", torch.tensor([0.5, 0, -0.5, -1, 0], dtype=torch.float32)),
        "behavior_logp",
    ),
    (
        lambda r: r.set("behavior_logp", torch.tensor([0, 0, -0.5, float("-inf"), 0], dtype=torch.float32)),
        "behavior_logp",
    ),
    (lambda r: r.set("prompt_length", torch.tensor(9)), "prompt_length"),
    (lambda r: r.set("outcome_reward", torch.tensor(float("nan"))), "outcome_reward"),
    (lambda r: r.set("n_tool_calls", torch.tensor(-1)), "n_tool_calls"),
    (lambda r: r.set("extra", torch.tensor(1)), "extra"),
    (lambda r: r.del_("task_id"), "task_id"),
    (lambda r: r.set("loss_mask", torch.tensor([True, False, True, True, False])), "loss_mask"),
]


@pytest.mark.parametrize(("mutate", "field"), MUTATIONS)
def test_validator_names_the_offending_field(mutate, field):
    r = row()
    mutate(r)
    with pytest.raises(SchemaError, match=field):
        validate_row(r)


def test_validator_returns_the_rows_oldest_and_newest_version():
    assert validate_row(row()) == (3, 4)
    # no generated token: the row's own policy_version on both ends
    r = row(loss_mask=[False] * 5, token_version=[-1] * 5, behavior_logp=[0.0] * 5, policy_version=2)
    assert validate_row(r) == (2, 2)


def test_vocab_bound():
    with pytest.raises(SchemaError, match="tokens"):
        validate_row(row(), vocab_size=8)


def test_pad_unpad_round_trip():
    rows = [
        row(),
        row(
            tokens=[1, 2, 3],
            loss_mask=[False, True, True],
            behavior_logp=[0, -1, -2],
            token_version=[-1, 0, 0],
            prompt_length=1,
        ),
    ]
    dense = pad_rows(rows, max_len=8)
    assert dense["tokens"].shape == (2, 8) and dense["token_version"][1, 3:].eq(-1).all()
    for original, i in zip(rows, range(2)):
        back = unpad_row(dense[i])
        for key in original.keys():  # iterating a TensorDict walks its batch dim
            assert torch.equal(back[key], original[key]), key
