"""Where a benchmark figure came from: every bench/ script writes its JSON through write_result, so
each file says when, on what machine, with which command and at which revision it was measured
(docs/performance.md quotes these files; a figure without them cannot be rerun or trusted)."""

import datetime
import json
import os
import platform
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def provenance():
    """{date (UTC), command, revision, machine, processor, cpus, load_avg, torch, gpu}: the
    context of a measurement. revision is git's short HEAD (None outside a checkout), with
    '+dirty' when the working tree differs from it; gpu only where CUDA is available."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip() or None
        if rev and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                  capture_output=True, text=True, timeout=10).stdout.strip():
            rev += "+dirty"
    except (OSError, subprocess.SubprocessError):
        rev = None
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(["python"] + sys.argv), "revision": rev, "machine": platform.platform(),
           "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    try:
        import torch
        out["torch"] = torch.__version__
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return out


def write_result(path, payload):
    """Write provenance() + payload as JSON to path (its folder made), atomically: a reader never
    sees half a file, and a failed run leaves the previous result in place."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({**provenance(), **payload}, f, indent=1)
    os.replace(tmp, path)
    print(f"wrote {path}")


def failure_text(error):
    """What a result row records of a measurement that raised: the exception's type and message,
    the message cut to 500 characters."""
    return f"{type(error).__name__}: {str(error).strip()[:500]}"
