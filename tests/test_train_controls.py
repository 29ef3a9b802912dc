"""How train.py adds each dispersion loss and control to the step, checked against a recomputation
from the model and the batch; the parameter-gradient ratio of the controls over a run; wandb."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_MODEL, read_metrics, run_train

WEIGHT = 30.0  # large, so that the auxiliary gradient is a visible part of the total gradient norm
ONE_STEP = ["--max_iters=1", "--eval_interval=10", "--eval_iters=1", f"--dispersion_weight={WEIGHT}",
            "--dispersion_layers=all", "--dispersion_tau=0.5"]
LOSS_OPTIONS = dict(tau=0.5, eps=1e-2, clamp=0.1, margin=0.5, norm_weight=0.1)


def first_step(tiny_dataset):
    """The initial model of a TINY_MODEL run with seed 1337, and its hidden states on step 0's batch."""
    from data.common import open_split, sample_batch
    from model import GPT, GPTConfig
    torch.manual_seed(1337)
    model = GPT(GPTConfig(block_size=32, vocab_size=128, n_layer=2, n_head=2, n_embd=32, bias=True))
    x, y = (torch.from_numpy(a) for a in sample_batch(open_split(str(tiny_dataset), "train", 32), 4, 32, (1337, 0, 0, 0)))
    _, ce, hidden = model(x, y, return_hidden=True)
    return model, ce, hidden


def grad_norm_of(model, loss):
    grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True, allow_unused=True)
    return torch.cat([g.flatten() for g in grads if g is not None]).norm().item()


def pair_cos_brute_force(z, eps=1e-2):
    """Mean cosine over the pairs i != j of each sequence, one pair at a time."""
    per_sequence = []
    for seq in z.double():
        u = seq / (seq.norm(dim=-1, keepdim=True) + eps)
        T = len(u)
        per_sequence.append(sum((u[i] @ u[j]).item() for i in range(T) for j in range(T) if i != j) / (T * (T - 1)))
    return sum(per_sequence) / len(per_sequence)


def logged_step(out):
    return [r for r in read_metrics(out) if "loss" in r][0]


@pytest.mark.parametrize("variant", ["angular", "decorrelation"])
def test_a_loss_enters_the_step_once_with_its_weight(variant, tiny_dataset, tmp_path):
    import disperse
    run_train([*TINY_MODEL, f"--dataset={tiny_dataset}", f"--out_dir={tmp_path}", *ONE_STEP, f"--dispersion={variant}"])
    row = logged_step(tmp_path)
    model, ce, hidden = first_step(tiny_dataset)
    per_layer = [disperse.dispersion_loss(hidden[i], variant, **LOSS_OPTIONS) for i in (1, 2)]
    raw = sum(per_layer) / 2
    assert row["ce"] == pytest.approx(ce.item(), abs=1e-5)
    assert row["disp/raw"] == pytest.approx(raw.item(), abs=1e-6)
    assert row["aux"] == pytest.approx(WEIGHT * raw.item(), rel=1e-5)
    assert row["disp/weighted"] == pytest.approx(WEIGHT * raw.item(), rel=1e-5)
    assert row["loss"] == pytest.approx(ce.item() + WEIGHT * raw.item(), rel=1e-5)
    for i, loss in zip((1, 2), per_layer):
        assert row[f"disp/layer{i}/loss"] == pytest.approx(loss.item(), abs=1e-6)
        assert row[f"disp/layer{i}/pair_cos"] == pytest.approx(pair_cos_brute_force(hidden[i]), abs=1e-5)
    # the gradient of the step: CE + weight * raw, not weight^2 (applied twice) nor 1 (forgotten)
    expected = {w: grad_norm_of(model, ce + w * raw) for w in (WEIGHT, WEIGHT ** 2, 1.0)}
    assert row["grad_norm"] == pytest.approx(expected[WEIGHT], rel=1e-4)
    assert abs(expected[WEIGHT ** 2] / expected[WEIGHT] - 1) > 0.01 and abs(expected[1.0] / expected[WEIGHT] - 1) > 0.01
    assert "ctrl/param_grad_ratio" not in row


