"""
The paper's comparison in one command: a grid of arms x seeds, each arm trained, benchmarked and
probed for condensation, then one report with honest statistics.

    python experiment.py config/experiment_cpu.py                  # the CPU default grid (~14 min, 2 cores)
    python experiment.py config/experiment_cpu.py --seeds=[0,1,2] --eval_limit=10
    python experiment.py config/experiment_midtrain_gpt2.py        # the paper's setting: 8 GPUs, torchrun
    python experiment.py config/experiment_cpu.py --dry_run=True   # check config and inputs, print the commands
    python experiment.py report out-experiment-cpu                 # rebuild the report from finished runs

An experiment config is plain Python, read and checked like train.py's configs (configurator.py):

    base_config = "config/train_local_cpu.py"     # the train.py config every arm starts from
    base_run = {"n_embd": 128, "max_iters": 300}  # optional: pretrain one base that every arm mid-trains
    base_overrides = {"max_iters": 200}           # train.py settings for every arm
    arms = {"ce": {},                             # arm name -> its train.py settings
            "angular": {"dispersion": "angular", "dispersion_weight": 0.1},
            "random_direction": {"dispersion": "random_direction", "dispersion_weight": 0.1}}
    seeds = [0, 1]

plus the settings in DEFAULTS below. An unknown key, an arm setting train.py does not have, a value
of the wrong type, or a missing input (data, tokenizer, benchmark files, probe text) stops the
experiment before any work, dry_run too, naming the arm and the close matches.

With base_run (the paper's protocol: mid-training a pretrained model), one base GPT is first pretrained
with cross-entropy into EXP/base/ (`train.py <base_config> --<base_run>`), benchmarked and probed like a
run (the "no mid-training" row); every arm then starts from its weights (init_from=EXP/base: weights
only, a fresh optimizer, iteration 0), keeps its architecture and sets the mid-training (steps, learning
rate, dispersion). The base is trained once: a rerun reuses it, resumes it, or refuses other settings.

Each run (arm, seed) trains in EXP/<arm>/seed<S>/ (`<launcher> train.py <base_config> --<base_overrides>
--<arm settings> --seed=S --out_dir=...`); its final checkpoint (and with select_by_val the one of the
lowest val loss, never a test score) is then benchmarked and probed. grid.py runs them (jobs=N: N at
once), skips finished runs, resumes unfinished ones and refuses a folder made with other settings. At
one seed every arm reads the same batches (train.py keys them by (seed, step, micro-batch); the
auxiliary losses have their own RNG), so arms differ only by their settings. With wandb_log=True, runs
are logged in group <experiment folder>, named <arm>/seed<S> (unless set). Then EXP/report.md,
report.json and PNGs (eval/report.py).
"""

import datetime
import os
import re
import shlex
import sys

import grid
from configurator import ConfigError, HelpSource, load_config, parse_value
from data.common import dataset_dir, get_tokenizer, open_split, read_meta
from errors import InputError, did_you_mean, run_cli
from eval import report, tasks
from eval.compare import PRIMARY_CHOICES
from eval.evaluate import check_eval_limits, check_inputs, evaluation_settings
from eval.runs import BASE, run_dir_of
from files import write_json

REPO = os.path.dirname(os.path.abspath(__file__))

