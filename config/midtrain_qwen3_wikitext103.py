# The paper's second family (shared notes paper.md section 2.1): mid-train pretrained Qwen3-0.6B
# (28 layers, RMSNorm, RoPE, SwiGLU, 16 query / 8 key-value heads, head_dim 128, QK-norm, tied
# embeddings) on WikiText-103 with CE only. 4096 tokens x 32 sequences = 131,072 tokens per step,
# as for GPT-2; 1526 steps = 200M tokens (the official README states no Qwen3 budget: assumed equal).
#   python train.py config/midtrain_qwen3_wikitext103.py                       # one GPU, as the paper
#   torchrun --standalone --nproc_per_node=8 train.py config/midtrain_qwen3_wikitext103.py
# The model settings (norm, pos_emb, n_kv_head, ...) come from the checkpoint's config.json.
# The data is WikiText-103 in Qwen3's token ids (uint32; the model's vocabulary is 151,936):
#   python -m data.wikitext103.prepare --tokenizer Qwen/Qwen3-0.6B --out_dir data/wikitext103_qwen3
import math

out_dir = "out-midtrain-qwen3-ce"
init_from = "Qwen/Qwen3-0.6B"  # or a local Hugging Face directory with config.json + safetensors
dataset = "wikitext103_qwen3"  # a prepared folder of Qwen3 tokens (train.bin, val.bin, meta.json)
vocab_size = 151936

block_size = 4096  # Qwen3-0.6B has 40,960 positions; the paper trains at 4096
batch_size = 1
gradient_accumulation_steps = 32  # 1 x GA 32 = 32 sequences per step, the official script's defaults
max_iters = 1526
learning_rate = 5e-5  # the official code multiplies by sqrt(#GPUs); the paper's figures come from 1 GPU
min_lr = 0.0  # cosine to 0
warmup_iters = math.ceil(0.2 * max_iters)  # HF Trainer's warmup_ratio=0.2: ceil(0.2 * 1526) = 306 steps
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
dropout = 0.0  # Qwen3 has no dropout
dtype = "bfloat16"
gradient_checkpointing = True  # as the paper's Trainer; a 4096 x 151,936 logits row is 2.5 GB in fp32

eval_interval = 306  # the paper's checkpoints: 306, 612, 918, 1224, 1526
eval_iters = 100
log_interval = 10
eval_num_fewshot = 5  # Qwen3 is scored 5-shot (GPT-2 1-shot), at most 200 items per task
eval_limit = 200