@pytest.mark.parametrize("control", ["random_direction", "rotated_angular"])
def test_a_control_enters_the_step_as_its_gradient_and_the_log_as_zero(control, tiny_dataset, tmp_path):
    import controls
    import disperse
    run_train([*TINY_MODEL, f"--dataset={tiny_dataset}", f"--out_dir={tmp_path}", *ONE_STEP, f"--dispersion={control}"])
    row = logged_step(tmp_path)
    model, ce, hidden = first_step(tiny_dataset)
    params = list(model.parameters())
    aux_gen = torch.Generator().manual_seed(1337 * 1000 + 7)  # train.py's auxiliary generator (seed 1337, rank 0)

    def control_term(weight):
        if control == "random_direction":
            return controls.random_direction_term(hidden, "all", weight, torch.Generator().set_state(aux_gen.get_state()),
                                                  **LOSS_OPTIONS)
        key = int(np.random.default_rng([1337, 3]).integers(2**62))  # train.py's rotation of the run (seed 1337)
        rotation = controls.random_rotation(32, torch.Generator().manual_seed(key))
        return controls.rotated_angular_term(hidden, "all", weight, rotation, params=params, **LOSS_OPTIONS)

    surrogate, _, angular_grads, _ = control_term(WEIGHT)
    # the logged loss is CE: the surrogate's value means nothing
    assert row["loss"] == row["ce"] and row["aux"] == 0.0
    assert row["ce"] == pytest.approx(ce.item(), abs=1e-5)
    # the control's hidden-state gradients have the norm of weight * mean-over-layers angular
    raw = sum(disperse.dispersion_loss(hidden[i], "angular", **LOSS_OPTIONS) for i in (1, 2)) / 2
    assert row["ctrl/raw"] == pytest.approx(raw.item(), abs=1e-6)
    for i in (1, 2):  # the gradient on layer i's own states (not through the later layers' losses)
        alone = hidden[i].detach().requires_grad_()
        (target,) = torch.autograd.grad(WEIGHT * disperse.dispersion_loss(alone, "angular", **LOSS_OPTIONS) / 2, alone)
        assert row[f"ctrl/layer{i}/grad_norm"] == pytest.approx(target.norm().item(), rel=1e-4)
        assert torch.allclose(angular_grads[i], target, rtol=1e-4, atol=1e-9)
    # the step's gradient is CE's plus the control's, with the weight applied once
    expected = grad_norm_of(model, ce + surrogate)
    assert row["grad_norm"] == pytest.approx(expected, rel=1e-4)
    for wrong in (WEIGHT ** 2, 1.0):
        assert abs(grad_norm_of(model, ce + control_term(wrong)[0]) / expected - 1) > 0.01
    # the logged parameter-gradient ratio on this batch
    control_norm = controls.param_grad_norm([surrogate], None, params)
    angular_norm = controls.param_grad_norm([hidden[1], hidden[2]], [angular_grads[1], angular_grads[2]], params)
    assert row["ctrl/param_grad_ratio"] == pytest.approx((control_norm / angular_norm).item(), rel=1e-4)


def test_rotated_control_stays_matched_in_the_parameters_over_a_run(tiny_dataset, tmp_path):
    common = [*TINY_MODEL, f"--dataset={tiny_dataset}", "--max_iters=40", "--eval_interval=40", "--eval_iters=1",
              "--log_interval=5", "--learning_rate=3e-3", "--warmup_iters=5", "--dispersion_weight=1.0",
              "--gradient_accumulation_steps=2"]
    ratios, scales = {}, []
    for control in ("random_direction", "rotated_angular"):
        run_train([*common, f"--out_dir={tmp_path / control}", f"--dispersion={control}"])
        rows = [r for r in read_metrics(tmp_path / control) if "loss" in r]
        assert [r["iter"] for r in rows] == list(range(0, 40, 5))
        ratios[control] = [r["ctrl/param_grad_ratio"] for r in rows]
        if control == "rotated_angular":
            scales = [r["ctrl/scale"] for r in rows]
    assert all(0.8 <= r <= 1.25 for r in ratios["rotated_angular"]), ratios
    assert max(ratios["random_direction"]) < 0.3, ratios  # matched at the hidden states only
    assert max(abs(s - 1) for s in scales) > 0.02, scales  # the rescaling was needed, not a no-op


