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
from spear_stream.group import group_from_rows, group_rows
from spear_stream.schema import ALL_FIELDS, SCHEMA_VERSION, make_row
from spear_stream.transport import (
    ChannelStopped,
    CreditTimeout,
    DecodeError,
    ReceivedGroup,
    RolloutReceiver,
    RolloutSender,
    auth,
    decode_group,
    encode_group,
    parse_header,
)
from spear_stream.transport.codec import GROUP_FRAMES, parse_control, worker_header
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
    frames = encode_group(rows, key=None, worker_id=4, seq=9)
    assert len(frames) == 1 + len(GROUP_FRAMES)
    header = parse_header(frames[0])
    assert header["n_rows"] == 5 and header["n_tokens"] == 91 and header["seq"] == 9
    assert header["kind"] == "group" and header["wire"] == 3
    assert header["policy_versions"] == [3, 4] and header["schema_version"] == SCHEMA_VERSION
    decoded = decode_group(header, [bytes(f) for f in frames[1:]], vocab_size=900)
    assert decoded["offsets"].tolist() == [0, 5, 22, 25, 89, 91]
    assert_rows_equal(group_rows(decoded), rows)


def test_codec_accepts_lazy_stack_dense_and_jagged_input() -> None:
    rows = make_group([6, 6, 6])
    for group in (lazy_stack(rows), torch.stack(rows), rows, group_from_rows(rows)):
        frames = encode_group(group, key=None, worker_id=0, seq=0)
        decoded = decode_group(parse_header(frames[0]), frames[1:])
        assert_rows_equal(group_rows(decoded), rows)


def test_frames_are_views_of_the_groups_own_tensors() -> None:
    """Zero-copy: each buffer frame is the memory of a tensor of the group, not a copy of it."""
    group = group_from_rows(make_group([5, 7]))
    frames = encode_group(group, key=None, worker_id=0, seq=0)
    tokens = torch.frombuffer(frames[1], dtype=torch.int64)
    assert tokens.data_ptr() == group["flat", "tokens"].data_ptr()


def _tampered(tamper) -> tuple[dict, list[bytes]]:
    frames = encode_group(make_group([4, 9]), key=None, worker_id=0, seq=0)
    header, buffers = parse_header(frames[0]), [bytearray(f) for f in frames[1:]]
    tamper(header, buffers)
    return header, buffers


def _set_bytes(buffers, frame: int, at: int, value: bytes) -> None:
    buffers[frame][at : at + len(value)] = value


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda h, b: h.__setitem__("n_rows", 3), "bad_payload"),  # frame sizes no longer match
        (lambda h, b: h.__setitem__("n_tokens", 12), "bad_payload"),
        (lambda h, b: b.pop(), "bad_frames"),
        (lambda h, b: b[0].extend(b"\x00" * 8), "bad_payload"),
        (lambda h, b: _set_bytes(b, 4, 8, (5).to_bytes(8, "little")), "bad_row"),  # offsets vs lengths
        (lambda h, b: _set_bytes(b, 1, 0, b"\x02"), "bad_payload"),  # a bool that is neither 0 nor 1
        (lambda h, b: _set_bytes(b, 1, 0, b"\x01"), "bad_row"),  # a loss token inside the prompt
        (lambda h, b: h.__setitem__("policy_versions", [0, 9]), "header_mismatch"),
        (lambda h, b: h.__setitem__("worker_id", 5), "header_mismatch"),
    ],
)
def test_decode_rejects_tampered_groups(tamper, reason: str) -> None:
    header, buffers = _tampered(tamper)
    with pytest.raises(DecodeError) as err:
        decode_group(header, buffers)
    assert err.value.reason == reason


@pytest.mark.parametrize("wire", [1, 2, None, "3"])
def test_groups_of_other_wire_formats_are_refused_by_name(wire) -> None:
    frames = encode_group(make_group([4, 9]), key=None, worker_id=0, seq=0)
    fields = json.loads(frames[0])
    fields["wire"] = wire
    with pytest.raises(DecodeError) as err:
        parse_header(json.dumps(fields).encode())
    assert err.value.reason == "wire_format" and "this learner reads 3" in str(err.value)


