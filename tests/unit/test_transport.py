"""Codec round trips and the ZeroMQ channel over real sockets on 127.0.0.1 (free ports only)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import torch
import zmq
from tensordict import TensorDict, lazy_stack

from spear_stream.config import TransportConfig
from spear_stream.schema import ALL_FIELDS, SCHEMA_VERSION, make_row
from spear_stream.transport import (
    ChannelStopped,
    CreditTimeout,
    DecodeError,
    ReceivedGroup,
    RolloutReceiver,
    RolloutSender,
    decode_group,
    encode_group,
    parse_header,
)
from spear_stream.transport.codec import rebuild_consolidated
from spear_stream.transport.common import worker_identity

TOKEN = "test-token"


def make_group(
    lengths: list[int], *, worker_id: int = 0, version: int = 3, seed: int = 0
) -> list[TensorDict]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i, n in enumerate(lengths):
        prompt = max(1, n // 3)
        mask = torch.arange(n) >= prompt
        rows.append(
            make_row(
                tokens=torch.randint(0, 900, (n,), generator=gen),
                loss_mask=mask,
                behavior_logp=torch.where(mask, -torch.rand(n, generator=gen) * 5, torch.zeros(n)),
                token_version=torch.where(mask, version + (torch.arange(n) % 2), -1).to(torch.int32),
                prompt_length=prompt,
                outcome_reward=float(torch.rand((), generator=gen)),
                group_id=11,
                traj_id=i,
                worker_id=worker_id,
                created_at=1.7e9 + 0.123456789 * i,
            )
        )
    return rows


def assert_rows_equal(got: list[TensorDict], expected: list[TensorDict]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert set(a.keys()) == set(ALL_FIELDS)
        for key, dtype in ALL_FIELDS.items():
            assert a[key].dtype == dtype == b[key].dtype, key
            assert a[key].shape == b[key].shape, key
            # bit-exact, floats included
            assert torch.equal(a[key].reshape(-1).view(torch.uint8), b[key].reshape(-1).view(torch.uint8)), (
                key
            )


# ------------------------------------------------------------------------------------------------- codec


def test_codec_round_trip_ragged_bit_exact() -> None:
    rows = make_group([5, 17, 3, 64, 2], worker_id=4)
    frames = encode_group(rows, run_token=TOKEN, worker_id=4, seq=9)
    header = parse_header(frames[0])
    assert header["n_rows"] == 5 and header["seq"] == 9 and header["kind"] == "group"
    assert header["policy_versions"] == [3, 4] and header["schema_version"] == SCHEMA_VERSION
    decoded = decode_group(header, bytes(frames[1]), vocab_size=900)
    assert_rows_equal(list(decoded.tensordicts), rows)


def test_codec_accepts_lazy_stack_and_dense_input() -> None:
    rows = make_group([6, 6, 6])
    for group in (lazy_stack(rows), torch.stack(rows)):
        frames = encode_group(group, run_token=TOKEN, worker_id=0, seq=0)
        decoded = decode_group(parse_header(frames[0]), frames[1])
        assert_rows_equal(list(decoded.tensordicts), rows)


def test_rebuild_consolidated_guard() -> None:
    """Guards the one call into tensordict's private rebuild (pinned tensordict 0.14.x)."""
    stack = lazy_stack(make_group([4, 9]))
    consolidated = stack.consolidate(metadata=True)
    meta = json.loads(json.dumps(consolidated._consolidated["metadata"]))
    rebuilt = rebuild_consolidated(meta, consolidated._consolidated["storage"].clone())
    assert_rows_equal(list(rebuilt.tensordicts), list(stack.tensordicts))


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda h: h["meta"]["tokens"]["0"]["leaves"]["tokens"].__setitem__(3, 10**9), "bad_meta"),
        (lambda h: h["meta"]["tokens"]["0"]["non_tensors"].__setitem__("x", ["y", [], None]), "bad_meta"),
        (lambda h: h["meta"]["tokens"].__setitem__("cls", "TensorDict"), "bad_meta"),
        (lambda h: h["meta"].__setitem__("cls", "LazyStackedTensorDict"), "bad_meta"),
        (
            lambda h: h["meta"]["leaves"]["length"].__setitem__(1, [3]),
            "bad_meta",
        ),  # a scalar column of 3 rows
        (lambda h: h["meta"]["leaves"].pop("task_id"), "bad_meta"),
        (
            lambda h: h["meta"]["tokens"]["1"]["leaves"].__setitem__("length", ["torch.int64", [], 0, 8, 0]),
            "bad_meta",
        ),
        (lambda h: h["meta"]["cls_metadata"].__setitem__("device", "cuda:0"), "bad_meta"),
        (lambda h: h.__setitem__("n_rows", 3), "bad_meta"),
        (lambda h: h.__setitem__("wire", 1), "wire_format"),
        (lambda h: h.__setitem__("policy_versions", [0, 9]), "header_mismatch"),
        (lambda h: h.__setitem__("worker_id", 5), "header_mismatch"),
    ],
)
def test_decode_rejects_tampered_headers(tamper, reason: str) -> None:
    frames = encode_group(make_group([4, 9]), run_token=TOKEN, worker_id=0, seq=0)
    header = parse_header(frames[0])
    tamper(header)
    with pytest.raises(DecodeError) as err:
        decode_group(header, bytes(frames[1]))
    assert err.value.reason == reason


