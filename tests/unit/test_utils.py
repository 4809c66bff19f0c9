"""Process-level helpers: the large-buffer malloc setting changes what it claims to (page faults on reuse)."""

import subprocess
import sys

import pytest

_PROBE = """
import resource, sys, torch
from spear_stream.utils import keep_large_buffers
if sys.argv[1] == "keep":
    assert keep_large_buffers()
for _ in range(8):  # first uses of the size fault their pages in (the heap grows a few buffers' worth)
    torch.empty(64 * 2**20, dtype=torch.uint8).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    torch.empty(64 * 2**20, dtype=torch.uint8).fill_(1)  # freed at once, allocated again
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(probe: str, mode: str) -> float:
    """Run a page-fault probe in a fresh process (malloc settings are per process); the number it prints."""
    out = subprocess.run(
        [sys.executable, "-c", probe, mode], capture_output=True, text=True, check=True, timeout=120
    )
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_large_buffers_reuses_freed_pages():
    pages = 3 * 64 * 2**20 // 4096
    # default glibc: a 64 MiB buffer is above the (capped) mmap threshold, so each reuse faults every page again
    assert _faults(_PROBE, "default") > pages // 2
    assert _faults(_PROBE, "keep") < pages // 20


_ZMQ_PROBE = """
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_large_buffers_reuses_frames_received_by_zmq_io_thread():
    """Frames are allocated in libzmq's I/O thread and freed in the main thread: one arena lets them be reused."""
    pages = 48 * 2**20 // 4096
    assert _faults(_ZMQ_PROBE, "keep") < pages // 5  # the heap may still grow by a buffer in the window
    assert _faults(_ZMQ_PROBE, "default") > pages // 2  # every frame faults in (nearly) all its pages
