# GPT-2 (124M) from scratch on OpenWebText, nanoGPT's recipe: 8 GPUs, ~0.5M tokens per step,
# 300B tokens in all. nanoGPT reports val loss ~2.85 after ~4 days on 8x A100 40GB.
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
out_dir = "out-gpt2"
dataset = "openwebtext"

batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8  # 12 * 1024 * 40 = 491,520 tokens per step

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False

max_iters = 600000
lr_decay_iters = 600000
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 2000
weight_decay = 1e-1

eval_interval = 1000
eval_iters = 200
log_interval = 10
