# The paper's Qwen3 setting as a controlled comparison (paper.md sections 2.1 and 3.1): mid-train
# pretrained Qwen3-0.6B on WikiText-103 for 200M tokens with CE only and with CE + lambda * angular
# dispersion for lambda in {0.01, 0.1, 1}, plus the matched-strength control and the sign-flipped
# loss, 3 seeds each; every arm sees the same data order and token budget at a given seed.
#   (WikiText-103 in Qwen3 token ids in data/wikitext103_qwen3: see config/midtrain_qwen3_wikitext103.py)
#   python experiment.py config/experiment_midtrain_qwen3.py
# Cost (estimated, not measured): 6 arms x 3 seeds = 18 runs of 1526 steps x 131,072 tokens,
# ~6 x 0.6B x 200M = 7e17 FLOPs each, about 1.6e18 with the attention matmuls at 4096 and the
# recomputation of gradient checkpointing: ~10-20 min per run on 8x H100 at 30% MFU.
base_config = "config/midtrain_qwen3_wikitext103.py"  # Qwen3-0.6B, ctx 4096, 1 x GA 32 x 4096 = 131,072 tokens/step,
#   1526 steps, AdamW (0.9, 0.95), lr 5e-5 cosine to 0 with 20% warmup, wd 0.1, clip 1.0, bf16, gradient checkpointing
base_overrides = {
    # the loss's own settings, inert in the CE arm: tau = 1, straight-through clamp 0.25 (Qwen3),
    # all 28 layers (HF indexing, last after the final RMSNorm), 256 sampled positions per layer
    "dispersion_tau": 1.0,
    "dispersion_clamp": 0.25,
    "dispersion_layers": "all",
    "dispersion_max_tokens": 256,
    "eval_iters": 100,
}
arms = {
    "ce": {},
    **{f"angular_{w:g}": {"dispersion": "angular", "dispersion_weight": w} for w in (0.01, 0.1, 1.0)},
    "random_direction": {"dispersion": "random_direction", "dispersion_weight": 0.1},
    "condense": {"dispersion": "condense", "dispersion_weight": 0.1},
}
baseline = "ce"
seeds = [0, 1, 2]
exp_dir = "out-experiment-midtrain-qwen3"
launcher = "torchrun --standalone --nproc_per_node=8"  # 8 GPUs x 4 micro-steps of 1 sequence; "python" for one GPU
select_by_val = True

# the paper's Qwen3 protocol: 0-shot anli_r2, lambada_openai, openbookqa, piqa, truthfulqa_mc2, winogrande;
# 5-shot arc_easy, arc_challenge, medmcqa, mmlu; the first 200 items of each task
tasks = "paper10"
eval_limit = 200
paper_protocol = True
num_fewshot = 5
eval_dtype = "bfloat16"
eval_batch_size = 8

probe_n_seq = 3  # the paper's Qwen3 mid-training figure: R = 3 sequences of up to 8192 tokens
probe_seq_len = 4096  # capped at block_size
