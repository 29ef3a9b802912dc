# The paper's Fig. 3 in miniature: does condensation rise as the MLP narrows, and does dispersion help the
# narrow models more? GPTs that differ only in their MLP width (n_inner), trained from scratch on the local
# corpus, each with cross-entropy alone and with the angular dispersion loss (lambda 1, the paper code's
# default), 3 seeds. The paper's sweep is n_inner 64 / 256 / 1024 / 4096 at n_embd 768 (1/12 to 16/3 of
# the width); here n_inner 8 / 32 / 128 / 512 at n_embd 128 (1/16 to 4: 512 is GPT-2's own 4 x n_embd).
#   python -m data.local.prepare --input ../shared/corpus --out_dir data/local   (once)
#   python experiment.py config/experiment_size_cpu.py
# Each angular arm is compared with the CE arm of its own width (baselines below), each CE arm with the
# widest CE arm (baseline), paired by seed: every run of a seed reads the same batches. Measured: 23 and
# 37 minutes on 2 idle CPU cores of two machines; the result table is in docs/dispersion.md.
base_config = "config/train_local_cpu.py"  # local corpus, CPU, float32, no compile, AdamW, cosine schedule
# every arm: 6 layers x 128 wide, 4 heads, context 128, 120 steps of 8 x 128 tokens (123k tokens), from scratch;
# the loss on every hidden state it can act on (HF indexing: blocks 1..6, the last after ln_f)
base_overrides = {
    "n_layer": 6, "n_head": 4, "n_embd": 128, "block_size": 128, "batch_size": 8,
    "max_iters": 120, "warmup_iters": 12, "learning_rate": 2e-3, "min_lr": 2e-4,
    "eval_interval": 120, "eval_iters": 10, "log_interval": 20,
    "dispersion_layers": "all",
}
_widths = [8, 32, 128, 512]  # names with a leading _ are helpers, not settings
arms = {}
for _w in _widths:
    arms[f"ce_mlp{_w}"] = {"n_inner": _w}
    arms[f"angular_mlp{_w}"] = {"n_inner": _w, "dispersion": "angular", "dispersion_weight": 1.0}
baseline = "ce_mlp512"  # GPT-2's MLP width (4 x n_embd): the CE arms of other widths are compared with it
baselines = {f"angular_mlp{_w}": f"ce_mlp{_w}" for _w in _widths}  # dispersion vs CE at the same width
seeds = [0, 1, 2]
exp_dir = "out-experiment-size-cpu"
launcher = "python"
select_by_val = False  # one val loss per run (at the end): the final checkpoint is the one scored
jobs = 2  # two runs at once on 2 cores, one thread each
threads = 1

# no benchmarks: models this small are at chance on them (make demo shows it); WikiText-103 word perplexity
# on 4 test pages, and the condensation probe, are what this sweep is about
tasks = "wikitext"
eval_limits = {"wikitext": 4}
num_fewshot = 0
eval_device = "cpu"

probe_n_seq = 64
probe_seq_len = 128
