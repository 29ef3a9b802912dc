"""train.py end to end, in subprocesses, as a user runs it."""

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY_MODEL, read_metrics, run_train

# the same tiny size in the Qwen3 block: RMSNorm, RoPE, SwiGLU, grouped-query attention, QK-norm, head_dim != n_embd / n_head
TINY_QWEN3 = [*TINY_MODEL, "--bias=False", "--norm=rmsnorm", "--norm_eps=1e-6", "--pos_emb=rope", "--rope_theta=1000000",
              "--mlp=swiglu", "--n_inner=48", "--n_kv_head=1", "--head_dim=8", "--qk_norm=True"]
FAMILIES = pytest.mark.parametrize("model_args", [TINY_MODEL, TINY_QWEN3], ids=["gpt2", "qwen3"])


def test_trains_and_logs(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    run_train([*TINY_MODEL, f"--dataset={tiny_dataset}", f"--out_dir={out}", "--max_iters=30",
               "--eval_interval=10", "--eval_iters=4", "--learning_rate=3e-3", "--warmup_iters=3",
               "--probe_interval=10", "--probe_n_seq=4", "--probe_seq_len=16", "--keep_best=True"])
    rows = read_metrics(out)
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "val_loss" in r]
    assert [r["iter"] for r in train_rows] == list(range(30))
    assert [r["iter"] for r in eval_rows] == [0, 10, 20, 30]
    for key in ("iter", "loss", "lr", "tokens", "dt_ms", "mfu"):
        assert key in train_rows[0]
    assert train_rows[-1]["tokens"] == 30 * 4 * 32
    assert eval_rows[-1]["val_loss"] < eval_rows[0]["val_loss"] - 0.5  # it learns the ramps
    for r in eval_rows:  # the condensation probe ran at every eval step
        assert -1 <= r["probe/spearman"] <= 1 and 0 < r["probe/layer2/mean_cos"] <= 1
    ckpt = torch.load(out / "ckpt.pt", weights_only=False)
    assert ckpt["iter_num"] == 30
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert not (out / "ckpt.pt.tmp").exists()
    best = torch.load(out / "ckpt_best.pt", weights_only=False)  # keep_best: the lowest val loss so far
    assert best["best_val_loss"] == min(r["val_loss"] for r in eval_rows[1:])


def test_logged_loss_is_the_mean_over_micro_steps(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    run_train([*TINY_MODEL, f"--dataset={tiny_dataset}", f"--out_dir={out}", "--max_iters=1",
               "--eval_interval=10", "--eval_iters=1", "--gradient_accumulation_steps=3"])
    logged = [r for r in read_metrics(out) if "loss" in r][0]["loss"]
    # recompute the three micro-batch losses of step 0 with the initial model
    from data.common import open_split, sample_batch
    from model import GPT, GPTConfig
    torch.manual_seed(1337)
    model = GPT(GPTConfig(block_size=32, vocab_size=128, n_layer=2, n_head=2, n_embd=32, bias=True))
    data = open_split(str(tiny_dataset), "train", 32)
    losses = []
    for micro in range(3):
        x, y = sample_batch(data, 4, 32, (1337, 0, 0, micro))
        losses.append(model(torch.from_numpy(x), torch.from_numpy(y))[1].item())
    assert abs(logged - sum(losses) / 3) < 1e-5
    assert abs(logged - losses[-1]) > 1e-4  # not the last micro-batch alone


@FAMILIES
def test_ddp_two_cpu_processes_match_one_process(model_args, tiny_dataset, tmp_path):
    common = [*model_args, f"--dataset={tiny_dataset}", "--max_iters=6", "--eval_interval=3",
              "--eval_iters=4", "--gradient_accumulation_steps=2", "--learning_rate=3e-3"]
    run_train([*common, f"--out_dir={tmp_path / 'single'}"])
    run_train([*common, f"--out_dir={tmp_path / 'ddp'}"], torchrun_nproc=2)
    single, ddp = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "ddp")
    assert len(single) == len(ddp)
    for a, b in zip(single, ddp):
        assert a["iter"] == b["iter"]
        for key in ("loss", "val_loss"):
            if key in a:
                assert abs(a[key] - b[key]) < 1e-5, (key, a, b)


