"""system.tune_malloc: after it, big blocks that are freed and allocated again, step after step, are
reused once the heap has grown to hold them, not mapped and page-faulted in afresh (the sys time of CPU training, docs/performance.md). Each arm
runs in its own process, so this test process's malloc keeps its defaults."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

PROBE = """
import json, resource, sys
import torch
sys.path.insert(0, {repo!r})
import system
applied = system.tune_malloc() if sys.argv[1] == "tuned" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
per_step = []
for step in range(10):  # like training steps: a few big buffers alive together, all freed at the step's end
    before = faults()
    bufs = [torch.empty(64 * 2**20 // 4) for _ in range(3)]  # 64 MB each: above glibc's largest default mmap threshold
    for t in bufs:
        t.fill_(1.0)
    del bufs, t
    per_step.append(faults() - before)
print(json.dumps({{"applied": applied, "faults": per_step}}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_freed_big_blocks_are_reused_after_tune_malloc():
    got = {}
    for arm in ("default", "tuned"):
        out = subprocess.run([sys.executable, "-c", PROBE.format(repo=str(REPO)), arm], capture_output=True, text=True,
                             env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, check=True)
        got[arm] = json.loads(out.stdout.strip().splitlines()[-1])
    if not got["tuned"]["applied"]:
        pytest.skip("not glibc: tune_malloc is a no-op here")
    pages = 3 * 64 * 2**20 // 4096  # one step's buffers
    # default: every step maps its buffers afresh, every page faulted in again
    assert all(f > 0.9 * pages for f in got["default"]["faults"])
    # tuned: the heap grows for a few steps (glibc's aligned allocations do not always fit the holes
    # the last step left), then the freed blocks are reused and the steady state faults nothing
    assert sum(got["tuned"]["faults"][-2:]) < 0.1 * pages


def test_malloc_tuning_is_a_setting():
    import train
    assert train.DEFAULTS["malloc_tuning"] is True
