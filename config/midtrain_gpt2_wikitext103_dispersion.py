# The paper's main setting with its method: CE + 0.1 * angular dispersion on all 12 layers.
_here = __file__.rsplit("/", 1)[0]
exec(open(f"{_here}/midtrain_gpt2_wikitext103.py").read())

out_dir = "out-midtrain-dispersion"
dispersion = "angular"
dispersion_weight = 0.1
dispersion_tau = 1.0
dispersion_clamp = 0.1
dispersion_layers = "all"
dispersion_max_tokens = 256  # the official code (HEAD); None for all 1024 positions (arXiv v1)
