# nanoGPT's quickstart: a small character-level GPT on Tiny Shakespeare, on one GPU (nanoGPT's README
# reports about 3 minutes on an A100 and a best val loss near 1.47). Prepare the data first:
#     python data/shakespeare_char/prepare.py
#     python train.py config/train_shakespeare_char.py
#     python sample.py --out_dir=out-shakespeare-char
# vocab_size is not set here: the data's meta (65 characters) gives it.
#
# No GPU? nanoGPT's README shrinks everything for a CPU (a few minutes; a val loss near 1.88):
#     python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
#         --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
#         --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

out_dir = "out-shakespeare-char"
dataset = "shakespeare_char"
eval_interval = 250  # the model overfits soon, so evaluate often...
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # ...and keep only checkpoints that improve the val loss

# 64 windows of 256 characters per step, no accumulation
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256

# a 6-layer, 6-head, 384-wide GPT (about 10M parameters), with dropout: the data is tiny
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

# a small model can take a larger learning rate; short warmup, cosine decay over the whole run
learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000  # normally equal to max_iters
min_lr = 1e-4  # learning_rate / 10
beta2 = 0.99  # few tokens per step: average the second moment over more steps
warmup_iters = 100