@pytest.mark.parametrize("frame", [b"\xff\x00", b"[1, 2]", b'{"kind": "group"}', b'{"schema_version": true}'])
def test_parse_header_rejects_bad_shapes(frame: bytes) -> None:
    with pytest.raises(DecodeError) as err:
        parse_header(frame)
    assert err.value.reason == "bad_header"


# ------------------------------------------------------------------------------------------------- channel


@pytest.fixture
def receiver() -> Iterator[RolloutReceiver]:
    rx = RolloutReceiver(TransportConfig(port=0, run_token=TOKEN, credits_per_worker=2, max_message_mb=0.05))
    try:
        yield rx
    finally:
        rx.close()


def pump(rx: RolloutReceiver, until, timeout_s: float = 10.0) -> list[ReceivedGroup]:
    """Poll the receiver until ``until(groups)`` holds; fails the test after ``timeout_s``."""
    groups: list[ReceivedGroup] = []
    deadline = time.monotonic() + timeout_s
    while not until(groups):
        assert time.monotonic() < deadline, f"timed out; counters {dict(rx.counters)}"
        groups += rx.poll(50)
    return groups


def test_sender_and_receiver_exchange_groups(receiver: RolloutReceiver) -> None:
    assert receiver.address.startswith("tcp://127.0.0.1:")
    sender = RolloutSender(receiver.address, worker_id=3, run_token=TOKEN, send_timeout_s=10)
    try:
        pump(receiver, lambda _: 3 in receiver.workers)
        sent = [make_group([5 + i, 9, 2 + 3 * i], worker_id=3, seed=i) for i in range(5)]
        got: list[ReceivedGroup] = []
        for group in sent:  # 5 groups through 2 credits: auto top-up refills as groups arrive
            sender.reserve(timeout_s=10)
            sender.send_group(group)
            got += pump(receiver, lambda g: len(g) == 1)
        assert [g.seq for g in got] == [0, 1, 2, 3, 4]
        for received, group in zip(got, sent, strict=True):
            assert received.worker_id == 3 and received.policy_versions == (3, 4)
            assert_rows_equal(list(received.rows.tensordicts), group)
        assert receiver.counters["transport/accepted_groups"] == 5
        assert receiver.counters["transport/rejected"] == 0
        assert receiver.last_seen[3] <= time.monotonic() and receiver.dead_workers(timeout_s=60) == []
    finally:
        sender.close()


