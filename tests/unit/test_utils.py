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


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_large_buffers_reuses_freed_pages():
    pages = 3 * 64 * 2**20 // 4096
    # default glibc: a 64 MiB buffer is above the (capped) mmap threshold, so each reuse faults every page again
    assert _faults("default") > pages // 2
    assert _faults("keep") < pages // 20