# -----------------------------------------------------------------------------
# experiment settings and their defaults (a config file and --key=value replace them)
DEFAULTS = dict(
    base_config="",  # train.py config file the arms start from; "" = train.py's own defaults
    base_overrides={},  # train.py settings applied to every arm, after base_config
    base_run={},  # train.py settings of a pretraining stage: one base GPT trained with CE into EXP/base/, which
    #               every arm then mid-trains (init_from); it may set seed. {}: no base stage
    base_per_seed=False,  # with base_run: one base per seed S (EXP/base/seed<S>, pretrained with seed S) that the runs
    #                       of seed S mid-train, so every interval includes pretraining variance (S times the cost)
    arms={"ce": {}, "angular": {"dispersion": "angular", "dispersion_weight": 0.1}},  # arm name -> its train.py settings
    baseline="ce",  # the arm every other arm is compared with, paired by (seed, item)
    baselines={},  # arm -> the arm it is compared with instead of `baseline` (e.g. each width's own CE arm)
    seeds=[0, 1],  # every arm runs once per seed (the seeds pair the arms' runs)
    exp_dir="out-experiment",  # the experiment's folder: one subfolder per run, then the report
    launcher="python",  # how train.py is started, e.g. "torchrun --standalone --nproc_per_node=8"
    select_by_val=True,  # also evaluate the checkpoint with the lowest val loss
    keep_going=False,  # after a failed run, go on with the others (default: stop; a rerun resumes)
    jobs=1,  # (arm, seed) runs at once, each in its own process of `threads` threads (the base gets jobs x threads)
    threads=0,  # CPU threads per process (training, evaluation); 0: torch's default. On a machine shared
    #             with other jobs, 1 avoids threads stalling on each other (measured 3.7x faster on 2 busy cores)
    dry_run=False,  # check everything and print the commands, run nothing
    # benchmarks (eval/benchmarks.py)
    tasks="paper10",  # benchmarks (names or groups, comma-separated)
    eval_limit=None,  # score the first N documents of each task (of each MMLU subject); None: all
    eval_limits={},  # task or group name -> its own limit (None: all), e.g. {"lambada_openai": None, "mmlu": 5}
    num_fewshot=0,  # shots per question
    paper_protocol=False,  # 0-shot for six tasks, num_fewshot shots for ARC-E/C, MedMCQA, MMLU (the paper's)
    eval_data_dir="",  # folder of <dataset>/<split>.jsonl; "" = $DISPERSE_BENCHMARKS
    eval_device="auto",  # auto: cuda if available, else cpu
    eval_dtype="float32",  # autocast dtype for scoring on cuda
    eval_batch_size=16,  # sequences per scoring batch
    # condensation probe (eval/condensation.py)
    probe_text="",  # text (or prepared .bin) file to draw sequences from; "" = $DISPERSE_WIKITEXT
    probe_n_seq=100,  # sequences the probe averages over
    probe_seq_len=512,  # capped at the model's block_size
    probe_batch_size=8,  # sequences per probe batch
    # statistics (docs/statistics.md)
    primary=["val_loss", "avg_acc", "mean_cos_last"],  # each arm's primary comparisons with its baseline: their stars
    #        Holm-corrected over arms and metrics; every other comparison is exploratory (Benjamini-Hochberg)
    n_boot=2000,  # bootstrap replicates for the confidence intervals
    boot_seed=0,  # seed of the item bootstrap
)
TYPES = {"eval_limit": (int, type(None))}
# train.py settings the runner sets itself: an arm may not set them
RESERVED = ("seed", "out_dir", "always_save_checkpoint", "eval_only", "keep_best")
# train.py's model settings: an arm that mid-trains the base has the base's (its weights say so); of these
# an arm may change only dropout, and block_size downwards (train.py crops the position embeddings)
MODEL_KEYS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "n_inner", "norm",
              "norm_eps", "pos_emb", "rope_theta", "mlp", "n_kv_head", "head_dim", "qk_norm", "qkv_bias",
              "tie_embeddings")


class ExperimentError(InputError):
    """A setting of the experiment that cannot work; the message names it and says why."""


# ---------------------------------------------------------------------- config

def _cli_value(value):
    """How a setting is written on train.py's command line so configurator.py reads it back
    exactly: strings as they are unless they would parse as something else ("1,6,12" is a tuple)."""
    return value if isinstance(value, str) and isinstance(parse_value(value), str) else repr(value)


