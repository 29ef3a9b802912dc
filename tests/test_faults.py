"""Faults (issue 24): a preempted run (SIGTERM, SIGUSR1), a rank killed, a full disk, a damaged token file.
Each ends in one clear line, loses nothing, and a resumed run repeats the uninterrupted one bit for bit.

The signals and the kill are sent by the run to itself, at a chosen iteration: HOOK wraps train.main and
sends them from train.lr_at, which the loop calls at the top of every iteration. Two ranks are started
directly (RANK, WORLD_SIZE, MASTER_PORT), not by torchrun, so that one of them alone can be signalled or
killed, and torchrun does not stop the other for us."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY_MODEL, read_metrics, run_train

# dropout, token subsampling and NEFTune noise use every random generator a checkpoint must carry
RUN = [*TINY_MODEL, "--eval_interval=4", "--eval_iters=2", "--dropout=0.1", "--dispersion=angular",
       "--dispersion_max_tokens=8", "--neftune_alpha=1.0", "--warmup_iters=2", "--lr_decay_iters=40",
       "--learning_rate=3e-3", "--max_iters=10"]
DDP = [*RUN, "--gradient_accumulation_steps=2", "--dist_timeout_s=20"]
HOOK = """
import os, signal, sys
sys.path.insert(0, {repo!r})
import checkpoint, system, train
from errors import run_cli
at, me = int(os.environ.get("SIGNAL_AT", -1)), os.environ.get("RANK", "0") == os.environ.get("SIGNAL_RANK", "0")
lr_at, write, sent = train.lr_at, checkpoint.write, []

def signalled_lr_at(cfg, it):  # the top of every iteration: the test's clock
    if it == at and me:
        sent.append(it)
        os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL"]))
    return lr_at(cfg, it)

def interrupted_write(path, payload):  # the save that the signal asked for is hit by a second one
    if sent:
        os.kill(os.getpid(), signal.SIGTERM)
    return write(path, payload)

train.lr_at = signalled_lr_at
if os.environ.get("SECOND_SIGNAL"):
    checkpoint.write = interrupted_write