@FAMILIES
def test_kill_and_resume_equals_uninterrupted_run(model_args, tiny_dataset, tmp_path):
    # dropout and subsampled dispersion exercise every RNG a checkpoint must carry
    common = [*model_args, f"--dataset={tiny_dataset}", "--eval_interval=4", "--eval_iters=2",
              "--dropout=0.1", "--dispersion=angular", "--dispersion_max_tokens=8", "--neftune_alpha=1.0",
              "--warmup_iters=2", "--lr_decay_iters=40", "--learning_rate=3e-3"]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *common, f"--out_dir={out}", "--max_iters=100000"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "ckpt.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before writing a checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up, as in a crash or a preempted job
    proc.wait()
    resumed_from = torch.load(out / "ckpt.pt", weights_only=False)["iter_num"]
    end = resumed_from + 8
    run_train([*common, f"--out_dir={out}", "--init_from=resume", f"--max_iters={end}"])
    run_train([*common, f"--out_dir={tmp_path / 'straight'}", f"--max_iters={end}"])
    resumed, straight = read_metrics(out), read_metrics(tmp_path / "straight")
    assert [r["iter"] for r in resumed] == [r["iter"] for r in straight]  # the log was trimmed and redone
    tail = [(a, b) for a, b in zip(resumed, straight) if a["iter"] >= resumed_from]
    assert len(tail) >= 8
    for a, b in tail:
        for key in ("loss", "val_loss", "disp/raw"):
            if key in a:
                assert a[key] == b[key], (key, a, b)  # bit for bit


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    args = [*TINY_MODEL, f"--dataset={tiny_dataset}", f"--out_dir={out}", "--eval_interval=2", "--eval_iters=1",
            "--warmup_iters=0", "--grad_clip=0.0", "--decay_lr=False"]
    run_train([*args, "--max_iters=2"])
    before = (out / "ckpt.pt").read_bytes()
    result = run_train([*args, "--max_iters=20", "--init_from=resume", "--learning_rate=1e30"], check=False)
    assert result.returncode != 0
    assert "non-finite loss" in result.stderr or "val loss is" in result.stderr
    assert (out / "ckpt.pt").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--n_layr=3"], "unknown config key 'n_layr'; did you mean n_layer"),
    (["--batch_size=abc"], "batch_size='abc' has type str, expected int"),
    (["--compile=1"], "compile=1 has type int, expected bool"),
    (["--dispersion=angularr"], "dispersion='angularr'"),
    (["config/no_such_file.py"], "config file 'config/no_such_file.py' not found"),
    (["--dataset=/no/such/folder"], "missing /no/such/folder/train.bin"),
    (["--init_from=resume", "--out_dir=/no/such/out"], "no checkpoint at /no/such/out/ckpt.pt"),
])
def test_bad_settings_stop_with_a_clear_message(args, message, tiny_dataset):
    result = run_train([*TINY_MODEL, f"--dataset={tiny_dataset}", *args], check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]


def test_config_file_errors(tmp_path):
    from configurator import ConfigError, load_config
    bad = tmp_path / "bad.py"
    bad.write_text("import math\nlearning_rate = 1e-3\nwarmup_iter = int(math.sqrt(100))\n")
    with pytest.raises(ConfigError, match="unknown config key 'warmup_iter'; did you mean warmup_iters"):
        load_config({"learning_rate": 1e-4, "warmup_iters": 10}, [str(bad)])
    good = tmp_path / "good.py"
    good.write_text("learning_rate = 1\nwarmup_iters = 5\n")
    config = load_config({"learning_rate": 1e-4, "warmup_iters": 10, "name": "x"}, [str(good), "--name=2024"])
    assert config == {"learning_rate": 1.0, "warmup_iters": 5, "name": "2024"}


def test_vocab_mismatch_is_caught(tiny_dataset, tmp_path):
    result = run_train([*TINY_MODEL, f"--dataset={tiny_dataset}", "--vocab_size=50", f"--out_dir={tmp_path}"], check=False)
    assert result.returncode != 0
    assert "vocabulary of 100 tokens but the model has vocab_size=50" in result.stderr


