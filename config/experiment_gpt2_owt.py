# GPT-2 (124M) from scratch on OpenWebText, with and without the angular dispersion loss, 3 seeds,
# on 8 GPUs (nanoGPT's recipe, config/train_gpt2.py, ~0.5M tokens per step).
#   python -m data.openwebtext.prepare
#   python experiment.py config/experiment_gpt2_owt.py
# nanoGPT's full schedule is 600k steps (300B tokens, ~4 days on 8x A100 per run): far too long for a
# seeded grid. We train 20k steps (9.8B tokens, ~4x Chinchilla for 124M), with the cosine schedule
# ending there: ~8.5e18 FLOPs, estimated (not measured) 2-3 h per run on 8x A100, ~15 h for the grid. For the full run: base_overrides max_iters and
# lr_decay_iters = 600000.
base_config = "config/train_gpt2.py"
base_overrides = {
    "max_iters": 20000,
    "lr_decay_iters": 20000,
    "warmup_iters": 700,
    "eval_interval": 1000,
    "dispersion_max_tokens": 256,  # the official code's subsampling: ~16x less memory than all 1024 positions
}
arms = {
    "ce": {},
    "angular": {"dispersion": "angular", "dispersion_weight": 0.1, "dispersion_layers": "all"},
}
baseline = "ce"
seeds = [0, 1, 2]
exp_dir = "out-experiment-gpt2-owt"
launcher = "torchrun --standalone --nproc_per_node=8"
select_by_val = True

tasks = "paper10"
eval_limit = None
paper_protocol = True  # the same protocol as the mid-training grid, so the two compare
num_fewshot = 1
eval_batch_size = 32

probe_n_seq = 100
probe_seq_len = 1024