with system.lost_rank_reported():
    run_cli(train.main, sys.argv[1:])
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def hooked(args, **env):
    """train.py with HOOK, one process: (exit status, stdout, stderr)."""
    result = subprocess.run([sys.executable, "-c", HOOK.format(repo=str(REPO)), *args], cwd=REPO,
                            env={**ENV, **env}, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout, result.stderr


def two_ranks(args, timeout=120, **env):
    """train.py with HOOK on 2 gloo ranks started directly: [(exit status, stdout, stderr)] per rank, and
    the seconds rank 0 took to end after rank 1 ended."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", HOOK.format(repo=str(REPO)), *args], cwd=REPO,
                              env={**ENV, **env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        out1 = procs[1].communicate(timeout=timeout)
        t1 = time.perf_counter()
        out0 = procs[0].communicate(timeout=timeout)
        lag = time.perf_counter() - t1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return [(procs[0].returncode, *out0), (procs[1].returncode, *out1)], lag


def assert_same_run(got, want, resumed_from):
    """Every logged number but the timings, bit for bit, and the iterations in the same order."""
    assert [r["iter"] for r in got] == [r["iter"] for r in want]  # the log was trimmed and redone
    tail = [(a, b) for a, b in zip(got, want) if a["iter"] >= resumed_from]
    assert len(tail) >= 3
    for a, b in tail:
        assert a.keys() == b.keys()
        for key in a.keys() - {"dt_ms", "mfu", "mem_mb"}:
            assert a[key] == b[key], (key, a, b)


def saved_iteration(path):
    import checkpoint
    return checkpoint.read_for_resume(str(path))["iter_num"]  # its checksum verified


@pytest.fixture(scope="module")
def straight(tiny_dataset, tmp_path_factory):
    """The uninterrupted runs: one process, and 2 DDP ranks."""
    out = tmp_path_factory.mktemp("straight")
    run_train([*RUN, f"--dataset={tiny_dataset}", f"--out_dir={out / 'one'}"])
    run_train([*DDP, f"--dataset={tiny_dataset}", f"--out_dir={out / 'ddp'}"], torchrun_nproc=2)
    return {"one": read_metrics(out / "one"), "ddp": read_metrics(out / "ddp")}


# ---------------------------------------------------------------------- preemption

def test_sigterm_saves_at_the_next_step_and_the_resumed_run_is_the_same(straight, tiny_dataset, tmp_path):
    """SIGTERM at iteration 6 (between evals): a checkpoint of iteration 6, one line, exit 0; a second
    SIGTERM in the middle of that save changes nothing. Resumed, the run logs what the uninterrupted one did."""
    out = tmp_path / "out"
    code, stdout, stderr = hooked([*RUN, f"--dataset={tiny_dataset}", f"--out_dir={out}"], SIGNAL="SIGTERM",
                                  SIGNAL_AT="6", SECOND_SIGNAL="1")
    assert code == 0, stderr[-2000:]
    assert stdout.strip().splitlines()[-1] == (f"preempted (SIGTERM): checkpoint {out / 'ckpt.pt'} saved at step 6; "
                                               "continue with --init_from=resume")
    assert saved_iteration(out / "ckpt.pt") == 6 and not (out / "ckpt.pt.tmp").exists()
    assert max(r["iter"] for r in read_metrics(out)) == 5
    run_train(["--init_from=resume", f"--out_dir={out}"])  # the settings come from the checkpoint
    assert_same_run(read_metrics(out), straight["one"], resumed_from=6)


def test_sigusr1_to_one_rank_stops_both_at_the_same_step(straight, tiny_dataset, tmp_path):
    """SLURM's --signal=USR1 reaching rank 1 alone: both ranks save iteration 5 together and exit 0; the
    resumed 2-rank run logs what the uninterrupted one did."""
    out = tmp_path / "out"
    args = [*DDP, f"--dataset={tiny_dataset}", f"--out_dir={out}"]
    ranks, _ = two_ranks(args, SIGNAL="SIGUSR1", SIGNAL_AT="5", SIGNAL_RANK="1")
    assert [code for code, _, _ in ranks] == [0, 0], ranks[0][2][-2000:] + ranks[1][2][-2000:]
    assert ranks[0][1].strip().splitlines()[-1].startswith(f"preempted (SIGUSR1): checkpoint {out / 'ckpt.pt'} "
                                                           "saved at step 5")
    assert saved_iteration(out / "ckpt.pt") == 5
    ranks, _ = two_ranks(["--init_from=resume", f"--out_dir={out}"])
    assert [code for code, _, _ in ranks] == [0, 0], ranks[0][2][-2000:]
    assert_same_run(read_metrics(out), straight["ddp"], resumed_from=5)


# ---------------------------------------------------------------------- a rank killed

def test_a_killed_rank_stops_the_other_and_the_last_checkpoint_resumes(straight, tiny_dataset, tmp_path):
    """Rank 1 killed (SIGKILL) at iteration 6: rank 0 stops within seconds with one line, the checkpoint of
    iteration 4 is intact, and the resumed run logs what the uninterrupted one did."""
    out = tmp_path / "out"
    ranks, lag = two_ranks([*DDP, f"--dataset={tiny_dataset}", f"--out_dir={out}"], SIGNAL="SIGKILL",
                           SIGNAL_AT="6", SIGNAL_RANK="1")
    (code0, _, stderr0), (code1, _, _) = ranks
    assert code1 == -signal.SIGKILL and code0 == 1, stderr0[-2000:]
    assert lag < 10, lag  # its sockets closed: the next collective fails at once (not after dist_timeout_s=20)
    last = stderr0.strip().splitlines()[-1]
    assert last.startswith("error: rank 0: another process of this run died or stopped answering"), last
    assert "continue with --init_from=resume" in last and "Traceback" not in stderr0
    assert saved_iteration(out / "ckpt.pt") == 4
    ranks, _ = two_ranks(["--init_from=resume", f"--out_dir={out}"])
    assert [code for code, _, _ in ranks] == [0, 0], ranks[0][2][-2000:]
    assert_same_run(read_metrics(out), straight["ddp"], resumed_from=4)


# ---------------------------------------------------------------------- a full disk (simulated ENOSPC)

def main_in_process(argv):
    """train.main as its command line runs it (one thread, as the subprocesses): (exit status, the message
    of a failure)."""
    import train
    from errors import run_cli
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_cli(train.main, argv)
    except SystemExit as e:
        return (1, e.code) if isinstance(e.code, str) else (e.code or 0, "")
    finally:
        torch.set_num_threads(threads)
    return 0, ""


def test_a_full_disk_while_logging_stops_in_one_line_and_loses_nothing(tiny_dataset, tmp_path, monkeypatch):
    """ENOSPC halfway through a metrics.jsonl record: one line naming the file and the space it needs,
    exit status 1, the log cut back to its last whole record, ckpt.pt untouched; once space returns the
    resumed run logs what an uninterrupted one does."""
    import files
    args = [*RUN, f"--dataset={tiny_dataset}", "--log_interval=1"]
    assert main_in_process([*args, f"--out_dir={tmp_path / 'straight'}"]) == (0, "")
    out = tmp_path / "out"
    assert main_in_process([*args, f"--out_dir={out}", "--max_iters=4"]) == (0, "")
    ckpt, log = (out / "ckpt.pt").read_bytes(), out / "metrics.jsonl"
    write_all, calls = files._write_all, []

    def full_at_iteration_6(fd, data):
        calls.append(json.loads(data)["iter"])
        if calls[-1] == 6:
            os.write(fd, data[: len(data) // 2])  # half a record reaches the file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        write_all(fd, data)
    monkeypatch.setattr(files, "_write_all", full_at_iteration_6)
    code, message = main_in_process([*args, f"--out_dir={out}", "--init_from=resume"])
    assert code == 1 and message.startswith(f"error: no space left on the device to write {log} (it needs about "), message
    assert "bytes" in message and "\n" not in message
    assert log.read_text().endswith("}\n") and max(r["iter"] for r in read_metrics(out)) == 5
    assert (out / "ckpt.pt").read_bytes() == ckpt
    monkeypatch.undo()
    assert main_in_process([*args, f"--out_dir={out}", "--init_from=resume"]) == (0, "")
    assert_same_run(read_metrics(out), read_metrics(tmp_path / "straight"), resumed_from=4)


def test_a_full_disk_on_a_first_write_does_not_speak_of_a_previous_file(tmp_path):
    from files import disk_full_message
    new, old = tmp_path / "ckpt.pt", tmp_path / "metrics.jsonl"
    old.write_text("{}\n")
    assert "nothing was left half-written" in disk_full_message(str(new), needed=10)
    assert "previous" not in disk_full_message(str(new), needed=10)
    assert "the previous file is left as it was" in disk_full_message(str(old), needed=10)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(parallel, tiny_dataset, tmp_path, monkeypatch):
    """ENOSPC while the checkpoint of iteration 8 is written (ckpt.pt, or the DCP folder ckpt_dcp of
    parallel=fsdp, here one process): one line naming it and the space it needs, exit status 1, the
    checkpoint of iteration 4 as it was, no temporary left; the run resumes from it."""
    args = [*RUN, f"--dataset={tiny_dataset}", f"--out_dir={tmp_path}", f"--parallel={parallel}", "--max_iters=8"]
    assert main_in_process([*args, "--max_iters=4"]) == (0, "")
    path = tmp_path / ("ckpt_dcp" if parallel == "fsdp" else "ckpt.pt")
    before = {p.name: p.read_bytes() for p in (path.iterdir() if path.is_dir() else [path])}

    def full(obj, f, *args, **kwargs):  # torch.save: the first bytes reach the file, then the disk is full
        f.write(b"PK" + bytes(100))
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    code, message = main_in_process([*args, "--init_from=resume"])
    assert code == 1 and message.startswith(f"error: no space left on the device to write {path} (it needs "), message
    assert "\n" not in message and "the previous file is left as it was" in message
    assert {p.name: p.read_bytes() for p in (path.iterdir() if path.is_dir() else [path])} == before
    assert not os.path.exists(str(path) + ".tmp")
    monkeypatch.undo()
    assert main_in_process([*args, "--init_from=resume"]) == (0, "")
    assert max(r["iter"] for r in read_metrics(tmp_path)) == 8


# ---------------------------------------------------------------------- damaged token files

def damaged_copy(tiny_dataset, tmp_path):
    """A copy of the data whose meta.json records the largest id, with half of train.bin changed since."""
    import shutil

    import numpy as np
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    meta = json.loads((data / "meta.json").read_text())
    ids = np.fromfile(data / "train.bin", dtype=np.uint16)
    meta["train"] = {"tokens": len(ids), "max_token_id": int(ids.max())}
    (data / "meta.json").write_text(json.dumps(meta))
    ids[len(ids) // 2:] = 4000  # half the file damaged since
    ids.tofile(data / "train.bin")
    return data


def test_a_token_file_damaged_after_preparation_stops_the_run_before_any_step(tiny_dataset, tmp_path):
    """A file up to data.common.SCAN_BYTES is read whole at start, whatever meta.json says: one line
    naming it, and nothing written. (A file cut short: tests/test_errors.py.)"""
    data = damaged_copy(tiny_dataset, tmp_path)
    code, message = main_in_process([*RUN, f"--dataset={data}", f"--out_dir={tmp_path / 'out'}"])
    assert code == 1 and message == (f"error: {data / 'train.bin'} holds token id 4000 but the model has "
                                     "vocab_size=128 (ids 0..127); set vocab_size to at least 4001 or prepare "
                                     "the data with the model's tokenizer"), message
    assert not (tmp_path / "out" / "metrics.jsonl").exists() and not (tmp_path / "out" / "ckpt.pt").exists()


def test_a_large_damaged_token_file_is_named_by_the_batch_that_reads_it(tiny_dataset, tmp_path, monkeypatch):
    """A file above SCAN_BYTES (OpenWebText's 17 GB) is taken at its meta.json's largest id; the batch
    that reads a damaged id stops the run with one line naming the file and the position, before the
    model sees it."""
    from data import common
    monkeypatch.setattr(common, "SCAN_BYTES", 0)
    data = damaged_copy(tiny_dataset, tmp_path)
    code, message = main_in_process([*RUN, f"--dataset={data}", f"--out_dir={tmp_path / 'out'}"])
    assert code == 1 and message.startswith(f"error: {data / 'train.bin'} holds token id 4000 at position "), message
    assert "beyond vocab_size=128" in message and "\n" not in message
