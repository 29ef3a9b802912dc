"""train.tune_malloc: after it, a big block that is freed and allocated again is reused, not
mapped and page-faulted in afresh (the sys time of CPU training, docs/performance.md). Each arm
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
import train
applied = train.tune_malloc() if sys.argv[1] == "tuned" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = torch.empty(64 * 2**20 // 4)  # 64 MB: above glibc's largest default mmap threshold (32 MB)
a.fill_(1.0)
del a
before = faults()
b = torch.empty(64 * 2**20 // 4)
b.fill_(2.0)
print(json.dumps({{"applied": applied, "faults": faults() - before}}))
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
    pages = 64 * 2**20 // 4096
    assert got["default"]["faults"] > 0.9 * pages  # mapped afresh: every page faulted in again
    assert got["tuned"]["faults"] < 0.1 * pages  # the freed block was reused


def test_malloc_tuning_is_a_setting():
    import train
    assert train._defaults["malloc_tuning"] is True
