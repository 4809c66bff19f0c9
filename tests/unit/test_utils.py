"""Process-level helpers. How much ``keep_large_buffers()`` saves (page faults on reuse) depends on load and the
allocator's state, so ``tools/bench_allocator.py`` measures it; here, deterministically, that the setting does
what it claims: a large buffer comes from the reusable heap instead of a fresh mmap (glibc's ``mallinfo2``)."""

import subprocess
import sys

import pytest

_PROBE = """
import ctypes, sys

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
from spear_stream.utils import keep_large_buffers
if sys.argv[1] == "keep":
    assert keep_large_buffers() and keep_large_buffers()  # idempotent
before = libc.mallinfo2().hblkhd  # bytes held in mmapped chunks
buffer = libc.malloc(64 << 20)
print(libc.mallinfo2().hblkhd - before)
libc.free(ctypes.c_void_p(buffer))
"""


def _mmapped_bytes(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_large_buffers_serves_large_buffers_from_the_heap():
    assert _mmapped_bytes("default") >= 64 << 20  # glibc: a fresh mapping, unmapped again on free
    assert _mmapped_bytes("keep") == 0  # from the heap, kept for the next buffer