def train_args(spec, out_dir):
    """train.py's argv for one run (base config file, then every setting as --key=value)."""
    args = [spec["base_config"]] if spec["base_config"] else []
    settings = {**spec["settings"], "seed": spec["seed"], "out_dir": out_dir, "always_save_checkpoint": True}
    # always_save_checkpoint: ckpt.pt must be the final model; the best one is kept aside (train.py keep_best=True)
    return args + [f"--{k}={_cli_value(v)}" for k, v in settings.items()]


def _find_file(path):
    """A path as given (relative to the working directory), else relative to the repository."""
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)  # absolute: train.py runs from the repository root
    in_repo = os.path.join(REPO, path)
    return in_repo if os.path.exists(in_repo) else path


def load_experiment(argv):
    """Defaults, then config files, then --key=value: checked by configurator.load_config, then
    the base run and every arm checked against train.py's settings. Returns (cfg, plan); plan: one
    spec per arm (with base_run, each names the base it starts from)."""
    try:
        cfg = load_config(DEFAULTS, argv, TYPES, help=HelpSource(__file__, "DEFAULTS", epilog=report.USAGE))
    except ConfigError as e:
        raise ExperimentError(str(e)) from None
    problems = []
    if not cfg["arms"]:
        problems.append("arms is empty")
    if cfg["baseline"] not in cfg["arms"]:
        problems.append(f"baseline={cfg['baseline']!r} is not an arm (arms: {', '.join(cfg['arms'])})")
    if not isinstance(cfg["baselines"], dict):
        problems.append(f"baselines={cfg['baselines']!r} must be a dict: arm -> the arm it is compared with")
    else:
        for arm, other in cfg["baselines"].items():
            if arm not in cfg["arms"] or other not in cfg["arms"]:
                problems.append(f"baselines[{arm!r}]={other!r}: both must be arms (arms: {', '.join(cfg['arms'])})")
            elif arm == other:
                problems.append(f"baselines[{arm!r}] is the arm itself; compare it with another arm or drop the entry")
    if not cfg["seeds"] or not all(isinstance(s, int) and not isinstance(s, bool) for s in cfg["seeds"]):
        problems.append(f"seeds={cfg['seeds']!r} must be a non-empty list of ints")
    elif len(set(cfg["seeds"])) != len(cfg["seeds"]):
        problems.append(f"seeds={cfg['seeds']!r} repeats a seed")
    for name in cfg["arms"]:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            problems.append(f"arm name {name!r}: use letters, digits and _ . + - (it names a folder)")
        elif name == BASE and cfg["base_run"]:
            problems.append(f"arm name {BASE!r} is the base run's folder; call the arm something else")
    if not isinstance(cfg["primary"], list) or any(k not in PRIMARY_CHOICES for k in cfg["primary"]):
        problems.append(f"primary={cfg['primary']!r}: a list of {', '.join(PRIMARY_CHOICES)}")
    if cfg["base_per_seed"] and not cfg["base_run"]:
        problems.append("base_per_seed=True needs base_run (the pretraining stage to repeat per seed)")
    if cfg["base_per_seed"] and "seed" in cfg["base_run"]:
        problems.append("base_run sets seed, but with base_per_seed=True each base takes its runs' seed; drop it")
    if cfg["threads"] < 0:
        problems.append(f"threads={cfg['threads']} must be 0 (torch's default) or more")
    for key in ("jobs", "eval_batch_size", "probe_n_seq", "probe_seq_len", "probe_batch_size", "n_boot"):
        if cfg[key] < 1:
            problems.append(f"{key}={cfg[key]} must be at least 1")
    if cfg["eval_limit"] is not None and cfg["eval_limit"] < 1:
        problems.append(f"eval_limit={cfg['eval_limit']} must be at least 1 or None")
    if not shlex.split(cfg["launcher"]):
        problems.append("launcher is empty")
    if cfg["base_config"] and not os.path.isfile(_find_file(cfg["base_config"])):
        problems.append(f"base_config {cfg['base_config']!r} not found")
    try:
        problems += check_eval_limits(cfg["eval_limits"], tasks.expand(cfg["tasks"]))
    except KeyError as e:
        problems.append(f"tasks={cfg['tasks']!r}: {e.args[0]}")
    if problems:
        raise ExperimentError("; ".join(problems))
    base = base_spec(cfg) if cfg["base_run"] else None
    plan = {name: arm_spec(cfg, name, base) for name in cfg["arms"]}
    return cfg, plan


