"""The jagged group (spear_stream/group.py): every rule of the row schema holds on the group path that the
receiver runs, padding matches the row-by-row padding, and rows come back as views."""

from __future__ import annotations

import pytest
import torch
from test_schema import MUTATIONS, row

from spear_stream.group import group_from_rows, group_rows, pad_group, validate_group
from spear_stream.schema import ALL_FIELDS, SchemaError, pad_rows


def other_row():
    return row(tokens=[1, 2, 3], loss_mask=[False, True, True], behavior_logp=[0, -1, -2],
               token_version=[-1, 0, 0], prompt_length=1)  # fmt: skip


@pytest.mark.parametrize(("mutate", "field"), MUTATIONS)
def test_every_row_rule_holds_on_the_group_path(mutate, field):
    """A bad row among good ones is refused, naming the field: by the sender's conversion (dtypes, shapes, keys,
    which the wire cannot carry wrongly) or by the receiver's vectorised check (values)."""
    bad = row()
    mutate(bad)
    with pytest.raises(SchemaError, match=field):
        validate_group(group_from_rows([other_row(), bad, row()]), vocab_size=100)


def test_a_good_group_gives_its_oldest_and_newest_version():
    quiet = row(loss_mask=[False] * 5, token_version=[-1] * 5, behavior_logp=[0.0] * 5, policy_version=1)
    assert validate_group(group_from_rows([row(), other_row(), quiet])) == (0, 4)
    with pytest.raises(SchemaError, match="tokens"):
        validate_group(group_from_rows([row()]), vocab_size=8)
    with pytest.raises(SchemaError, match="max_len"):
        validate_group(group_from_rows([row()]), max_len=4)
    with pytest.raises(SchemaError, match="rows"):
        validate_group(group_from_rows([row(), row()]), max_rows=1)


def test_layout_rows_and_padding():
    rows = [row(), other_row(), row(outcome_reward=2.5)]
    group = group_from_rows(rows)
    assert group["offsets"].tolist() == [0, 5, 8, 13]
    assert group["flat", "tokens"].tolist() == [5, 6, 7, 8, 9, 1, 2, 3, 5, 6, 7, 8, 9]
    assert group["rows", "outcome_reward"].tolist() == [0.0, 0.0, 2.5]
    back = group_rows(group)
    for got, expected in zip(back, rows, strict=True):
        assert all(torch.equal(got[k], expected[k]) for k in ALL_FIELDS)
    assert back[1]["tokens"].data_ptr() == group["flat", "tokens"][5:].data_ptr()  # a view, not a copy
    padded, reference = pad_group(group, 7, pad_token=99), pad_rows(rows, 7, pad_token=99)
    assert all(torch.equal(padded[k], reference[k]) for k in ALL_FIELDS)
    with pytest.raises(SchemaError, match="max_len"):
        pad_group(group, 4)