def test_the_ratio_passes_leave_training_unchanged(tiny_dataset, tmp_path):
    common = [*TINY_MODEL, f"--dataset={tiny_dataset}", "--max_iters=8", "--eval_interval=4", "--eval_iters=2",
              "--learning_rate=3e-3", "--dispersion=rotated_angular", "--dispersion_weight=3.0",
              "--gradient_accumulation_steps=2", "--dropout=0.1"]
    run_train([*common, f"--out_dir={tmp_path / 'every'}", "--log_interval=1"])
    run_train([*common, f"--out_dir={tmp_path / 'sparse'}", "--log_interval=5"])
    every = {(r["iter"], "loss" in r): r for r in read_metrics(tmp_path / "every")}
    sparse = read_metrics(tmp_path / "sparse")
    assert len(sparse) == 2 + 3  # train rows 0, 5; eval rows 0, 4, 8
    for r in sparse:
        other = every[(r["iter"], "loss" in r)]
        for key in ("loss", "val_loss", "grad_norm", "ctrl/scale"):
            if key in r:
                assert r[key] == other[key], (key, r, other)  # bit for bit
    assert all("ctrl/param_grad_ratio" in r for r in every.values() if "loss" in r)


# ----------------------------------------------------------------------------
# experiment tracking

FAKE_WANDB = '''
import json, os
_calls = []
def _save():
    with open(os.environ["FAKE_WANDB_OUT"], "w") as f:
        json.dump(_calls, f)
class _Run:
    def log(self, record, step=None):
        _calls.append(["log", record, step]); _save()
    def finish(self):
        _calls.append(["finish"]); _save()
def init(**kwargs):
    _calls.append(["init", kwargs]); _save()
    return _Run()
'''

TRACKED = [*TINY_MODEL, "--max_iters=4", "--eval_interval=2", "--eval_iters=1", "--dispersion=angular"]
TIMINGS = ("dt_ms", "mfu", "mem_mb")  # the only fields that differ between two identical runs


def test_wandb_gets_the_metrics_records_and_the_config(tiny_dataset, tmp_path):
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "wandb.py").write_text(FAKE_WANDB)
    calls_path = tmp_path / "calls.json"
    run_train([*TRACKED, f"--dataset={tiny_dataset}", f"--out_dir={tmp_path / 'out'}", "--wandb_log=True",
               "--wandb_run_name=angular/seed0", "--wandb_group=exp1"],
              env_extra={"PYTHONPATH": str(tmp_path / "fake"), "FAKE_WANDB_OUT": str(calls_path)})
    calls = json.loads(calls_path.read_text())
    init, logs, finish = calls[0], calls[1:-1], calls[-1]
    assert init[0] == "init" and finish == ["finish"]
    assert init[1]["project"] == "disperse-gpt" and init[1]["name"] == "angular/seed0" and init[1]["group"] == "exp1"
    assert init[1]["config"]["dispersion"] == "angular" and init[1]["config"]["max_iters"] == 4
    assert [record for _, record, _ in logs] == read_metrics(tmp_path / "out")  # the same flat records
    assert [step for _, _, step in logs] == [record["iter"] for _, record, _ in logs]


def test_wandb_offline_run_leaves_metrics_unchanged(tiny_dataset, tmp_path):
    pytest.importorskip("wandb")
    run_train([*TRACKED, f"--dataset={tiny_dataset}", f"--out_dir={tmp_path / 'plain'}"])
    run_train([*TRACKED, f"--dataset={tiny_dataset}", f"--out_dir={tmp_path / 'tracked'}", "--wandb_log=True"],
              env_extra={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"})
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))[0].stat().st_size > 0
    plain, tracked = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "tracked")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]  # noqa: E731
    assert strip(tracked) == strip(plain) and len(plain) == 4 + 3
    assert [set(r) for r in tracked] == [set(r) for r in plain]