def _check_keys(where, overrides, reserved):
    import train
    if not isinstance(overrides, dict):
        raise ExperimentError(f"{where}: expected a dict of train.py settings, got {overrides!r}")
    for key in overrides:
        if key in reserved:
            raise ExperimentError(f"{where}: {key!r} is set by the experiment runner, not by an arm")
        if key not in train.DEFAULTS:
            raise ExperimentError(f"{where}: {key!r} is not a train.py setting{did_you_mean(key, train.DEFAULTS)}")


def _effective(where, base_config, settings):
    """train.py's settings after base_config and `settings`, checked as train.py checks them."""
    import train  # importing train.py runs no training: its settings and checks only

    argv = [_find_file(base_config)] if base_config else []
    argv += [f"--{k}={_cli_value(v)}" for k, v in settings.items()]
    try:
        effective = load_config(train.DEFAULTS, argv, train.TYPES)
        train.check_settings(train.Config(**effective))
    except ConfigError as e:
        raise ExperimentError(f"{where}: {str(e).replace('command line: ', '')}") from None
    except InputError as e:
        raise ExperimentError(f"{where}: {e}") from None
    if effective["init_from"] == "resume":
        raise ExperimentError(f"{where}: init_from='resume' is the runner's job (it resumes unfinished runs itself)")
    return effective


def base_spec(cfg):
    """The base run's spec: base_config + base_run, trained once with its own seed (train.py's default
    unless base_run sets one)."""
    import train
    settings = dict(cfg["base_run"])
    _check_keys("base_run", settings, [k for k in RESERVED if k != "seed"])
    seed = settings.pop("seed", train.DEFAULTS["seed"])
    effective = _effective("base_run", cfg["base_config"], {**settings, "seed": seed})
    if effective["dispersion"] != "none":
        raise ExperimentError(f"base_run: dispersion={effective['dispersion']!r}; the base is pretrained with "
                              "cross-entropy only (the arms add the dispersion term)")
    return {"base_config": cfg["base_config"], "seed": seed, "settings": settings,
            "effective": {k: v for k, v in effective.items() if k not in ("seed", "out_dir")}}


def arm_spec(cfg, name, base=None):
    """Check one arm's settings against train.py (names, types, then train.py's own value checks)
    and return its spec: what defines its runs, apart from the seed and the folder. With a base
    run, the arm gets the base's block_size and vocab_size (what train.py reads besides the
    weights) and may not give itself another architecture."""
    where = "base_overrides" if name is None else f"arm {name!r}"
    overrides = cfg["base_overrides"] if name is None else cfg["arms"][name]
    reserved = RESERVED + (("init_from",) if base else ())
    _check_keys(where, overrides, reserved)
    if name is not None:
        arm_spec(cfg, None, base)  # the shared overrides first, so their errors name them
    inherited = {}
    if base:
        model = base["effective"]
        for key, value in overrides.items():
            if key in MODEL_KEYS and key not in ("dropout", "block_size") and value != model[key]:
                raise ExperimentError(f"{where}: {key}={value!r}, but the arms mid-train the base, whose {key} is "
                                      f"{model[key]!r}; set the architecture in base_run")
        if overrides.get("block_size", 0) > model["block_size"]:
            raise ExperimentError(f"{where}: block_size={overrides['block_size']} is longer than the base's "
                                  f"({model['block_size']}); it can only be cut")
        inherited = {"block_size": model["block_size"], "vocab_size": model["vocab_size"]}
    settings = {**inherited, **cfg["base_overrides"], **({} if name is None else overrides)}
    effective = _effective(where, cfg["base_config"], settings)
    if base:  # the model train.py builds is the base's (init_from)
        effective.update({k: base["effective"][k] for k in MODEL_KEYS if k not in ("dropout", "block_size")})
    spec = {"base_config": cfg["base_config"], "settings": settings,
            "effective": {k: v for k, v in effective.items() if k not in ("seed", "out_dir")}}
    if base:
        spec["base"] = base
    return spec


