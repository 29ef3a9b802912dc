"""
Running an experiment's grid (experiment.py plans it): each run trained by train.py in a subprocess,
then its checkpoints evaluated (eval/evaluate.py), then marked done; several runs at once with jobs > 1.

A run is a dict the plan made: arm, seed, name, dir, spec (everything that determines what its folder
holds), command and resume_command (train.py's command lines), max_iters, select_by_val. In its folder:
  1. train.log, ckpt.pt, metrics.jsonl (and ckpt_best.pt with select_by_val): train.py's. A rerun of an
     unfinished run resumes its training from its ckpt.pt.
  2. eval/, condensation/: the final checkpoint's benchmarks and probe; with select_by_val, eval_best/ and
     condensation_best/ for ckpt_best.pt (the lowest val loss, never a test score) unless it is the final one.
  3. done.json, written last: a rerun skips the run only when everything above succeeded. A folder made
     with other settings is never silently reused: the run stops with an error.
"""

import codecs
import concurrent.futures
import datetime
import json
import multiprocessing
import os
import shlex
import subprocess
import sys
import time

from errors import InputError
from eval.evaluate import evaluate_checkpoint
from eval.runs import best_checkpoint
from files import json_safe, read_json, read_metrics, write_json
from system import hardware

REPO = os.path.dirname(os.path.abspath(__file__))


class GridError(InputError):
    """A run folder that cannot be used as it is (made with other settings)."""


def run_logged(cmd, log_path, threads=0, echo=True):
    """Run cmd from the repository root; its output goes to log_path (and, with echo, to the console)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log_path, "ab") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n".encode())
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            log.write(chunk)
            log.flush()
            if echo:
                sys.stdout.write(decoder.decode(chunk))
                sys.stdout.flush()
        return proc.wait()


def _tail(path, n=25):
    with open(path, errors="replace") as f:
        lines = f.read().replace("\r", "\n").splitlines()
    return "\n".join(line for line in lines[-n:])


def training_finished(run_dir, max_iters):
    """train.py logs the val loss at max_iters after writing the final checkpoint."""
    path = os.path.join(run_dir, "metrics.jsonl")
    return os.path.exists(path) and any(r.get("iter") == max_iters and "val_loss" in r for r in read_metrics(path))


def _children_cpu():
    """CPU seconds (user + sys) of this process's finished subprocesses: what a training run cost."""
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(run, evaluation, threads, say, quiet=False):
    """Train, benchmark and probe one run. Returns 'skipped', 'done' or 'failed'. quiet: train.py's
    output only to train.log, no progress bars (parallel runs)."""
    run_dir, name, spec, max_iters = run["dir"], run["name"], run["spec"], run["max_iters"]
    if os.path.exists(os.path.join(run_dir, "done.json")):
        if read_json(os.path.join(run_dir, "done.json"))["spec"] != json_safe(spec):
            raise GridError(f"{run_dir} was made with other settings; use another exp_dir or delete that folder")
        say(f"{name}: already done, skipped")
        return "skipped"
    os.makedirs(run_dir, exist_ok=True)
    old = read_json(os.path.join(run_dir, "spec.json"))
    if old is not None and old != json_safe(spec):
        raise GridError(f"{run_dir} holds an unfinished run with other settings; use another exp_dir or delete that folder")
    write_json(os.path.join(run_dir, "spec.json"), spec)
    timings = read_json(os.path.join(run_dir, "timings.json")) or {}

    if training_finished(run_dir, max_iters):
        say(f"{name}: training already finished")
    else:
        resume = os.path.exists(os.path.join(run_dir, "ckpt.pt"))
        say(f"{name}: {'resuming' if resume else 'training'} (log: {os.path.join(run_dir, 'train.log')})")
        t0, cpu0 = time.time(), _children_cpu()
        rc = run_logged(run["resume_command" if resume else "command"], os.path.join(run_dir, "train.log"),
                        threads, echo=not quiet)
        if rc != 0 or not training_finished(run_dir, max_iters):
            say(f"{name}: training FAILED (exit code {rc}); last lines of train.log:\n"
                + _tail(os.path.join(run_dir, "train.log")))
            return "failed"
        timings["train"] = timings.get("train", 0.0) + time.time() - t0
        timings["train_cpu"] = timings.get("train_cpu", 0.0) + _children_cpu() - cpu0  # user + sys, all threads
        write_json(os.path.join(run_dir, "timings.json"), timings)

    checkpoints = [("ckpt.pt", "eval", "condensation")]
    best = None
    if run["select_by_val"]:
        best = best_checkpoint(run_dir)
        if best is None:
            say(f"{name}: FAILED: no ckpt_best.pt (was it trained without select_by_val?)")
            return "failed"
        if best["iter"] != max_iters:
            checkpoints.append(("ckpt_best.pt", "eval_best", "condensation_best"))
    for ckpt, eval_name, probe_name in checkpoints:
        say(f"{name}: benchmarks and probe of {ckpt}")
        try:
            seconds = evaluate_checkpoint(evaluation, os.path.join(run_dir, ckpt), os.path.join(run_dir, eval_name),
                                          os.path.join(run_dir, probe_name), name, progress=not quiet,
                                          fresh_val=ckpt == "ckpt_best.pt")
        except Exception as e:  # noqa: BLE001  (reported, then the grid stops or goes on)
            say(f"{name}: evaluating {ckpt} FAILED: {type(e).__name__}: {e}")
            return "failed"
        for k, v in seconds.items():
            timings[k] = timings.get(k, 0.0) + v
        write_json(os.path.join(run_dir, "timings.json"), timings)

    val_loss = next((r["val_loss"] for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))
                     if r.get("iter") == max_iters and "val_loss" in r), None)
    probe = read_json(os.path.join(run_dir, "condensation", "condensation.json"))
    cos = probe["layers"][-1]["mean_cos"] if probe else None  # the last hidden state, after ln_f
    write_json(os.path.join(run_dir, "done.json"), {
        "spec": spec, "final_iter": max_iters, "best": best, "val_loss": val_loss, "last_layer_mean_cos": cos,
        "seconds": timings, "hardware": hardware(), "finished": datetime.datetime.now().isoformat(timespec="seconds")})
    wall = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items() if not k.endswith("_cpu"))
    cpu = sum(v for k, v in timings.items() if k.endswith("_cpu"))
    say(f"{name}: done, val loss {val_loss:.3f}, last-layer mean cos {cos:.3f} ({wall}; {cpu:.0f} CPU-s)")
    return "done"


