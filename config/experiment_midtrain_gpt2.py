# The paper's main setting as a controlled comparison (paper.md sections 2.1 and 7): mid-train the
# pretrained GPT-2 (124M) on WikiText-103 for 200M tokens with CE only, with CE + lambda * angular
# dispersion for lambda in {0.01, 0.03, 0.1, 0.3, 1}, and with the controls, 3 seeds each; every
# arm sees the same data order and token budget at a given seed.
#   python -m data.wikitext103.prepare
#   python experiment.py config/experiment_midtrain_gpt2.py          # 8 GPUs on one node
# Cost (estimated, not measured): 13 arms x 3 seeds = 39 runs of 1526 steps x 131,072 tokens,
# ~6 x 124M x 200M = 1.5e17 FLOPs each: ~5-10 min on 8x A100 at 20-40% MFU (distillation ~1.3x),
# plus the evaluation of the full paper10 sets (twice per run with select_by_val) on one GPU.
# A grid stopped half-way resumes where it stopped; seed-major order means every finished seed
# already holds every arm.
base_config = "config/midtrain_gpt2_wikitext103.py"  # GPT-2 124M, ctx 1024, 16 x 8 x 1024 = 131,072 tokens/step,
#   1526 steps, AdamW (0.9, 0.95), lr 5e-5 cosine to 0 with 20% warmup, wd 0.1, clip 1.0, bf16, dropout 0.1
base_overrides = {
    # the loss's own settings, inert in the CE arm: tau = 1, straight-through clamp 0.1 (GPT-2),
    # all 12 layers (HF indexing, last after ln_f), 256 sampled positions per layer (official code, HEAD)
    "dispersion_tau": 1.0,
    "dispersion_clamp": 0.1,
    "dispersion_layers": "all",
    "dispersion_max_tokens": 256,
    "eval_iters": 100,
}
arms = {
    "ce": {},
    # B: the method, lambda swept (the baseline is lambda = 0 in the dose-response)
    **{f"angular_{w:g}": {"dispersion": "angular", "dispersion_weight": w} for w in (0.01, 0.03, 0.1, 0.3, 1.0)},
    # C1: matched strength: at every step and layer, a gradient of the norm angular(lambda=0.1) would
    # give, in a random direction
    "random_direction": {"dispersion": "random_direction", "dispersion_weight": 0.1},
    # C2: activation-norm penalty. Its weight is a starting guess, not matched: GPT-2's residual
    # stream has mean |z|^2 of order 1e4 (massive activations), so 1e-5 makes the term ~0.1 nats;
    # check disp/raw in metrics.jsonl and adjust.
    "norm_penalty": {"dispersion": "norm_penalty", "dispersion_weight": 1e-5},
    # D: the sign-flipped loss; the mechanism predicts it hurts
    "condense": {"dispersion": "condense", "dispersion_weight": 0.1},
    # E: placement: dispersion between sequences instead of within one, and on the embedding only
    "cross_sequence": {"dispersion": "cross_sequence", "dispersion_weight": 0.1},
    "angular_embedding": {"dispersion": "angular", "dispersion_weight": 0.1, "dispersion_layers": "embedding"},
    # C4: different-mechanism regularisers: NEFTune noise (the official GPT-2 default alpha = 1), and
    # a KL pull towards the pretrained GPT-2 that training starts from
    "neftune": {"neftune_alpha": 1.0},
    "distillation": {"distill_from": "gpt2", "distill_weight": 0.1},
}
baseline = "ce"
seeds = [0, 1, 2]
exp_dir = "out-experiment-midtrain-gpt2"
launcher = "torchrun --standalone --nproc_per_node=8"  # 8 GPUs x 1 micro-step of 16 sequences; "python" for one GPU
select_by_val = True  # also evaluate the lowest-val-loss checkpoint (evals at 306, 612, 918, 1224, 1526)

# the paper's protocol: 0-shot anli_r2, lambada_openai, openbookqa, piqa, truthfulqa_mc2, winogrande;
# 1-shot arc_easy, arc_challenge, medmcqa, mmlu; full sets (the paper used limit 500 and picked the best
# of five checkpoints on the test scores; we do neither)
tasks = "paper10"
eval_limit = None
paper_protocol = True
num_fewshot = 1
eval_dtype = "float32"
eval_batch_size = 32

probe_n_seq = 100  # wikitext-103 valid ($DISPERSE_WIKITEXT); the paper's mid-training figure used 10 x 1024
probe_seq_len = 1024