def test_wandb_is_imported_only_when_asked_for(tiny_dataset, tmp_path):
    code = ("import sys, train; train.main(sys.argv[1:]); "
            "assert 'wandb' not in sys.modules, 'wandb was imported'")
    result = subprocess.run([sys.executable, "-c", code, *TRACKED, f"--dataset={tiny_dataset}", f"--out_dir={tmp_path}"],
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_wandb_missing_is_a_config_error_before_any_work(tiny_dataset, tmp_path):
    # a wandb that cannot be found: a meta-path hook that answers "no such module" for it
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoWandb:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'wandb':\n"
        "            raise ModuleNotFoundError(\"No module named 'wandb'\")\n"
        "sys.meta_path.insert(0, _NoWandb())\n")
    result = run_train([*TRACKED, f"--dataset={tiny_dataset}", f"--out_dir={tmp_path / 'out'}", "--wandb_log=True"],
                       env_extra={"PYTHONPATH": str(tmp_path)}, check=False)
    assert result.returncode != 0
    assert "wandb_log=True but wandb is not installed; pip install wandb, or set wandb_log=False" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # stopped before any work


def test_strength_windows_and_the_rotation_schedules(tiny_dataset, tmp_path):
    """strength_window=4 logs, per window of 4 steps, the push of the term's parameter gradients. With one
    rotation per run the control pushes about as hard as the angular term over the window (push ratio
    near 1) and its steps agree (step cos near the angular term's); with a fresh rotation per step they
    do not add up (step cos near 0, push ratio well below 1)."""
    common = [*TINY_MODEL, f"--dataset={tiny_dataset}", "--max_iters=16", "--eval_interval=16", "--eval_iters=1",
              "--log_interval=8", "--learning_rate=3e-3", "--warmup_iters=2", "--dispersion_weight=1.0",
              "--strength_window=4"]
    windows = {}
    for name, extra in (("angular", ["--dispersion=angular"]), ("run", ["--dispersion=rotated_angular"]),
                        ("step", ["--dispersion=rotated_angular", "--dispersion_rotation=step"])):
        run_train([*common, f"--out_dir={tmp_path / name}", *extra])
        windows[name] = [r for r in read_metrics(tmp_path / name) if "strength/push" in r]
        assert [r["iter"] for r in windows[name]] == [3, 7, 11, 15]
    assert all(0 < w["strength/coherence"] <= 1 + 1e-6 for rows in windows.values() for w in rows)
    assert "strength/push_ratio" not in windows["angular"][0]
    later = lambda name, key: sum(w[key] for w in windows[name][1:]) / 3  # noqa: E731  (after the first window)
    assert 0.8 < later("run", "strength/push_ratio") < 1.25
    assert later("run", "strength/step_cos") > 0.5 and abs(later("step", "strength/step_cos")) < 0.3
    assert later("step", "strength/push_ratio") < 0.8 * later("run", "strength/push_ratio")


def test_a_held_rescaling_resumes_exactly(tiny_dataset, tmp_path):
    """dispersion_match_interval=3 holds rotated_angular's scale between the steps that compute it; a run
    resumed at iteration 4 (scale from iteration 3 held) repeats the uninterrupted one bit for bit."""
    common = [*TINY_MODEL, f"--dataset={tiny_dataset}", "--eval_interval=4", "--eval_iters=1", "--log_interval=1",
              "--dispersion=rotated_angular", "--dispersion_weight=1.0", "--dispersion_match_interval=3", "--dropout=0.1"]
    run_train([*common, f"--out_dir={tmp_path / 'straight'}", "--max_iters=8"])
    run_train([*common, f"--out_dir={tmp_path / 'resumed'}", "--max_iters=4"])
    run_train([*common, f"--out_dir={tmp_path / 'resumed'}", "--max_iters=8", "--init_from=resume"])
    straight = [r for r in read_metrics(tmp_path / "straight") if "loss" in r]
    resumed = [r for r in read_metrics(tmp_path / "resumed") if "loss" in r]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    scales = [r["ctrl/scale"] for r in straight]
    assert scales[1] == scales[2] == scales[0] and scales[4] == scales[5] == scales[3] and scales[3] != scales[0]