@pytest.mark.parametrize(
    "frame", [b"\xff\x00", b"[1, 2]", b'{"kind": "group", "wire": 3}', b'{"schema_version": true}']
)
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


def handshake(rx: RolloutReceiver, sender: RolloutSender, timeout_s: float = 10.0) -> None:
    """Poll both ends until the sender's session is open (a worker polls all the time; a test must do it)."""
    deadline = time.monotonic() + timeout_s
    while sender.worker_id not in rx.workers or not sender.authenticated:
        assert time.monotonic() < deadline, f"no session; counters {dict(rx.counters)}"
        rx.poll(10)
        sender.poll(10)


def test_sender_and_receiver_exchange_groups(receiver: RolloutReceiver) -> None:
    assert receiver.address.startswith("tcp://127.0.0.1:")
    sender = RolloutSender(receiver.address, worker_id=3, run_token=TOKEN, send_timeout_s=10)
    try:
        handshake(receiver, sender)
        sent = [make_group([5 + i, 9, 2 + 3 * i], worker_id=3, seed=i) for i in range(5)]
        got: list[ReceivedGroup] = []
        for group in sent:  # 5 groups through 2 credits: auto top-up refills as groups arrive
            sender.reserve(timeout_s=10)
            sender.send_group(group)
            got += pump(receiver, lambda g: len(g) == 1)
        assert [g.seq for g in got] == [0, 1, 2, 3, 4]
        for received, group in zip(got, sent, strict=True):
            assert received.worker_id == 3 and received.policy_versions == (3, 4)
            assert_rows_equal(group_rows(received.group), group)
        assert receiver.counters["transport/accepted_groups"] == 5
        assert receiver.counters["transport/rejected"] == 0
        assert receiver.last_seen[3] <= time.monotonic() and receiver.dead_workers(timeout_s=60) == []
    finally:
        sender.close()


def test_credit_flow_control(receiver: RolloutReceiver) -> None:
    receiver.auto_credit = False
    sender = RolloutSender(receiver.address, worker_id=1, run_token=TOKEN, send_timeout_s=10)
    try:
        handshake(receiver, sender)
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
        assert not receiver.grant(99, 1)  # no session: nothing is even sent, nothing granted
        assert receiver.outstanding(99) == 0 and receiver.counters["transport/control_unroutable"] == 0
    finally:
        sender.close()