def run_spec(cfg, plan, arm, seed):
    """Everything that determines what a run's folder holds. Paths that may move with a machine
    (the data folders) are left out; the probe text is named by its file name and size. An arm's
    runs name their base run (its settings), so a changed base is not mixed in either."""
    text = evaluation_settings(cfg)["probe"]["text"]
    if arm == BASE:
        source = next(iter(plan.values()))["base"]
        seed = seed if cfg["base_per_seed"] else source["seed"]
    else:
        source = plan[arm]
    spec = {"arm": arm, "seed": seed, "base_config": source["base_config"], "settings": source["settings"],
            "select_by_val": cfg["select_by_val"] and arm != BASE,
            "eval": {k: cfg[k] for k in ("tasks", "eval_limit", "num_fewshot", "paper_protocol")},
            "probe": {"text": os.path.basename(text) if text else None,
                      "text_bytes": os.path.getsize(text) if text and os.path.isfile(text) else None,
                      "n_seq": cfg["probe_n_seq"], "seq_len": cfg["probe_seq_len"]}}
    if cfg["eval_limits"]:  # only when set, so that runs made before eval_limits existed still match
        spec["eval"]["eval_limits"] = cfg["eval_limits"]
    if arm != BASE and "base" in source:
        spec["base"] = {k: v for k, v in source["base"].items() if k != "effective"}
        if cfg["base_per_seed"]:
            spec["base"] = {**spec["base"], "seed": seed, "per_seed": True}
    return spec


def preflight(plan, evaluation):
    """What the runs will read, checked before the first one and by dry_run, with the messages train.py
    and the evaluation give: each run's data folder (meta, train.bin, val.bin) and tokenizer, train.py's
    own eval inputs, the benchmark files and the probe text. So "config OK" means none is missing."""
    import train
    base = next(iter(plan.values())).get("base")
    for where, spec in ([("base_run", base)] if base else []) + [(f"arm {a!r}", spec) for a, spec in plan.items()]:
        effective, data_dir = spec["effective"], dataset_dir(spec["effective"]["dataset"])
        try:
            meta = read_meta(data_dir)
            for split in ("train", "val"):
                open_split(data_dir, split, effective["block_size"], meta=meta)
            get_tokenizer(meta["tokenizer"])  # the checkpoints': the benchmarks and probe text are encoded with it
            vocab_size = effective["vocab_size"] or meta["vocab_size"]
            train.check_eval_inputs(train.Config(**{**effective, "vocab_size": vocab_size}), meta["tokenizer"])
        except InputError as e:
            raise ExperimentError(f"{where}: {e}") from None
    check_inputs(evaluation)


# ---------------------------------------------------------------------- the runs

