# The CPU default grid: does dispersion counteract condensation in a small GPT on the local corpus?
# CE only, CE + angular dispersion, and the matched-strength random-direction control, 2 seeds each.
#   python -m data.local.prepare --input ../shared/corpus --out_dir data/local   (once)
#   python experiment.py config/experiment_cpu.py
# A model this small stays at chance on the benchmarks: the report says so, it is the expected result.
base_config = "config/train_local_cpu.py"
base_overrides = {
    "n_layer": 4, "n_head": 4, "n_embd": 64, "block_size": 64,
    "batch_size": 8, "max_iters": 150, "eval_interval": 50, "eval_iters": 4, "log_interval": 10,
    "warmup_iters": 15,
}
arms = {
    "ce": {},
    "angular": {"dispersion": "angular", "dispersion_weight": 0.1},
    "random_direction": {"dispersion": "random_direction", "dispersion_weight": 0.1},
}
baseline = "ce"
seeds = [0, 1]
exp_dir = "out-experiment-cpu"
launcher = "python"
select_by_val = True
threads = 1  # measured: on 2 busy cores, 1 thread per process ran 3.7x faster than 2

tasks = "paper10"
eval_limit = 20
num_fewshot = 0
eval_device = "cpu"

probe_n_seq = 32
probe_seq_len = 64