def test_all_dispersion_variants_and_controls_train(tiny_dataset, tmp_path):
    teacher = tmp_path / "teacher"
    run_train([*TINY_MODEL, f"--dataset={tiny_dataset}", f"--out_dir={teacher}", "--max_iters=2", "--eval_interval=2", "--eval_iters=1"])
    for variant in ("angular", "decorrelation", "l2_repel", "orthogonalization", "condense", "cross_sequence",
                    "norm_penalty", "random_direction", "rotated_angular"):
        out = tmp_path / variant
        run_train([*TINY_MODEL, f"--dataset={tiny_dataset}", f"--out_dir={out}", "--max_iters=2", "--eval_interval=2",
                   "--eval_iters=1", f"--dispersion={variant}", "--dispersion_layers=late_half",
                   f"--distill_from={teacher}", "--distill_weight=0.5"])
        row = [r for r in read_metrics(out) if "loss" in r][-1]
        assert math.isfinite(row["loss"]) and "distill/kl" in row
        assert ("ctrl/raw" if variant in ("random_direction", "rotated_angular") else "disp/raw") in row
        assert "disp/layer2/pair_cos" in row or "ctrl/layer2/grad_norm" in row


def test_benchmarks_at_eval_steps(shared, tiny_dataset, tmp_path):
    import json
    bench = tmp_path / "bench" / "piqa"
    bench.mkdir(parents=True)
    rows = [{"goal": f"How do I open jar {i}?", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": i % 2}
            for i in range(6)]
    (bench / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    run_train([*TINY_MODEL, "--vocab_size=50257", f"--dataset={tiny_dataset}", f"--out_dir={out}", "--max_iters=2",
               "--eval_interval=2", "--eval_iters=1", "--eval_tasks=piqa", "--eval_limit=4",
               f"--eval_data_dir={tmp_path / 'bench'}"])
    evals = [r for r in read_metrics(out) if "val_loss" in r]
    assert len(evals) == 2
    for r in evals:
        assert r["bench/piqa/acc"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 items scored


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "config").glob("*.py")
                                        if not p.name.startswith("experiment_")))
def test_every_training_config_file_is_valid(path):
    import train
    from configurator import load_config
    config = load_config(train.DEFAULTS, [str(REPO / path)], train.TYPES)
    assert config["out_dir"] != "out"  # each config writes to its own folder


def test_dispersion_lowers_and_condense_raises_last_layer_cosine(tiny_dataset, tmp_path):
    """The paper's effect in miniature: same seed, same batches; only the auxiliary term differs."""
    common = [*TINY_MODEL, f"--dataset={tiny_dataset}", "--max_iters=200", "--eval_interval=200", "--eval_iters=2",
              "--log_interval=50", "--learning_rate=3e-3", "--warmup_iters=10", "--probe_interval=200",
              "--probe_n_seq=8", "--probe_seq_len=32", "--dispersion_layers=last", "--dispersion_weight=1.0"]
    last = {}
    for arm, extra in (("ce", []), ("angular", ["--dispersion=angular"]), ("condense", ["--dispersion=condense"])):
        run_train([*common, f"--out_dir={tmp_path / arm}", *extra])
        final = [r for r in read_metrics(tmp_path / arm) if "probe/spearman" in r][-1]
        last[arm] = final["probe/layer2/mean_cos"]
    assert last["angular"] < last["ce"] - 0.02, last
    assert last["condense"] > last["ce"] + 0.05, last


def test_gradient_checkpointing_gives_the_same_losses(tiny_dataset, tmp_path):
    common = [*TINY_QWEN3, f"--dataset={tiny_dataset}", "--max_iters=6", "--eval_interval=3", "--eval_iters=2",
              "--dropout=0.1", "--dispersion=angular", "--learning_rate=3e-3", "--warmup_iters=2"]
    run_train([*common, f"--out_dir={tmp_path / 'plain'}"])
    run_train([*common, f"--out_dir={tmp_path / 'recompute'}", "--gradient_checkpointing=True"])
    plain, recompute = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "recompute")
    assert [r["iter"] for r in plain] == [r["iter"] for r in recompute]
    for a, b in zip(plain, recompute):
        for key in ("loss", "val_loss", "disp/raw"):
            if key in a:
                assert abs(a[key] - b[key]) < 1e-6, (key, a, b)
    ckpt = torch.load(tmp_path / "recompute" / "ckpt.pt", weights_only=False)
    args = ckpt["model_args"]  # the checkpoint records the block's variant
    assert (args["norm"], args["pos_emb"], args["mlp"], args["n_kv_head"], args["head_dim"], args["qk_norm"]) == \
        ("rmsnorm", "rope", "swiglu", 1, 8, True)


