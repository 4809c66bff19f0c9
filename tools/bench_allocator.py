"""Page faults per reused large buffer, with and without ``keep_large_buffers()`` (``spear_stream/utils.py``).

Two probes, each run in fresh processes (malloc settings are per process), medians of ``--repeats``:

* ``torch``: a 64 MiB tensor allocated and freed again and again by one thread (a learner's micro-batches);
* ``zmq``: 48 MiB frames allocated by libzmq's I/O thread and freed by the main thread (a learner receiving
  groups), one frame held while the next arrives.

Without the setting every reuse faults in (nearly) every page of the buffer; with it, (nearly) none. Page
faults depend on the allocator's state and the machine's load, so this is a benchmark, not a test: the suite
only checks that the setting applies (``tests/unit/test_utils.py``).

    python tools/bench_allocator.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

TORCH_PROBE = """
import resource, sys, torch
from spear_stream.utils import keep_large_buffers
if sys.argv[1] == "keep":
    assert keep_large_buffers()
for _ in range(8):  # first uses of the size fault their pages in (the heap grows a few buffers' worth)
    torch.empty(64 * 2**20, dtype=torch.uint8).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    torch.empty(64 * 2**20, dtype=torch.uint8).fill_(1)  # freed at once, allocated again
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""

ZMQ_PROBE = """
import resource, sys, threading, zmq
from spear_stream.utils import keep_large_buffers
if sys.argv[1] == "keep":
    assert keep_large_buffers()
size, n_messages, warmup = 48 * 2**20, 24, 8
ctx = zmq.Context()
pull = ctx.socket(zmq.PULL)
pull.setsockopt(zmq.RCVHWM, 2)
pull.bind("tcp://127.0.0.1:*")
address = pull.getsockopt_string(zmq.LAST_ENDPOINT)

def send():
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 2)
    push.connect(address)
    payload = memoryview(bytearray(size))
    for _ in range(n_messages):
        push.send(payload, copy=False)
    push.close(linger=-1)

sender = threading.Thread(target=send)
sender.start()
held = None
for i in range(n_messages):
    if i == warmup:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    frame = pull.recv(copy=False)  # allocated by libzmq's I/O thread
    held = frame  # the previous frame is freed here, by this (main) thread, as the learner frees a group
sender.join()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (n_messages - warmup))
pull.close(linger=0)
"""

PROBES = {"torch": (TORCH_PROBE, 64 * 2**20 // 4096), "zmq": (ZMQ_PROBE, 48 * 2**20 // 4096)}


def faults(probe: str, mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", probe, mode], capture_output=True, text=True, check=True, timeout=300
    )
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; medians of {args.repeats} runs, faults per reused buffer")
    print(f"{'probe':>6} {'pages':>7} {'default':>9} {'keep':>7}  keep/default")
    for name, (probe, pages) in PROBES.items():
        default = statistics.median(faults(probe, "default") for _ in range(args.repeats))
        keep = statistics.median(faults(probe, "keep") for _ in range(args.repeats))
        print(f"{name:>6} {pages:>7} {default:>9.0f} {keep:>7.0f}  {keep / max(default, 1):.3f}")


if __name__ == "__main__":
    main()