def test_credit_flow_control(receiver: RolloutReceiver) -> None:
    receiver.auto_credit = False
    sender = RolloutSender(receiver.address, worker_id=1, run_token=TOKEN, send_timeout_s=10)
    try:
        pump(receiver, lambda _: 1 in receiver.workers)
        assert receiver.grant(1, 2)
        sender.send_group(make_group([4], worker_id=1), timeout_s=10)
        sender.send_group(make_group([4], worker_id=1), timeout_s=10)
        with pytest.raises(CreditTimeout, match="no credit from the learner"):
            sender.send_group(make_group([4], worker_id=1), timeout_s=0.3)
        assert len(pump(receiver, lambda g: len(g) == 2)) == 2
        assert receiver.outstanding(1) == 0
        assert receiver.grant(1, 1)
        sender.send_group(make_group([4], worker_id=1), timeout_s=10)
        assert pump(receiver, lambda g: len(g) == 1)[0].seq == 2
        assert not receiver.grant(99, 1)  # unknown worker: unroutable, nothing granted
        assert receiver.outstanding(99) == 0 and receiver.counters["transport/control_unroutable"] == 1
    finally:
        sender.close()


def _header(worker_id: int, seq: int, kind: str = "hello", **extra) -> bytes:
    body = {
        "schema_version": SCHEMA_VERSION,
        "run_token": TOKEN,
        "worker_id": worker_id,
        "seq": seq,
        "kind": kind,
    }
    return json.dumps({**body, **extra}).encode()


def _group_frames(rows: list[TensorDict], seq: int, **override) -> list[bytes]:
    header, payload = encode_group(rows, run_token=TOKEN, worker_id=7, seq=seq)
    return [json.dumps({**json.loads(header), **override}).encode(), bytes(payload)]


def test_bad_messages_are_rejected_and_counted(receiver: RolloutReceiver) -> None:
    receiver.vocab_size = 1000
    raw = zmq.Context.instance().socket(zmq.DEALER)
    try:
        raw.setsockopt(zmq.ROUTING_ID, worker_identity(7))
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(receiver.address)
        raw.send(_header(7, 0))  # hello: credits are topped up after every group, so 2 always suffice
        wrong_dtype = make_group([6], worker_id=7)
        wrong_dtype[0]["tokens"] = wrong_dtype[0]["tokens"].to(torch.int32)
        out_of_vocab = make_group([6], worker_id=7)
        out_of_vocab[0]["tokens"][0] = 5000
        positive_logp = make_group([6], worker_id=7)
        positive_logp[0]["behavior_logp"][-1] = 0.5
        bad = {
            "bad_header": [b"\x00\xffgarbage"],
            "bad_frames": [b"a", b"b", b"c"],
            "bad_token": [_header(7, 0, run_token="nope")],
            "too_large": [_header(7, 0), b"\x00" * 80_000],
            "schema_version": [_header(7, 0, schema_version=SCHEMA_VERSION + 1)],
            "worker_mismatch": [_header(8, 0)],
            "bad_kind": [_header(7, 0, kind="party")],
        }
        for frames in bad.values():
            raw.send_multipart(frames)
        rows_bad = {"bad_row": [wrong_dtype, out_of_vocab, positive_logp]}
        for seq, rows in enumerate(rows_bad["bad_row"]):
            raw.send_multipart(_group_frames(rows, seq))
        raw.send_multipart(_group_frames(make_group([5], worker_id=7), 2))  # duplicate_seq
        good = make_group([5, 8], worker_id=7)
        raw.send_multipart(_group_frames(good, 3))
        groups = pump(receiver, lambda g: len(g) == 1)
        assert_rows_equal(list(groups[0].rows.tensordicts), good)
        counts = {reason: receiver.counters[f"transport/rejected/{reason}"] for reason in bad}
        assert counts == dict.fromkeys(bad, 1)
        assert receiver.counters["transport/rejected/bad_row"] == 3
        assert receiver.counters["transport/rejected/duplicate_seq"] == 1
        assert receiver.counters["transport/rejected"] == len(bad) + 4
        assert receiver.counters["transport/accepted_groups"] == 1
        # a group beyond the credits granted is refused
        receiver.auto_credit = False
        for seq in range(4, 4 + receiver.outstanding(7) + 1):
            raw.send_multipart(_group_frames(make_group([5], worker_id=7), seq))
        pump(receiver, lambda _: receiver.counters["transport/rejected/no_credit"] == 1)
    finally:
        raw.close(linger=0)