def train_command(cfg, spec, run_dir, resume, effective=None):
    """train.py's command line for a run. An arm with a base run starts from the base's weights
    (EXP/base, beside the arm's folder EXP/<arm>/seed<S>); a resumed run from its own ckpt.pt.
    effective: the run's train.py settings; with wandb_log, the run is named <arm>/seed<S> in the
    group named after the experiment folder, unless the settings name them."""
    launcher = shlex.split(cfg["launcher"])
    if launcher[0] in ("python", "python3"):
        launcher[0] = sys.executable  # the interpreter running this, with its packages
    spec = {**spec, "base_config": _find_file(spec["base_config"]) if spec["base_config"] else ""}
    exp_dir = os.path.abspath(cfg["exp_dir"])
    args = train_args(spec, run_dir)
    if resume:
        args.append("--init_from=resume")
    elif "base" in spec:
        args.append(f"--init_from={run_dir_of(exp_dir, BASE, spec['seed'] if cfg['base_per_seed'] else None)}")
    if spec["select_by_val"]:
        args.append("--keep_best=True")
    if effective and effective["wandb_log"]:
        if not effective["wandb_group"]:
            args.append(f"--wandb_group={os.path.basename(exp_dir)}")
        if not effective["wandb_run_name"]:  # base, base/seed<S> or <arm>/seed<S>: the run's folder in EXP
            args.append(f"--wandb_run_name={os.path.relpath(run_dir, exp_dir).replace(os.sep, '/')}")
    return launcher + [os.path.join(REPO, "train.py")] + args


def plan_runs(cfg, plan):
    """(bases, runs): the grid's runs as grid.py takes them (the base runs: none, one, or one per seed;
    and the arms x seeds in seed-major order: after each seed every arm has a run at that seed, so even
    a grid that is stopped half-way holds complete paired comparisons)."""
    exp_dir = os.path.abspath(cfg["exp_dir"])

    def run(arm, seed):
        spec = run_spec(cfg, plan, arm, seed)
        effective = next(iter(plan.values()))["base"]["effective"] if arm == BASE else plan[arm]["effective"]
        run_dir = run_dir_of(exp_dir, arm, seed)
        name = (f"base run, seed {seed}" if seed is not None else "base run") if arm == BASE else f"{arm} seed {seed}"
        return {"arm": arm, "seed": seed, "name": name, "dir": run_dir,
                "spec": spec, "max_iters": effective["max_iters"], "select_by_val": spec["select_by_val"],
                "command": train_command(cfg, spec, run_dir, False, effective),
                "resume_command": train_command(cfg, spec, run_dir, True, effective)}
    bases = []
    if next(iter(plan.values())).get("base"):
        bases = [run(BASE, seed) for seed in cfg["seeds"]] if cfg["base_per_seed"] else [run(BASE, None)]
    return bases, [run(arm, seed) for seed in cfg["seeds"] for arm in cfg["arms"]]


# ---------------------------------------------------------------------- command line

def main(argv):
    try:
        if argv and argv[0] == "report":
            return run_cli(report.main, argv[1:])  # eval/report.py's command line (it says its usage)
        cfg, plan = load_experiment(argv)
        bases, runs = plan_runs(cfg, plan)
        evaluation = evaluation_settings(cfg)
        preflight(plan, evaluation)  # in a dry run too: its "config OK" promises the inputs are there
        if cfg["dry_run"]:
            for run in bases + runs:
                print(shlex.join(run["command"]))
            print(f"config OK: {f'{len(bases)} base run(s), then ' if bases else ''}{len(cfg['arms'])} arms × "
                  f"{len(cfg['seeds'])} seeds; nothing run (dry_run=True)")
            return 0
        exp_dir = os.path.abspath(cfg["exp_dir"])
        os.makedirs(exp_dir, exist_ok=True)
        write_json(os.path.join(exp_dir, "experiment.json"), {
            "config": cfg, "arms": plan, "argv": argv, "probe_text": evaluation["probe"]["text"],
            "benchmarks": evaluation["data_dir"], "task_limits": evaluation["limits"],
            "base": {"dir": BASE, "spec": next(iter(plan.values()))["base"], "per_seed": cfg["base_per_seed"]}
            if bases else None,
            "written": datetime.datetime.now().isoformat(timespec="seconds")})
        outcome = grid.run_grid(exp_dir, bases, runs, evaluation, cfg["jobs"], cfg["threads"], cfg["keep_going"], argv)
        print(f"[experiment] wrote {report.build_report(exp_dir)}")
        return 1 if outcome["failed"] else 0
    except InputError as e:  # ExperimentError, grid.GridError, a missing input file
        print(f"experiment error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