class RawWorker:
    """A DEALER speaking the protocol by hand: it authenticates like a worker, then sends whatever a test wants."""

    def __init__(self, receiver: RolloutReceiver, worker_id: int, token: str = TOKEN) -> None:
        self.rx, self.worker_id, self.token = receiver, worker_id, token.encode()
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, worker_identity(worker_id))
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(receiver.address)
        self.key: bytes | None = None

    def authenticate(self, seq: int = 0) -> None:
        nonce = auth.nonce()
        self.sock.send(
            json.dumps(
                worker_header("hello", key=None, worker_id=self.worker_id, seq=seq, nonce=nonce)
            ).encode()
        )
        challenge = self.recv("challenge")
        proof = auth.proof(self.token, self.worker_id, nonce, challenge["nonce"])
        self.key = auth.session_key(self.token, self.worker_id, nonce, challenge["nonce"])
        self.sock.send(
            json.dumps(
                worker_header("auth", key=None, worker_id=self.worker_id, seq=seq, proof=proof)
            ).encode()
        )
        pump(self.rx, lambda _: self.worker_id in self.rx.workers)

    def recv(self, kind: str, timeout_s: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.rx.poll(10)
            if self.sock.poll(10):
                message = parse_control(self.sock.recv(), self.key)
                if message is not None and message["kind"] == kind:
                    return message
        raise AssertionError(f"no {kind} message")

    def header(self, seq: int, kind: str = "heartbeat", sign: bool = True, **extra) -> bytes:
        fields = {
            "schema_version": SCHEMA_VERSION,
            "worker_id": self.worker_id,
            "seq": seq,
            "kind": kind,
            **extra,
        }
        if sign:
            fields["mac"] = auth.tag(self.key, fields)
        return json.dumps(fields).encode()

    def group(self, rows: list[TensorDict], seq: int, **override) -> list[bytes]:
        header, *buffers = encode_group(rows, key=None, worker_id=self.worker_id, seq=seq)
        fields = {**json.loads(header), **override}
        fields.pop("mac", None)
        fields["mac"] = auth.tag(self.key, fields)
        return [json.dumps(fields).encode(), *map(bytes, buffers)]

    def close(self) -> None:
        self.sock.close(linger=0)


def test_bad_messages_are_rejected_and_counted(receiver: RolloutReceiver) -> None:
    receiver.vocab_size = 1000
    raw = RawWorker(receiver, 7)
    try:
        raw.authenticate()  # credits are topped up after every group, so 2 always suffice
        out_of_vocab = make_group([6], worker_id=7)
        out_of_vocab[0]["tokens"][0] = 5000
        positive_logp = make_group([6], worker_id=7)
        positive_logp[0]["behavior_logp"][-1] = 0.5
        bad = {
            "bad_header": [b"\x00\xffgarbage"],
            "bad_frames": [b"a", b"b", b"c"],
            "bad_mac": [raw.header(0, sign=False)],
            "too_large": [raw.header(0), *[b"\x00" * 9000] * len(GROUP_FRAMES)],
            "schema_version": [raw.header(0, schema_version=SCHEMA_VERSION + 1)],
            "worker_mismatch": [raw.header(0, worker_id=8)],
            "bad_kind": [raw.header(0, kind="party")],
        }
        for frames in bad.values():
            raw.sock.send_multipart(frames)
        for seq, rows in enumerate([out_of_vocab, positive_logp]):
            raw.sock.send_multipart(raw.group(rows, seq))
        halved = raw.group(make_group([6], worker_id=7), 2)
        halved[1] = halved[1][: len(halved[1]) // 2]  # int32 token ids where int64 belong
        raw.sock.send_multipart(halved)
        good = make_group([5, 8], worker_id=7)
        raw.sock.send_multipart(raw.group(good, 0))  # rejected groups did not advance the sequence
        raw.sock.send_multipart(raw.group(make_group([5], worker_id=7), 0))  # duplicate_seq
        groups = pump(receiver, lambda g: len(g) == 1)
        assert_rows_equal(group_rows(groups[0].group), good)
        pump(receiver, lambda _: receiver.counters["transport/rejected/duplicate_seq"] == 1)
        counts = {reason: receiver.counters[f"transport/rejected/{reason}"] for reason in bad}
        assert counts == dict.fromkeys(bad, 1)
        assert receiver.counters["transport/rejected/bad_row"] == 2
        assert receiver.counters["transport/rejected/bad_payload"] == 1
        assert receiver.counters["transport/rejected"] == len(bad) + 4
        assert receiver.counters["transport/accepted_groups"] == 1
        assert receiver.counters["transport/rejected/internal"] == 0
        # a group beyond the credits granted is refused
        receiver.auto_credit = False
        for seq in range(1, 1 + receiver.outstanding(7) + 1):
            raw.sock.send_multipart(raw.group(make_group([5], worker_id=7), seq))
        pump(receiver, lambda _: receiver.counters["transport/rejected/no_credit"] == 1)
    finally:
        raw.close()


def test_control_messages_and_state(receiver: RolloutReceiver) -> None:
    receiver.announce_weights(2, "/runs/x/weights/v2")  # no worker yet: remembered for hello
    sender = RolloutSender(receiver.address, worker_id=5, run_token=TOKEN, start_seq=10, send_timeout_s=10)
    try:
        handshake(receiver, sender)
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
    sender.reserve(60)
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
    assert groups[0].group["rows", "length"].tolist() == [1_000_000, 1_000_000]
