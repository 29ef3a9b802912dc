# The paper's main setting: mid-train pretrained GPT-2 (124M) on WikiText-103 (CE only).
# 1024 tokens x 128 sequences = 131,072 tokens per step, 1526 steps = 200M tokens.
# python -m data.wikitext103.prepare
# torchrun --standalone --nproc_per_node=8 train.py config/midtrain_gpt2_wikitext103.py
# (any GPU count that divides 128 micro-steps works; one GPU: python train.py ...)
out_dir = "out-midtrain-ce"
init_from = "gpt2"  # or a local Hugging Face GPT-2 directory
dataset = "wikitext103"

block_size = 1024
batch_size = 16
gradient_accumulation_steps = 8  # 16 * 8 = 128 sequences per step
max_iters = 1526
learning_rate = 5e-5  # the official code multiplies by sqrt(#GPUs); the paper's figures come from 1 GPU
min_lr = 0.0
warmup_iters = 305  # 20% of the steps
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
dropout = 0.1  # GPT-2's own dropout, active during mid-training as in the HF Trainer
dtype = "bfloat16"

eval_interval = 306  # the paper's checkpoints: 306, 612, 918, 1224, 1526
eval_iters = 100
log_interval = 10
