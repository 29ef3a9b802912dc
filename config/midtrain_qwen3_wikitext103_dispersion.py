# The paper's Qwen3 setting with its method: CE + 0.1 * angular dispersion on all 28 layers.
_here = __file__.rsplit("/", 1)[0]
exec(open(f"{_here}/midtrain_qwen3_wikitext103.py").read())

out_dir = "out-midtrain-qwen3-dispersion"
dispersion = "angular"
dispersion_weight = 0.1
dispersion_tau = 1.0
dispersion_clamp = 0.25  # the Qwen3 script does not pass --clamp_threshold: the class default 0.25 (GPT-2: 0.1)
dispersion_layers = "all"
dispersion_max_tokens = 256  # the official code (HEAD); None for all 4096 positions (arXiv v1)
