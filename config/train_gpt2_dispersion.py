# GPT-2 (124M) from scratch on OpenWebText with the angular dispersion loss on every layer.
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_dispersion.py
_here = __file__.rsplit("/", 1)[0]
exec(open(f"{_here}/train_gpt2.py").read())

out_dir = "out-gpt2-dispersion"
dispersion = "angular"
dispersion_weight = 0.1
dispersion_layers = "all"
dispersion_max_tokens = 256  # the official code's subsampling: ~16x less memory than all 1024 positions
