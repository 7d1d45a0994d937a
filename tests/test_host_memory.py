"""`host_memory.keep_freed_memory`: a tensor freed and allocated again reuses its pages instead of faulting in new ones."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from rlhfscale.host_memory import keep_freed_memory
    assert keep_freed_memory()
x = torch.ones(4 << 20)  # last step's tensor, 16 MiB, written and freed
del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
y = torch.ones(3 << 20)  # this step's, 12 MiB: 3072 pages of 4 KiB
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_freed_tensor_s_pages_are_reused():
    assert faults("default") > 1000  # glibc returned the 16 MiB mapping; every page faults in again
    assert faults("keep") < 100
