# GPT-2 tokens of Tiny Shakespeare (python -m data.shakespeare.prepare), a small model on one GPU.
# On CPU: add --device=cpu --compile=False --max_iters=500
out_dir = "out-shakespeare"
dataset = "shakespeare"
eval_interval = 250
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # the model overfits quickly; keep the best val loss

n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
dropout = 0.2

batch_size = 64
gradient_accumulation_steps = 1
max_iters = 5000
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 100
beta2 = 0.99  # a little more averaging: few tokens per step
