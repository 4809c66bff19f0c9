"""FreshReplay: whole groups, consume-once FIFO, staleness drops, on-disk sidecar, state round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from spear_stream.replay import FreshReplay, load_fresh_rows, read_fresh_meta
from spear_stream.schema import ALL_FIELDS, make_row, pad_rows

MAX_LEN = 24


def make_group(group_id: int, lengths: list[int], version: int) -> list[TensorDict]:
    rows = []
    for i, n in enumerate(lengths):
        mask = torch.arange(n) >= 2
        rows.append(
            make_row(
                tokens=torch.arange(n) + 100 * group_id,
                loss_mask=mask,
                behavior_logp=torch.where(mask, -0.5 - 0.01 * torch.arange(n), torch.zeros(n)),
                token_version=torch.where(mask, version + (torch.arange(n) % 2), -1).to(torch.int32),
                prompt_length=2,
                group_id=group_id,
                traj_id=i,
                outcome_reward=0.25 * i,
            )
        )
    return rows


def assert_same_rows(got, expected: list[TensorDict]) -> None:
    got = list(got.tensordicts)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        for key, dtype in ALL_FIELDS.items():
            assert a[key].dtype == dtype and torch.equal(a[key], b[key]), key


@pytest.fixture(params=["memory", "disk"])
def storage_dir(request, tmp_path: Path) -> Path | None:
    return tmp_path if request.param == "disk" else None


def test_whole_groups_fifo_consumed_once(storage_dir: Path | None) -> None:
    replay = FreshReplay(capacity=32, max_len=MAX_LEN, storage_dir=storage_dir)
    groups = {gid: make_group(gid, [5 + gid, 9, 3], version=4) for gid in range(3)}
    for rows in groups.values():
        replay.extend_group(rows)
    assert len(replay) == 9 and replay.num_groups == 3
    first = replay.sample_groups(2, current_version=4, max_staleness=1)
    assert [int(g[0]["group_id"]) for g in first] == [0, 1]
    assert_same_rows(first[0], groups[0])
    assert_same_rows(first[1], groups[1])
    rest = replay.sample_groups(5, current_version=4, max_staleness=1)
    assert len(rest) == 1
    assert_same_rows(rest[0], groups[2])
    assert replay.sample_groups(1, current_version=4, max_staleness=1) == []
    assert replay.stats()["replay/consumed_groups"] == 3 and len(replay) == 0


def test_stale_groups_dropped_counted_never_returned(storage_dir: Path | None) -> None:
    replay = FreshReplay(capacity=64, max_len=MAX_LEN, storage_dir=storage_dir)
    versions = [1, 5, 2, 6, 4]
    for gid, version in enumerate(versions):
        replay.extend_group(make_group(gid, [6, 7], version=version))
    sampled = replay.sample_groups(10, current_version=6, max_staleness=2)  # keep oldest version >= 4
    assert [int(g[0]["group_id"]) for g in sampled] == [1, 3, 4]
    for group in sampled:
        for row in group.tensordicts:
            assert int(row["token_version"][row["loss_mask"]].min()) >= 4
    stats = replay.stats()
    assert stats["replay/dropped_stale_groups"] == 2 and stats["replay/dropped_stale_rows"] == 4
    assert stats["replay/consumed_groups"] == 3


def test_overflow_overwrites_oldest_group(storage_dir: Path | None) -> None:
    replay = FreshReplay(capacity=5, max_len=MAX_LEN, storage_dir=storage_dir)
    groups = [make_group(gid, [4, 5], version=0) for gid in range(3)]
    for rows in groups:
        replay.extend_group(rows)
    assert replay.counters["replay/dropped_overflow_groups"] == 1
    sampled = replay.sample_groups(5, current_version=0, max_staleness=0)
    assert [int(g[0]["group_id"]) for g in sampled] == [1, 2]
    assert_same_rows(sampled[1], groups[2])  # wrapped around the ring intact
    with pytest.raises(ValueError, match="does not fit"):
        replay.extend_group(make_group(9, [4] * 6, version=0))


def test_on_disk_storage_readable_through_sidecar(tmp_path: Path) -> None:
    replay = FreshReplay(capacity=8, max_len=MAX_LEN, storage_dir=tmp_path)
    assert read_fresh_meta(tmp_path)["len"] == 0 and load_fresh_rows(tmp_path) == (
        read_fresh_meta(tmp_path),
        None,
    )
    groups = [make_group(gid, [5, 6, 7], version=gid) for gid in range(3)]  # 9 rows > 8: group 0 overwritten
    for rows in groups:
        replay.extend_group(rows)
    replay.sample_groups(1, current_version=2, max_staleness=5)  # consumes group 1
    script = "import json, sys; m = json.load(open(sys.argv[1])); print(m['len'], m['write_count'])"
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "fresh" / "meta.json")], capture_output=True, text=True
    )
    assert out.stdout.split() == ["3", "9"]  # another process sees the live fill count, torch-free
    meta, rows = load_fresh_rows(tmp_path)
    assert meta["num_groups"] == 1 and meta["oldest_version"] == 2 and meta["newest_version"] == 3
    expected = pad_rows(groups[2], MAX_LEN)
    for key in ALL_FIELDS:
        assert torch.equal(rows[key], expected[key]), key


def test_state_round_trip(storage_dir: Path | None, tmp_path: Path) -> None:
    replay = FreshReplay(capacity=16, max_len=MAX_LEN, storage_dir=storage_dir)
    for gid, version in enumerate([0, 3, 3, 4]):
        replay.extend_group(make_group(gid, [3 + gid, 8], version=version))
    replay.sample_groups(1, current_version=3, max_staleness=1)  # drops group 0, consumes group 1
    torch.save(replay.state_dict(), tmp_path / "fresh.pt")
    restored_dir = None if storage_dir is None else tmp_path / "restored"
    restored = FreshReplay(capacity=16, max_len=MAX_LEN, storage_dir=restored_dir)
    restored.load_state_dict(torch.load(tmp_path / "fresh.pt", weights_only=False))
    assert restored.stats() == replay.stats()
    if restored_dir is not None:
        assert json.loads((restored_dir / "fresh" / "meta.json").read_text())["len"] == 4
    for a, b in zip(
        restored.sample_groups(9, current_version=4, max_staleness=1),
        replay.sample_groups(9, current_version=4, max_staleness=1),
        strict=True,
    ):
        assert_same_rows(a, list(b.tensordicts))
    assert restored.stats() == replay.stats()
