"""bench/bench_dispersion.py: a variant that raises is reported and the others still measured (the
first GPU run must not lose the reference and tiled figures to a Triton kernel that fails to
compile), and the tiles mode's JSON at a tiny size."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import bench_dispersion  # noqa: E402


def test_a_variant_that_raises_is_left_out_and_reported():
    calls = []

    def broken():
        raise RuntimeError("kernel did not compile")
    variants = {"fine": lambda: calls.append(1), "broken": broken}
    failed = {}
    times = bench_dispersion.interleaved(variants, 3, "cpu", failed)
    assert list(times) == ["fine"] and len(times["fine"]) == 3 and len(calls) == 4  # warm-up + 3 rounds
    assert failed == {"broken": "RuntimeError: kernel did not compile"}
    assert bench_dispersion.failed_rows(failed) == [{"variant": "broken", "error": failed["broken"]}]


def test_tiles_mode_writes_every_variant(tmp_path):
    out = tmp_path / "tiles.json"
    result = subprocess.run([sys.executable, "bench/bench_dispersion.py", "--tiles", "--seq", "96", "--n-embd", "16",
                             "--reps", "2", "--tile-sizes", "32", "--json", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["results"]
    names = [row["variant"] for row in rows]
    assert names[:3] == ["reference", "dense", "tiled, tile 32"] and "logged pair cosine" in names
    assert any(name.startswith("its matmuls only") for name in names)
    assert all(len(row["times_s"]) == 2 and row["median_s"] > 0 for row in rows)


@pytest.mark.parametrize("flags, message", [(["--old", "HEAD"], "use it with --tiles"),
                                            (["--tiles", "--old", "no-such-rev"], "cannot read disperse.py")])
def test_bad_flags_are_refused_without_a_traceback(flags, message):
    result = subprocess.run([sys.executable, "bench/bench_dispersion.py", *flags, "--seq", "64", "--n-embd", "16",
                             "--reps", "1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_triton_names_set_the_dot_precision_and_other_names_reset_it(monkeypatch):
    pytest.importorskip("triton")
    import disperse
    import disperse_triton
    monkeypatch.setattr(disperse, "IMPLEMENTATION", "auto")
    monkeypatch.setattr(disperse_triton, "DOT_PRECISION", "ieee")
    bench_dispersion.use("triton-tf32x3")
    assert (disperse.IMPLEMENTATION, disperse_triton.DOT_PRECISION) == ("triton", "tf32x3")
    bench_dispersion.use("auto")  # e.g. the "loss alone" variant after it: the default precision again
    assert (disperse.IMPLEMENTATION, disperse_triton.DOT_PRECISION) == ("auto", "ieee")
