# The offline default: a small GPT on the local corpus (prepared by data/local/prepare.py),
# a few minutes on 2 CPU cores. python train.py config/train_local_cpu.py
out_dir = "out-local"
dataset = "local"
device = "cpu"
dtype = "float32"
compile = False

n_layer = 4
n_head = 4
n_embd = 64
block_size = 64
dropout = 0.0
bias = False

batch_size = 8  # most of the time goes to the 50257-way output layer, so keep the batch small
gradient_accumulation_steps = 1
max_iters = 300
eval_interval = 100
eval_iters = 20
log_interval = 10

learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 30
weight_decay = 0.1
