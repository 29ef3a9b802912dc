# The CPU default grid (make demo): the paper's protocol in miniature. One small GPT is pretrained with
# cross-entropy on the local corpus (EXP/base/), then mid-trained from its weights five ways, 5 seeds each:
# CE only; + angular dispersion at lambda 0.1 and 1; the parameter-matched control rotated_angular (the
# angular gradient of lambda 1 turned by a random rotation, rescaled to the same parameter-gradient norm);
# and the sign-flipped condense (lambda 1). Every run is scored on the paper's 10 benchmarks (a model this
# small is at chance on them: the report says so, it is the expected result), on LAMBADA and WikiText-103
# word perplexity (which do move), and probed for condensation.
#   python -m data.local.prepare --input ../shared/corpus --out_dir data/local   (once)
#   python experiment.py config/experiment_cpu.py
# Sized for ~14 min on 2 idle CPU cores (measured CPU time in the README); the base is trained once and
# reused by reruns.
base_config = "config/train_local_cpu.py"  # local corpus, CPU, float32, no compile, lr 2e-3 cosine to 2e-4
# the base: 4 layers x 128 wide, context 128, 300 steps of 8 x 128 tokens (307k tokens, ~1/10 of an epoch)
base_run = {
    "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "batch_size": 8,
    "max_iters": 300, "eval_interval": 100, "eval_iters": 10, "log_interval": 20, "warmup_iters": 20,
    "seed": 1337,
}
# mid-training (every arm; the architecture is the base's): 40 steps of 8 x 128 tokens, 20% warmup to
# 1e-3 then cosine to 1e-4; the loss on every hidden state (HF indexing: blocks 1..4, the last after ln_f)
# strength_window: how hard each auxiliary term pushes the weights, logged per window of 10 steps (the
# report's strength table; an extra backward pass per micro-step for the dispersion arms, none for the control)
base_overrides = {
    "max_iters": 40, "eval_interval": 40, "eval_iters": 5, "log_interval": 10,
    "learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 8,
    "dispersion_layers": "all", "strength_window": 10,
}
arms = {
    "ce": {},
    "angular_0.1": {"dispersion": "angular", "dispersion_weight": 0.1},
    "angular_1": {"dispersion": "angular", "dispersion_weight": 1.0},
    # matched to angular_1 in the parameters: its gradient turned by one rotation for the run, rescaled to the
    # angular term's parameter-gradient norm (dispersion_match_params=True: 2 extra backward passes per micro-step)
    "rotated_angular": {"dispersion": "rotated_angular", "dispersion_weight": 1.0},
    "condense": {"dispersion": "condense", "dispersion_weight": 1.0},
}
baseline = "ce"
seeds = [0, 1, 2, 3, 4]
exp_dir = "out-experiment-cpu"
launcher = "python"
select_by_val = True
jobs = 2  # two runs at once on 2 cores
threads = 1  # per process; measured: on 2 busy cores, 1 thread per process ran 3.7x faster than 2

tasks = "paper10,wikitext"
eval_limit = 20  # documents per task (per MMLU subject), except:
eval_limits = {"lambada_openai": 500, "mmlu": 5, "wikitext": 4}  # LAMBADA is informative here; 4 WikiText pages
num_fewshot = 0
eval_device = "cpu"

probe_n_seq = 64
probe_seq_len = 128