def test_control_messages_and_state(receiver: RolloutReceiver) -> None:
    receiver.announce_weights(2, "/runs/x/weights/v2")  # no worker yet: remembered for hello
    sender = RolloutSender(receiver.address, worker_id=5, run_token=TOKEN, start_seq=10, send_timeout_s=10)
    try:
        pump(receiver, lambda _: 5 in receiver.workers)
        deadline = time.monotonic() + 10
        while sender.latest_weights is None or sender.credits < 2:
            assert time.monotonic() < deadline
            sender.poll(50)
        deadline = time.monotonic() + 10
        assert (sender.latest_weights.version, sender.latest_weights.location) == (2, "/runs/x/weights/v2")
        assert receiver.announce_weights(3, "/runs/x/weights/v3") == [5]
        sender.send_group(make_group([4], worker_id=5))
        assert pump(receiver, lambda g: len(g) == 1)[0].seq == 10
        state = json.loads(json.dumps(receiver.state_dict()))  # JSON-able for checkpoints
        restored = RolloutReceiver(TransportConfig(port=0, run_token=TOKEN))
        try:
            restored.load_state_dict(state)
            assert restored.state_dict() == receiver.state_dict()
        finally:
            restored.close()
        assert receiver.stop_workers() == [5]
        while not sender.stop_requested:
            assert time.monotonic() < deadline
            sender.poll(50)
        with pytest.raises(ChannelStopped):
            sender.reserve(timeout_s=10)
        assert sender.latest_weights.version == 3
        time.sleep(0.05)
        assert receiver.dead_workers(timeout_s=0.01) == [5]
    finally:
        sender.close()
    pump(receiver, lambda _: 5 not in receiver.workers)  # bye


_EXIT_RIGHT_AFTER_SEND = """
import sys, torch
from spear_stream.schema import make_row
from spear_stream.transport import RolloutSender
n = 1_000_000  # ~17 MB per row: big buffers are mmap-backed, so freeing one early faults libzmq's reader
rows = [make_row(tokens=torch.zeros(n, dtype=torch.int64), loss_mask=torch.arange(n) >= 1,
                 behavior_logp=torch.zeros(n), token_version=torch.where(torch.arange(n) >= 1, 0, -1).int(),
                 prompt_length=1, worker_id=2) for _ in range(2)]
with RolloutSender(sys.argv[1], worker_id=2, run_token=sys.argv[2], send_timeout_s=60) as sender:
    sender.send_group(rows)
"""


def test_group_sent_right_before_process_exit_arrives() -> None:
    """close() flushes zero-copy groups; exiting with one in flight used to abort libzmq ("Bad address")."""
    cfg = TransportConfig(port=0, run_token=TOKEN, credits_per_worker=1, max_message_mb=64)
    with RolloutReceiver(cfg) as receiver:
        child = subprocess.Popen([sys.executable, "-c", _EXIT_RIGHT_AFTER_SEND, receiver.address, TOKEN])
        try:
            groups = pump(receiver, lambda g: len(g) == 1, timeout_s=120)
            assert child.wait(timeout=60) == 0
        finally:
            child.kill()
            child.wait()
    assert [int(row["length"]) for row in groups[0].rows.tensordicts] == [1_000_000, 1_000_000]
