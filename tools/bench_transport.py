"""Throughput of the rollout transport vs raw ZeroMQ, between two processes on loopback TCP.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_transport.py [--sizes-mb 0.0625 1 8 50] [--rows 8] [--repeats 5]

For each payload size: (a) raw ZeroMQ: a DEALER sends preallocated bytes of that size zero-copy to a ROUTER that
receives them (no decode); (b) the transport: a RolloutSender turns ``--rows`` ragged schema rows into a jagged
group every message (one concatenation per per-token field, then zero-copy frames, credits) and the learner's
RolloutReceiver authenticates, receives, builds the group and validates it; (c) the same without validation: a
bare ROUTER speaking the protocol that only builds the group from the frames (shows what validation costs).
GB/s counts payload bytes after the first message (which pays connection set-up), after a warm-up run of each
mode (``--warmup-mb``). The receiver's CPU time per group (all its threads, libzmq's I/O thread included) is
printed for (a) and (b). Both processes call ``keep_large_buffers()`` as the learner and the rollout workers do.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import resource
import statistics
import time
from multiprocessing.connection import Connection

import torch
import zmq

from spear_stream.config import TransportConfig
from spear_stream.group import validate_group
from spear_stream.schema import make_row
from spear_stream.transport import RolloutReceiver, RolloutSender, auth
from spear_stream.transport.codec import encode_control, group_from_buffers, parse_header
from spear_stream.utils import keep_large_buffers

TOKEN = "bench"
BYTES_PER_TOKEN = 8 + 1 + 4 + 4  # tokens int64, loss_mask bool, behavior_logp float32, token_version int32
WINDOW = 4  # groups in flight: credits for the transport, HWM for raw ZeroMQ
TIMEOUT_S = 120.0  # per measurement: a dead sender must not hang the benchmark


def make_rows(total_bytes: int, n_rows: int, worker_id: int) -> list:
    """``n_rows`` rows of slightly different lengths adding up to about ``total_bytes``."""
    base = max(4, total_bytes // (n_rows * BYTES_PER_TOKEN))
    rows = []
    for i in range(n_rows):
        n = base + i - n_rows // 2
        mask = torch.arange(n) >= 2
        rows.append(
            make_row(
                tokens=torch.randint(0, 32000, (n,)),
                loss_mask=mask,
                behavior_logp=torch.where(mask, -torch.rand(n), torch.zeros(n)),
                token_version=torch.where(mask, 7, -1).to(torch.int32),
                prompt_length=2,
                worker_id=worker_id,
            )
        )
    return rows


def sender_main(conn: Connection) -> None:
    """Child process: runs the sending side of each command until told to exit."""
    torch.set_num_threads(1)
    keep_large_buffers()  # as every rollout worker process does (spear_stream/rollout/main.py)
    while (command := conn.recv())[0] != "exit":
        mode, address, nbytes, n_rows, n_messages = command
        if mode == "raw":
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.SNDHWM, WINDOW)
            sock.connect(address)
            payload = memoryview(bytearray(os.urandom(1024)) * (nbytes // 1024))
            for _ in range(n_messages):
                sock.send_multipart([b"raw", payload], copy=False)
            sock.close(linger=-1)
        else:
            rows = make_rows(nbytes, n_rows, worker_id=1)
            with RolloutSender(address, worker_id=1, run_token=TOKEN, send_timeout_s=120) as sender:
                for _ in range(n_messages):
                    sender.send_group(rows)
        conn.send("done")


def cpu_s() -> float:
    """CPU time of this process, every thread (libzmq's I/O thread included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def receive_raw(conn: Connection, nbytes: int, n_messages: int) -> tuple[float, float]:
    """GB/s and receiver CPU ms per message."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.RCVHWM, WINDOW)
    try:
        sock.bind("tcp://127.0.0.1:*")
        conn.send(("raw", sock.getsockopt_string(zmq.LAST_ENDPOINT), nbytes, 0, n_messages))
        sizes, times, cpu = [], [], []
        sock.setsockopt(zmq.RCVTIMEO, int(TIMEOUT_S * 1000))
        for _ in range(n_messages):
            frames = sock.recv_multipart(copy=False)
            times.append(time.perf_counter())
            cpu.append(cpu_s())
            sizes.append(len(frames[2]))
        conn.recv()
        return sum(sizes[1:]) / (times[-1] - times[0]) / 1e9, (cpu[-1] - cpu[0]) / (n_messages - 1) * 1e3
    finally:
        sock.close(linger=0)


def receive_transport(
    conn: Connection, nbytes: int, n_rows: int, n_messages: int
) -> tuple[float, float, float, float]:
    """GB/s, receiver CPU ms per group, ms to validate one group, and the group's MB (in this process)."""
    cfg = TransportConfig(run_token=TOKEN, credits_per_worker=WINDOW, max_message_mb=4 * nbytes / 2**20 + 16)
    with RolloutReceiver(cfg) as receiver:
        conn.send(("td", receiver.address, nbytes, n_rows, n_messages))
        sizes, times, cpu, last = [], [], [], None
        deadline = time.perf_counter() + TIMEOUT_S
        while len(sizes) < n_messages:
            if time.perf_counter() > deadline:
                raise TimeoutError(
                    f"received {len(sizes)}/{n_messages} groups; counters {dict(receiver.counters)}"
                )
            for group in receiver.poll(1000, max_messages=1):
                times.append(time.perf_counter())
                cpu.append(cpu_s())
                sizes.append(group.nbytes)
                last = group
            if receiver.counters["transport/rejected"]:
                raise RuntimeError(f"bench messages rejected: {dict(receiver.counters)}")
        conn.recv()
        assert last is not None
        start = time.perf_counter()
        validate_group(last.group, vocab_size=32000)
        validate_ms = (time.perf_counter() - start) * 1e3
        gbps = sum(sizes[1:]) / (times[-1] - times[0]) / 1e9
        return gbps, (cpu[-1] - cpu[0]) / (n_messages - 1) * 1e3, validate_ms, sizes[-1] / 1e6


def receive_unvalidated(conn: Connection, nbytes: int, n_rows: int, n_messages: int) -> float:
    """Like the RolloutReceiver path minus all checks: rebuild the rows, grant a credit back."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    try:
        sock.bind("tcp://127.0.0.1:*")
        sock.setsockopt(zmq.RCVTIMEO, int(TIMEOUT_S * 1000))
        conn.send(("td", sock.getsockopt_string(zmq.LAST_ENDPOINT), nbytes, n_rows, n_messages))
        sizes, times = [], []
        key: bytes | None = None
        nonces = ("", "")
        while len(sizes) < n_messages:
            identity, *frames = sock.recv_multipart(copy=False)
            header = parse_header(frames[0].buffer)
            if header["kind"] == "hello":  # the session handshake, as the receiver runs it (no checks)
                nonces = (header["nonce"], auth.nonce())
                sock.send_multipart([identity.bytes, encode_control(None, "challenge", nonce=nonces[1])])
            elif header["kind"] == "auth":
                key = auth.session_key(TOKEN.encode(), header["worker_id"], *nonces)
                sock.send_multipart([identity.bytes, encode_control(key, "credit", n=WINDOW)])
            if header["kind"] != "group":
                continue
            group = group_from_buffers(header, frames[1:])
            assert group["rows"].batch_size[0] == n_rows
            sock.send_multipart([identity.bytes, encode_control(key, "credit", n=1)])
            times.append(time.perf_counter())
            sizes.append(sum(len(f) for f in frames))
        conn.recv()
        return sum(sizes[1:]) / (times[-1] - times[0]) / 1e9
    finally:
        sock.close(linger=0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[0.0625, 1.0, 8.0, 50.0])
    parser.add_argument(
        "--rows", type=int, default=8, help="rows per group (the encode/decode cost is per row)"
    )
    parser.add_argument("--megabytes-per-run", type=float, default=3000.0, help="data sent per measurement")
    parser.add_argument("--max-messages", type=int, default=300)
    parser.add_argument(
        "--repeats", type=int, default=3, help="measurements per size (the median is printed)"
    )
    parser.add_argument(
        "--warmup-mb", type=float, default=1000.0, help="data each mode sends per size before measuring"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_large_buffers()  # as the learner does (spear_stream/learner/loop.py)
    # The sender leaves as soon as it has sent; the receiver's last credits then find no one (a warning each).
    logging.getLogger("spear_stream.transport").setLevel(logging.ERROR)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=sender_main, args=(child,), daemon=True)
    proc.start()
    print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (shared machine: numbers are noisy)"
    )
    print(
        f"{'payload':>9} {'raw ZeroMQ':>12} {'transport':>12} {'ratio':>6} {'no-validate':>12} {'ratio':>6}"
        f"  receiver CPU per group (raw / transport)"
    )
    try:
        for size_mb in args.sizes_mb:
            nbytes = int(size_mb * 2**20)
            n_messages = max(5, min(args.max_messages, int(args.megabytes_per_run / size_mb)))
            ratios, bare_ratios, cpu_raw, cpu_td = [], [], [], []
            # Warm-up, not measured: a long-running learner and worker are in steady state, with their heaps
            # grown to hold the groups in flight; the first few hundred MB of a fresh process are not.
            warmup = max(3, min(n_messages, int(args.warmup_mb / size_mb)))
            receive_raw(parent, nbytes, warmup)
            receive_transport(parent, nbytes, args.rows, warmup)
            receive_unvalidated(parent, nbytes, args.rows, warmup)
            for _ in range(args.repeats):  # interleaved, so a burst of load hits every mode alike
                raw, raw_cpu = receive_raw(parent, nbytes, n_messages)
                td, td_cpu, validate_ms, actual_mb = receive_transport(parent, nbytes, args.rows, n_messages)
                bare = receive_unvalidated(parent, nbytes, args.rows, n_messages)
                ratios.append(td / raw)
                bare_ratios.append(bare / raw)
                cpu_raw.append(raw_cpu)
                cpu_td.append(td_cpu)
                print(
                    f"{actual_mb:>7.2f}MB {raw:>8.2f}GB/s {td:>8.2f}GB/s {td / raw:>6.0%} {bare:>8.2f}GB/s "
                    f"{bare / raw:>6.0%}  {raw_cpu:.3f} / {td_cpu:.3f} ms   ({args.rows} rows x {n_messages} "
                    f"msgs; validating one group: {validate_ms:.2f} ms)"
                )
            if args.repeats > 1:
                print(
                    f"{actual_mb:>7.2f}MB median of {args.repeats}: transport/raw {statistics.median(ratios):.0%}, "
                    f"no-validate/raw {statistics.median(bare_ratios):.0%}, receiver CPU per group "
                    f"{statistics.median(cpu_raw):.3f} ms raw, {statistics.median(cpu_td):.3f} ms transport"
                )
    finally:
        parent.send(("exit",))
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()


if __name__ == "__main__":
    main()