@pytest.mark.parametrize("args, message", [
    (["--n_head=3"], "n_embd=32 must be divisible by n_head=3"),
    (["--n_kv_head=3"], "n_head=2 must be a multiple of n_kv_head=3"),
    (["--norm=batchnorm"], "norm='batchnorm'; choose one of layernorm, rmsnorm"),
    (["--n_kv_head=two"], "n_kv_head='two' has type str"),
])
def test_bad_model_settings_stop_with_a_clear_message(args, message, tiny_dataset):
    result = run_train([*TINY_MODEL, f"--dataset={tiny_dataset}", *args], check=False)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_init_from_a_hugging_face_qwen3_directory(tiny_dataset, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=64, tie_word_embeddings=True))
    hf_model.save_pretrained(tmp_path / "hf_model")
    out = tmp_path / "out"
    run_train([*TINY_MODEL, f"--dataset={tiny_dataset}", f"--out_dir={out}", f"--init_from={tmp_path / 'hf_model'}",
               "--max_iters=2", "--eval_interval=2", "--eval_iters=1", "--gradient_checkpointing=True"])
    ckpt = torch.load(out / "ckpt.pt", weights_only=False)
    assert ckpt["model_args"]["qk_norm"] and ckpt["model_args"]["block_size"] == 32  # cropped to the run's context
    import hf
    from load import load_model
    model, _ = load_model(str(out))
    hf.export(model, tmp_path / "back")  # the trained model goes back to transformers
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    x = torch.randint(0, 128, (1, 16))
    with torch.no_grad():
        assert (back(x).logits - model.eval()(x)[0]).abs().max() < 1e-5


def test_mid_training_from_a_checkpoint_takes_its_vocab_size(tiny_dataset, tmp_path):
    """experiment.py mid-trains with --vocab_size=None (the default): the base model's 128, not an error."""
    run_train([*TINY_MODEL, f"--dataset={tiny_dataset}", f"--out_dir={tmp_path / 'base'}", "--max_iters=2",
               "--eval_interval=2", "--eval_iters=1"])
    no_vocab = [a for a in TINY_MODEL if not a.startswith("--vocab_size")]
    run_train([*no_vocab, "--vocab_size=None", f"--dataset={tiny_dataset}", f"--out_dir={tmp_path / 'mid'}",
               f"--init_from={tmp_path / 'base'}", "--max_iters=2", "--eval_interval=2", "--eval_iters=1"])
    assert torch.load(tmp_path / "mid" / "ckpt.pt", weights_only=True)["model_args"]["vocab_size"] == 128


READS = """
import sys, torch
sys.path.insert(0, {repo!r})
reads = [0]
for name in ("item", "tolist"):
    original = getattr(torch.Tensor, name)
    def counted(self, *a, _original=original, **k):
        reads[0] += 1
        return _original(self, *a, **k)
    setattr(torch.Tensor, name, counted)
import train
train.main(sys.argv[1:])
print("READS", reads[0])
"""


def test_iterations_that_neither_log_nor_evaluate_read_nothing_back(tiny_dataset, tmp_path):
    """Reading a tensor's value (.item(), .tolist()) waits for the device: train.py does it only at log
    and eval steps. With one log step (iteration 0) and evals only at 0 and the end, 4 more iterations
    add no read at all, with and without dispersion and gradient accumulation."""
    counts = {}
    for extra in ([], ["--dispersion=angular", "--gradient_accumulation_steps=2"]):
        for iters in (4, 8):
            out = tmp_path / f"out{len(extra)}_{iters}"
            args = [*TINY_MODEL, f"--dataset={tiny_dataset}", f"--out_dir={out}", f"--max_iters={iters}",
                    "--log_interval=1000", "--eval_interval=1000", "--eval_iters=1", *extra]
            result = subprocess.run([sys.executable, "-c", READS.format(repo=str(REPO)), *args], cwd=REPO,
                                    capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
            assert result.returncode == 0, result.stderr[-2000:]
            counts[len(extra), iters] = int(result.stdout.split("READS")[-1])
    assert counts[0, 4] == counts[0, 8] and counts[2, 4] == counts[2, 8], counts
    assert counts[0, 4] > 0  # the log and eval steps do read
