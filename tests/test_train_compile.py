"""train.py end to end with --compile=True on the CPU (inductor): the dispersion loss, a control
built from its gradient, and NEFTune noise all run through the compiled model, and the logged
losses equal the eager run's to a float32 tolerance (the compiled kernels sum in other orders).

Inductor compiles are slow, so there are two compiled runs and they share one compile cache:
both ask the model for the same thing (hidden states, with NEFTune noise), so the second reuses
the first one's kernels."""

import pytest

from conftest import TINY_MODEL, read_metrics, run_train

RUNS = {
    "angular+neftune": ["--dispersion=angular", "--dispersion_weight=0.5", "--neftune_alpha=5.0"],
    "random_direction+neftune": ["--dispersion=random_direction", "--dispersion_weight=0.5", "--neftune_alpha=5.0"],
}


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    return {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path_factory.mktemp("inductor_cache"))}


@pytest.mark.parametrize("name", RUNS)
def test_compiled_training_matches_eager(name, tiny_dataset, tmp_path, compile_cache):
    common = [*TINY_MODEL, f"--dataset={tiny_dataset}", "--max_iters=3", "--eval_interval=1000", "--eval_iters=1",
              "--log_interval=1", "--learning_rate=1e-2", "--warmup_iters=0", *RUNS[name]]
    losses = {}
    for compiled in (False, True):
        out = tmp_path / f"compile{compiled}"
        run_train([*common, f"--out_dir={out}", f"--compile={compiled}"], env_extra=compile_cache)
        steps = [r for r in read_metrics(out) if "loss" in r]
        assert [r["iter"] for r in steps] == [0, 1, 2]
        losses[compiled] = [(r["loss"], r["ce"], r.get("ctrl/raw", r.get("disp/raw"))) for r in steps]
    for eager, compiled in zip(losses[False], losses[True]):
        for a, b in zip(eager, compiled):
            assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (name, losses)
    assert losses[False][0] != losses[False][2]  # training moved: the comparison covers updated weights too