def _run_in_worker(run, evaluation, threads):
    """One run in a worker process of the pool (jobs > 1): quiet, its messages returned to the parent."""
    messages = []
    status = run_one(run, evaluation, threads, messages.append, quiet=True)
    return status, messages


def _init_worker(threads):
    if threads:
        import torch
        torch.set_num_threads(threads)  # for the evaluations, which run in the worker


def _run_stage(runs, evaluation, jobs, threads, keep_going, label):
    """The runs, `jobs` at a time (each in its own process, `threads` threads) or one after the other
    in this process. Returns {'done', 'skipped', 'failed'}."""
    outcome = {"done": 0, "skipped": 0, "failed": 0}
    if jobs == 1:
        for i, run in enumerate(runs):
            # numbered lines rather than a progress bar: the runs print their own tqdm bars
            status = run_one(run, evaluation, threads, lambda m: print(f"[{label} {i + 1}/{len(runs)}] {m}", flush=True))
            outcome[status] += 1
            if status == "failed" and not keep_going:
                print(f"[{label}] stopping (keep_going=False); rerun the same command to resume")
                break
        return outcome
    if not runs:
        return outcome
    print(f"[{label}] {len(runs)} runs, {jobs} at a time; each one's output is in its train.log", flush=True)
    # spawn, not fork: this process has torch loaded, and a forked copy of its thread pools can hang
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(_run_in_worker, run, evaluation, threads): run for run in runs}
        stopping = False
        for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
            if future.cancelled():  # not started: keep_going=False stopped the grid after a failure
                continue
            try:
                status, messages = future.result()  # a GridError in a worker is raised here
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # the runs under way finish, no new one starts
                raise
            outcome[status] += 1
            for message in (messages if status == "failed" else messages[-1:]):
                print(f"[{label} {n}/{len(runs)}] {message}", flush=True)
            if status == "failed" and not keep_going and not stopping:
                stopping = True
                print(f"[{label}] stopping after the runs under way (keep_going=False); rerun the same command "
                      "to resume", flush=True)
                for f in futures:
                    f.cancel()
    return outcome


def run_grid(exp_dir, bases, runs, evaluation, jobs=1, threads=0, keep_going=False, argv=()):
    """The base runs first (one alone gets every thread the parallel runs would have; one per seed run
    `jobs` at a time), then the runs, `jobs` at a time. Returns {'done', 'skipped', 'failed'}: counts."""
    if threads:
        import torch
        torch.set_num_threads(threads)  # for the evaluations, which run in this process
    t0 = time.time()
    outcome = {"done": 0, "skipped": 0, "failed": 0}
    if bases:
        stage = _run_stage(bases, evaluation, jobs if len(bases) > 1 else 1, threads * jobs if len(bases) == 1 else threads,
                           keep_going=False, label="experiment base")
        for k in outcome:
            outcome[k] += stage[k]
        if stage["failed"]:
            print("[experiment] stopping: the arms need the base runs; rerun the same command to resume them")
            runs = []
    stage = _run_stage(runs, evaluation, jobs, threads, keep_going, "experiment")
    for k in outcome:
        outcome[k] += stage[k]
    seconds = time.time() - t0
    with open(os.path.join(exp_dir, "invocations.jsonl"), "a") as f:
        f.write(json.dumps({"argv": list(argv), "finished": datetime.datetime.now().isoformat(timespec="seconds"),
                            "seconds": round(seconds, 1), "jobs": jobs, **outcome}) + "\n")
    print(f"[experiment] {outcome['done']} run(s) done, {outcome['skipped']} skipped, {outcome['failed']} failed "
          f"in {seconds / 60:.1f} min")
    return outcome
