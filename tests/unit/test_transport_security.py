"""Hostile peers against a live receiver: stolen routing ids, forged proofs, oversized or unauthenticated frames,
replay limits, sequence poisoning, and 1,000 fuzzed messages, none of which may cause an `internal` rejection."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
import zmq
from test_transport import TOKEN, RawWorker, handshake, make_group, pump

from spear_stream.config import TransportConfig
from spear_stream.schema import SCHEMA_VERSION
from spear_stream.transport import RolloutReceiver, RolloutSender, auth
from spear_stream.transport.common import worker_identity


def receiver(**kw) -> RolloutReceiver:
    return RolloutReceiver(TransportConfig(port=0, run_token=TOKEN, credits_per_worker=2), **kw)


def raw_socket(address: str, identity: bytes) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


def test_a_stolen_routing_id_cannot_take_over_a_live_worker_and_learns_no_secret() -> None:
    with receiver() as rx:
        worker = RolloutSender(rx.address, worker_id=3, run_token=TOKEN, send_timeout_s=10)
        thief = raw_socket(rx.address, worker_identity(3))  # knows the address and the id, not the token
        try:
            handshake(rx, worker)
            nonce = "ab" * 16
            hello = {
                "schema_version": SCHEMA_VERSION,
                "worker_id": 3,
                "seq": 0,
                "kind": "hello",
                "nonce": nonce,
            }
            thief.send(json.dumps(hello).encode())
            forged = {**hello, "kind": "auth", "proof": "00" * 32}
            thief.send(json.dumps(forged).encode())
            for _ in range(30):  # the real worker keeps its session: credits, groups, all accepted
                rx.poll(10)
                worker.poll(10)
            received = []
            while thief.poll(50):
                received.append(thief.recv())
            assert received == []  # the ROUTER refused the duplicate id: the thief hears nothing at all
            worker.reserve(timeout_s=10)
            worker.send_group(make_group([5], worker_id=3))
            assert len(pump(rx, lambda g: len(g) == 1)) == 1
            assert rx.counters["transport/sessions"] == 1 and rx.workers == [3]
        finally:
            worker.close()
            thief.close(linger=0)


def test_a_wrong_token_gets_a_nonce_and_nothing_else() -> None:
    with receiver() as rx:
        stranger = RawWorker(rx, 9, token="guessed")
        try:
            stranger.sock.send(
                json.dumps(
                    {
                        "schema_version": SCHEMA_VERSION,
                        "worker_id": 9,
                        "seq": 0,
                        "kind": "hello",
                        "nonce": "cd" * 16,
                    }
                ).encode()
            )
            challenge = stranger.recv("challenge")
            assert set(challenge) == {"kind", "nonce"} and TOKEN not in json.dumps(challenge)
            stranger.sock.send(
                json.dumps(
                    {
                        "schema_version": SCHEMA_VERSION,
                        "worker_id": 9,
                        "seq": 0,
                        "kind": "auth",
                        "proof": "ff" * 32,
                    }
                ).encode()
            )
            pump(rx, lambda _: rx.counters["transport/rejected/bad_auth"] == 1)
            assert 9 not in rx.workers and not rx.grant(9, 1)  # no session: no credit, no weights
            time.sleep(0.05)
            assert not stranger.sock.poll(50)
        finally:
            stranger.close()


def test_the_replays_limits_are_the_receivers() -> None:
    with receiver(max_len=32, max_rows=2) as rx:
        raw = RawWorker(rx, 4)
        try:
            raw.authenticate()
            raw.sock.send_multipart(
                raw.group(make_group([40], worker_id=4), 0)
            )  # a row longer than max_seq_len
            raw.sock.send_multipart(
                raw.group(make_group([5, 5, 5], worker_id=4), 0)
            )  # more rows than allowed
            raw.sock.send_multipart(raw.group(make_group([5, 6], worker_id=4), 0))
            assert len(pump(rx, lambda g: len(g) == 1)) == 1
            assert rx.counters["transport/rejected/row_too_long"] == 1
            assert rx.counters["transport/rejected/too_many_rows"] == 1
        finally:
            raw.close()


def test_a_rejected_group_cannot_poison_the_sequence() -> None:
    with receiver(vocab_size=1000) as rx:
        raw = RawWorker(rx, 5)
        try:
            raw.authenticate()
            bad = make_group([6], worker_id=5)
            bad[0]["tokens"][0] = 10**6  # out of vocabulary: rejected
            raw.sock.send_multipart(raw.group(bad, 10**20))  # with a huge sequence number
            raw.sock.send_multipart(raw.group(make_group([6], worker_id=5), 0))  # the next valid group
            raw.sock.send_multipart(
                raw.group(make_group([6], worker_id=5), 10**9)
            )  # skips beyond its credits
            assert [g.seq for g in pump(rx, lambda g: len(g) == 1)] == [0]
            # both far-off sequence numbers are refused before decoding: neither moved the sequence
            pump(rx, lambda _: rx.counters["transport/rejected/seq_jump"] == 2)
            assert rx.counters["transport/seq_gaps"] == 0
        finally:
            raw.close()


_BIG_UNAUTHENTICATED = """
import json, resource, sys, time, zmq
from spear_stream.config import TransportConfig
from spear_stream.transport import RolloutReceiver
rx = RolloutReceiver(TransportConfig(port=0, run_token="t"))
peer = zmq.Context.instance().socket(zmq.DEALER)
peer.setsockopt(zmq.ROUTING_ID, b"worker-1")
peer.connect(rx.address)
frame = b'{"kind": "hello", "nonce": "' + b"x" * (100 << 20) + b'"}'  # a 100 MB header, no session
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
peer.send(frame)
del frame
slowest, deadline = 0.0, time.monotonic() + 60
while rx.counters["transport/rejected"] == 0 and time.monotonic() < deadline:
    t0 = time.monotonic()
    rx.poll(10)
    slowest = max(slowest, time.monotonic() - t0)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_mb": (after - before) / 1024, "slowest_poll_s": slowest, **rx.counters}))
"""


def test_a_100mb_unauthenticated_header_is_dropped_unread() -> None:
    """Measured in a fresh process: its peak RSS is not muddied by earlier tests. The sender's own 100 MB frame
    counts in that process too, so the bound is the frame itself plus libzmq's one receive buffer."""
    out = subprocess.run(
        [sys.executable, "-c", _BIG_UNAUTHENTICATED], capture_output=True, text=True, timeout=120
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["transport/rejected/unauthenticated"] == 1
    assert (
        result["growth_mb"] < 2 * 100 + 20
    )  # the frame (sender) + the frame (receiver), never a parse of it
    assert result["slowest_poll_s"] < 0.5


def fuzz_headers(rng: random.Random, raw: RawWorker) -> list[list[bytes]]:
    """Messages of every category the probes found: junk, deep nesting, wrong types, forged tags, bad groups."""
    rows = make_group([5, 7], worker_id=raw.worker_id)
    keys = [
        "schema_version",
        "worker_id",
        "seq",
        "kind",
        "n_rows",
        "n_tokens",
        "wire",
        "policy_versions",
        "mac",
        "nonce",
    ]
    values = [None, True, -1, 2**70, 1.5, "", "x" * 300, [], [1, [2, [3]]], {}, {"a": {"b": [1]}}, "ab" * 16]
    out: list[list[bytes]] = []
    for i in range(1000):
        category = i % 8
        # each group its own sequence number: tampered buffers get past the sequence checks to the decoder
        good_frames = raw.group(rows, i)
        good = json.loads(good_frames[0])
        if category == 0:
            out.append([rng.randbytes(rng.randint(0, 200))])
        elif category == 1:
            depth = rng.randint(100, 100_000)
            out.append([("[" * depth + "]" * depth).encode()])
        elif category == 2:  # a group header with one field of the wrong type, tagged or not
            fields = dict(good)
            fields[rng.choice(keys)] = rng.choice(values)
            if rng.random() < 0.5:
                fields["mac"] = auth.tag(raw.key, fields)
            out.append([json.dumps(fields).encode(), *good_frames[1:]])
        elif category == 3:  # bytes of a buffer overwritten (offsets, lengths, bools, versions, log-probs)
            buffers = [bytearray(b) for b in good_frames[1:]]
            target = rng.randrange(len(buffers))
            if buffers[target]:
                at = rng.randrange(len(buffers[target]))
                buffers[target][at : at + 4] = rng.randbytes(4)
            out.append([good_frames[0], *map(bytes, buffers)])
        elif category == 4:  # a buffer cut or padded, or buffers missing
            buffers = list(good_frames[1:])
            target = rng.randrange(len(buffers))
            n = len(buffers[target])
            buffers[target] = buffers[target][: rng.randrange(n + 1)] + rng.randbytes(rng.randint(0, 64))
            out.append([good_frames[0], *buffers[: rng.choice([len(buffers), rng.randrange(len(buffers))])]])
        elif category == 5:  # control kinds with junk fields
            kind = rng.choice(["hello", "auth", "heartbeat", "bye", "group", "stats", "credit"])
            fields = {"schema_version": SCHEMA_VERSION, "worker_id": raw.worker_id, "seq": 0, "kind": kind,
                      rng.choice([*keys, "stats", "proof"]): rng.choice(values)}  # fmt: skip
            out.append([json.dumps(fields).encode()])
        elif category == 6:  # frame counts
            out.append([b"{}"] * rng.choice([2, 3, 5, 10, 11]))
        else:  # heartbeats with hostile stats, correctly tagged
            stats = {rng.choice(["a/b", "x" * 100, "ok", "$"]): rng.choice([1, -5, 1e30, "7", None])}
            out.append([raw.header(0, stats=stats)])
    return out


def test_1000_fuzzed_messages_are_rejected_without_an_internal_error() -> None:
    with receiver(vocab_size=1000, max_len=512, max_rows=64) as rx:
        raw = RawWorker(rx, 6)
        stranger = raw_socket(rx.address, b"not-a-worker")
        try:
            raw.authenticate()
            rng = random.Random(0)
            messages = fuzz_headers(rng, raw)
            for frames in messages:
                (raw.sock if rng.random() < 0.9 else stranger).send_multipart(frames)
            deadline = time.monotonic() + 60
            handled = (
                "transport/rejected",
                "transport/accepted_groups",
                "transport/hellos",  # a fuzzed hello with a good nonce is valid
                "transport/heartbeats",  # so are the tagged heartbeats (their hostile stats are dropped)
            )
            while sum(rx.counters[k] for k in handled) < 1000 + 1:  # + the real worker's own hello
                assert time.monotonic() < deadline, str(dict(rx.counters))
                rx.poll(20)
            assert rx.counters["transport/rejected/internal"] == 0, dict(rx.counters)
            assert (
                rx.counters["transport/rejected/bad_row"] + rx.counters["transport/rejected/bad_payload"] > 50
            )
            # the receiver still works: the real session carries on
            raw.sock.send_multipart(raw.group(make_group([5], worker_id=6), 1000))
            assert len(pump(rx, lambda g: len(g) == 1)) == 1
        finally:
            raw.close()
            stranger.close(linger=0)


def test_curve_encrypts_the_link_when_asked() -> None:
    if not zmq.has("curve"):
        return  # pyzmq's wheels ship CURVE; a custom libzmq may not
    with RolloutReceiver(TransportConfig(port=0, run_token=TOKEN, curve=True)) as rx:
        assert rx.curve_public_key
        plain = RolloutSender(rx.address, worker_id=1, run_token=TOKEN)  # no server key: the handshake fails
        sealed = RolloutSender(
            rx.address, worker_id=2, run_token=TOKEN, server_public_key=rx.curve_public_key
        )
        try:
            handshake(rx, sealed)
            for _ in range(20):
                rx.poll(10)
                plain.poll(10)
            assert rx.workers == [2] and not plain.authenticated
            sealed.reserve(timeout_s=10)
            sealed.send_group(make_group([5], worker_id=2))
            assert len(pump(rx, lambda g: len(g) == 1)) == 1
        finally:
            plain.close(bye=False, timeout_s=0.1)
            sealed.close()
    assert torch.__version__  # keeps the import (torch made the groups)


class _FailingReplay:
    """A replay that refuses the first group (as for a limit) and hits a bug on the second."""

    num_groups = 0

    def __init__(self) -> None:
        self.calls = 0

    def extend_group(self, rows) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ValueError("group larger than the replay")
        if self.calls == 2:
            raise RuntimeError("a bug")
        self.num_groups += 1


def test_no_group_can_end_the_run_in_the_learner_hub(tiny_model_dir, tmp_path) -> None:
    from spear_stream.config import load_config
    from spear_stream.learner.stream_source import StreamSource
    from spear_stream.models import load_tokenizer

    cfg = load_config(
        Path(__file__).resolve().parents[2] / "configs/tiny_guess.toml",
        ["--model.path", str(tiny_model_dir), "--run_dir", str(tmp_path / "run")],
    )
    cfg.run_path.mkdir(parents=True)
    source = StreamSource(cfg, load_tokenizer(cfg.model.path))
    key = json.loads((cfg.run_path / "connect.json").read_text())
    assert oct((cfg.run_path / "connect.json").stat().st_mode & 0o777) == "0o600"
    worker = RolloutSender(key["address"], worker_id=0, run_token=key["run_token"])
    replay = _FailingReplay()
    try:
        deadline = time.monotonic() + 20
        while not worker.authenticated or worker.credits < 3:
            assert time.monotonic() < deadline
            source._pump(replay, 10)  # type: ignore[arg-type]
            if 0 in source.receiver.workers and source.receiver.outstanding(0) < 3:
                source.receiver.grant(0, 3 - source.receiver.outstanding(0))
            worker.poll(10)
        for _ in range(3):
            rows = make_group([5], worker_id=0)
            rows[0]["tokens"] %= 300  # within the tiny model's vocabulary
            worker.send_group(rows)
        while replay.calls < 3:
            assert time.monotonic() < deadline
            source._pump(replay, 10)  # type: ignore[arg-type]
        metrics = source.metrics()
        assert metrics["replay/refused_groups"] == 2 and metrics["replay/refused_internal"] == 1
        assert replay.num_groups == 1 and metrics["rollout/groups_received"] == 1
    finally:
        worker.close()
        source.close()
