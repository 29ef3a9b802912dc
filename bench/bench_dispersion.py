"""
Cost of the dispersion loss: step time inside training, peak memory of the loss alone, and the
tile size of the tiled implementation. Every timing interleaves the variants it compares in one
process (A, B, C, A, B, C, ...), so the slow drifts of a shared machine hit them alike; medians.

    python bench/bench_dispersion.py                       # step time: GPT-2 124M, T = 1024, CPU float32
    python bench/bench_dispersion.py --memory              # peak memory of the loss, T = 1k .. 32k
    python bench/bench_dispersion.py --tiles               # loss alone, several tile sizes (and the logged cosine)
    python bench/bench_dispersion.py --tiles --old 0bcf85d # ... and against disperse.py at a git revision
    python bench/bench_dispersion.py --device cuda --batch 8 --dtype bfloat16 --impl reference,tiled,triton

Step mode times what train.py does per micro-step: forward with hidden states, the angular loss on
the 12 selected layers (HF hidden_states[1:]) with weight 0.1, backward, AdamW step; "ce only" is
the same step without the loss. Each implementation named by --impl is one variant on all
positions; one more variant samples --max-tokens positions (with the automatic implementation).
Two more variants split the overhead: "loss alone" is the same dispersion term (automatic
implementation, all positions), forward + backward, on detached copies of the 12 hidden states, with
no model around it (the logged pair cosines included: dispersion_term computes them); "besides the
loss" is what else a dispersion step computes (the 12 gradients added into the residual stream's);
"ce, hidden states returned" is the CE step asking for the hidden states it then ignores. Like
train.py (malloc_tuning=True), glibc's malloc is told to keep freed blocks.

Memory mode runs each (implementation, T) in a fresh subprocess and reports the peak memory of one
forward + backward of the angular loss on (1, T, 768) hidden states beyond what the process held
before (z itself): the growth of the peak resident set size on CPU (VmHWM, reset before the loss),
torch.cuda.max_memory_allocated on CUDA. The reference implementation is skipped where its (T, T) matrices would not fit --max-gb.

Implementations (--impl, comma-separated; they set disperse.IMPLEMENTATION):
  reference  the plain formulas: whole (B, T, T) matrices through autograd, memory quadratic in T
  tiled      disperse_torch.Tiles: the upper triangle in blocks, memory linear in T
  dense      disperse_torch.Dense: whole rows of many sequences per batched matmul, float32 products
             (TF32 where torch allows them), the elementwise step compiled on CUDA
  dense-bf16 the same with bf16 products (disperse.DENSE_MATMUL_DTYPE = torch.bfloat16)
  triton     the fused kernel of disperse_triton.py (CUDA, or CPU under TRITON_INTERPRET=1), its
             matmuls in float32 on the CUDA cores (disperse_triton.DOT_PRECISION = 'ieee', the default)
  triton-tf32x3  the same kernel with DOT_PRECISION = 'tf32x3': three TF32 tensor-core products per matmul
  auto       what training uses: tiled on a CPU; on a GPU the fastest engine for the shape, timed once
             (its choice and timings are printed to stderr)
In step mode every implementation is timed twice: inside the step, and as "loss alone".
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import disperse  # noqa: E402
import disperse_torch  # noqa: E402
from bench.bench_model_versions import load_module  # noqa: E402
from bench.provenance import failure_text, write_result  # noqa: E402


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(variants, reps, device, failed):
    """{name: [seconds]}: every variant once as warm-up, then reps rounds of one call each. A variant
    whose warm-up raises (a kernel that does not compile on this GPU, say) is left out and its error
    put in `failed`, so that the others are still measured."""
    bar = tqdm(total=(reps + 1) * len(variants), desc="interleaved runs", leave=False)
    for name, run in list(variants.items()):
        try:
            run()
        except Exception as e:  # noqa: BLE001  (reported in the results, and the exit status)
            failed[name] = failure_text(e)
            del variants[name]
        bar.update()
    times = {name: [] for name in variants}
    for _ in range(reps):
        for name, run in variants.items():
            sync(device)
            t0 = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            bar.update()
    bar.close()
    return times


# --impl names beyond disperse.IMPLEMENTATIONS: the Triton kernel with another dot precision, Dense with bf16 products
TRITON_PRECISIONS = {"triton-tf32x3": "tf32x3"}
DENSE_DTYPES = {"dense-bf16": torch.bfloat16}


def use(implementation, tile=None):
    """Set disperse.IMPLEMENTATION and TILE (and, for the triton-* and dense-* names, the kernel's dot
    precision or Dense's matmul dtype; any other name sets both back to their defaults)."""
    precision = TRITON_PRECISIONS.get(implementation)
    base = "triton" if precision else "dense" if implementation in DENSE_DTYPES else implementation
    disperse.IMPLEMENTATION, disperse.TILE = base, tile
    disperse.DENSE_MATMUL_DTYPE = DENSE_DTYPES.get(implementation)
    if precision or "disperse_triton" in sys.modules:  # back to the default after a triton-* variant
        import disperse_triton
        disperse_triton.DOT_PRECISION = precision or "ieee"


def step_times(args):
    from model import GPT, GPTConfig
    from system import tune_malloc
    print(f"malloc tuned as in train.py: {tune_malloc()}")
    torch.manual_seed(0)
    config = GPTConfig(block_size=args.seq, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(config).to(args.device)
    opt = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), args.device.split(":")[0])
    x = torch.randint(0, 50257, (args.batch, args.seq), device=args.device)
    gen = torch.Generator(device=args.device).manual_seed(0)
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def step(implementation, max_tokens):
        use(implementation)
        with autocast:
            if implementation is None:
                _, loss = model(x, x)
            else:
                _, ce, hidden = model(x, x, return_hidden=True)
                aux, _ = disperse.dispersion_term(hidden, "angular", "all", 0.1, max_tokens=max_tokens, generator=gen)
                loss = ce + aux
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with torch.no_grad():
        hidden = [h.detach().float().requires_grad_() for h in model(x, x, return_hidden=True)[2]]

    def loss_alone(implementation="auto"):
        use(implementation)
        disperse.dispersion_term(hidden, "angular", "all", 0.1)[0].backward()

    grads = [torch.randn_like(h) for h in hidden]

    def besides_the_loss():  # what a dispersion step adds to the CE step apart from the loss itself
        for i in range(1, len(hidden)):
            grads[i].add_(hidden[i])  # the loss's gradient joining the residual stream's in backward

    def ce_with_hidden():
        use("auto")
        with autocast:
            _, loss, _ = model(x, x, return_hidden=True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    failed = {}
    # not steps: their times are reported as shares of the CE step's
    parts = {f"loss alone, all {args.seq} positions, auto": loss_alone,
             "besides the loss (gradient adds)": besides_the_loss}
    variants = {"ce only": lambda: step(None, None), "ce, hidden states returned": ce_with_hidden, **parts}
    for implementation in args.impl:
        variants[f"angular, all {args.seq} positions, {implementation}"] = \
            lambda implementation=implementation: step(implementation, None)
        alone = f"loss alone, all {args.seq} positions, {implementation}"
        parts[alone] = variants[alone] = lambda implementation=implementation: loss_alone(implementation)
    if args.max_tokens and args.max_tokens < args.seq:
        variants[f"angular, {args.max_tokens} sampled positions, auto"] = lambda: step("auto", args.max_tokens)
    times = interleaved(variants, args.reps, args.device, failed)
    if "ce only" in failed:
        raise SystemExit(f"the CE step itself failed, so nothing can be compared: {failed['ce only']}")
    base = statistics.median(times["ce only"])
    rows = []
    print(f"{'step':44s} {'median s':>9s} {'vs ce only':>11s}")
    for name, ts in times.items():
        median = statistics.median(ts)
        if name in parts:
            rows.append({"variant": name, "median_s": median, "times_s": ts, "share_of_ce_step": median / base})
            print(f"{name:44s} {median:9.3f} {median / base * 100:9.1f} % of it")
        else:
            rows.append({"variant": name, "median_s": median, "times_s": ts, "overhead": median / base - 1})
            print(f"{name:44s} {median:9.3f} {(median / base - 1) * 100:+10.1f}%")
    return rows + failed_rows(failed)


def failed_rows(failed):
    """Result rows (and printed lines) for the variants that raised."""
    for name, error in failed.items():
        print(f"{name}: FAILED, {error}")
    return [{"variant": name, "error": error} for name, error in failed.items()]


def tile_times(args):
    from system import tune_malloc
    print(f"malloc tuned as in train.py: {tune_malloc()}")
    torch.manual_seed(0)
    h = torch.randn(args.batch, args.seq, args.n_embd, device=args.device, requires_grad=True)

    def loss(implementation, tile):
        use(implementation, tile)
        disperse.dispersion_loss(h, "angular").backward()

    failed = {}
    variants = {"reference": lambda: loss("reference", None), "dense": lambda: loss("dense", None)}
    for tile in args.tile_sizes:
        variants[f"tiled, tile {tile}"] = lambda tile=tile: loss("tiled", tile)
    tile = disperse_torch.tile_size(args.seq)
    variants[f"tiled, automatic tile {tile}"] = lambda: loss("tiled", None)
    z_hat = disperse.unit_rows(h.detach(), 1e-2)

    def matmuls_only():  # the automatic tiling's matmuls, none of its elementwise work: the floor
        grad = torch.zeros_like(z_hat)
        for r0, r1, c0, c1 in disperse_torch.pair_blocks(args.seq, tile, True, disperse_torch.STRIP_PAIRS):
            cos = torch.bmm(z_hat[:, r0:r1], z_hat[:, c0:c1].transpose(1, 2))  # (B, r, c)
            grad[:, r0:r1].baddbmm_(cos, z_hat[:, c0:c1])
            mirror = r1 - r0 if c0 == r0 else 0
            grad[:, c0 + mirror:c1].baddbmm_(cos[:, :, mirror:].transpose(1, 2), z_hat[:, r0:r1])
    variants[f"its matmuls only, tile {tile}"] = matmuls_only
    # what dispersion_term logs beside each layer's loss (no gradient)
    variants["logged pair cosine"] = lambda: disperse.mean_pairwise_cos(h.detach())
    if args.old:
        old = disperse_py_at(args.old)
        old.IMPLEMENTATION, old.TILE = "tiled", None

        def old_loss():
            old.dispersion_loss(h, "angular").backward()
        variants[f"disperse.py@{args.old}, tiled, its automatic tile"] = old_loss
        variants[f"disperse.py@{args.old}, logged pair cosine"] = lambda: old.mean_pairwise_cos(h.detach())
    times = interleaved(variants, args.reps, args.device, failed)
    rows = []
    print(f"angular loss alone, forward + backward, (B, T, C) = ({args.batch}, {args.seq}, {args.n_embd}), "
          f"{disperse_torch.STRIP_PAIRS} pairs per block")
    for name, ts in times.items():
        rows.append({"variant": name, "median_s": statistics.median(ts), "times_s": ts})
        print(f"{name:48s} {statistics.median(ts) * 1000:9.2f} ms")
    return rows + failed_rows(failed)


def disperse_py_at(rev):
    """disperse.py as it is at git revision rev, imported under another name (it imports only the
    standard library and torch at the top)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        source = subprocess.run(["git", "show", f"{rev}:disperse.py"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"--old {rev}: cannot read disperse.py at that revision "
                         f"({(getattr(e, 'stderr', '') or str(e)).strip()}); give a commit of this repository")
    path = os.path.join(tempfile.mkdtemp(prefix="disperse_at_rev_"), "disperse_at_rev.py")
    with open(path, "w") as f:
        f.write(source)
    return load_module(path, "disperse_at_rev")


def peak_memory_of_one_loss(implementation, T, C, device):
    """(peak bytes beyond what the process held before the loss, seconds); run in a fresh process."""
    torch.manual_seed(0)
    use(implementation)
    # a small call first, so that loading the kernels' code is not counted
    disperse.dispersion_loss(torch.randn(1, 300, C, device=device, requires_grad=True), "angular").backward()
    z = torch.randn(1, T, C, device=device, requires_grad=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = reset_peak_resident_bytes()
    t0 = time.perf_counter()
    disperse.dispersion_loss(z, "angular").backward()
    sync(device)
    seconds = time.perf_counter() - t0
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = status_kib("VmHWM") * 1024
    return peak - before, seconds


def status_kib(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1))


def reset_peak_resident_bytes():
    """Set the peak resident set size (VmHWM) back to the current one (Linux); returns it."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kib("VmHWM") * 1024


def memory_table(args):
    rows = []
    print(f"peak memory of one forward + backward of the angular loss on (1, T, {args.n_embd}) float32, "
          f"beyond z itself; each in a fresh process")
    print(f"{'T':>7s} {'implementation':>15s} {'peak MB':>10s} {'z MB':>8s} {'seconds':>8s}")
    for T in args.lengths:
        for implementation in args.impl:
            z_mb = T * args.n_embd * 4 / 2**20
            dense_gb = 4 * T * T * 4 / 2**30  # about four (T, T) float32 matrices alive at once
            if implementation == "reference" and dense_gb > args.max_gb:
                rows.append({"T": T, "implementation": implementation, "peak_mb": None,
                             "skipped": f"needs about {dense_gb:.0f} GB > --max-gb {args.max_gb:g}"})
                print(f"{T:7d} {implementation:>15s} {'skipped':>10s}   (needs about {dense_gb:.0f} GB)")
                continue
            command = [sys.executable, os.path.abspath(__file__), "--one-memory", implementation, str(T),
                       "--n-embd", str(args.n_embd), "--device", args.device]
            out = subprocess.run(command, capture_output=True, text=True, env=os.environ)
            if out.returncode != 0:
                raise SystemExit(f"the memory measurement for T={T}, {implementation} failed:\n{out.stderr}")
            peak, seconds = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"T": T, "implementation": implementation, "peak_mb": peak / 2**20, "z_mb": z_mb,
                         "seconds": seconds})
            print(f"{T:7d} {implementation:>15s} {peak / 2**20:10.1f} {z_mb:8.1f} {seconds:8.1f}")
    return rows


def comma_list(cast):
    return lambda text: [cast(part) for part in text.split(",") if part.strip()]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memory", action="store_true", help="peak memory of the loss alone for each of --lengths")
    p.add_argument("--tiles", action="store_true", help="time the loss alone for each of --tile-sizes")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="step mode: the model under bf16 autocast or in float32 (the loss is float32 either way)")
    p.add_argument("--impl", type=comma_list(str), default=None,
                   help="implementations to compare, comma-separated, of reference, tiled, dense, dense-bf16, "
                        "triton, triton-tf32x3, auto (default: reference,tiled,dense, plus on CUDA dense-bf16, auto "
                        "and the triton ones when it imports)")
    p.add_argument("--max-tokens", type=int, default=256,
                   help="step mode: also time the loss on this many sampled positions (0: don't)")
    p.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    p.add_argument("--seq", type=int, default=1024, help="T, the sequence length (default 1024)")
    p.add_argument("--n-layer", type=int, default=12, help="step mode: the model's layers (default GPT-2 124M's 12)")
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--n-embd", type=int, default=768, help="C, the hidden width (default 768)")
    p.add_argument("--reps", type=int, default=4, help="timed rounds per variant (default 4)")
    p.add_argument("--lengths", type=comma_list(int), default=[1024, 4096, 16384, 32768],
                   help="memory mode: the T to measure (default 1024,4096,16384,32768)")
    p.add_argument("--max-gb", type=float, default=6.0,
                   help="memory mode: skip the reference where its matrices need more than this (default 6)")
    p.add_argument("--tile-sizes", type=comma_list(int), default=[32, 64, 128, 256, 512],
                   help="tiles mode: the tile edges to time (default 32,64,128,256,512)")
    p.add_argument("--old", help="tiles mode: also time disperse.py as it is at this git revision (its own "
                                 "automatic tile), interleaved with the others")
    p.add_argument("--json", help="write the results and the settings to this file")
    p.add_argument("--one-memory", nargs=2, metavar=("IMPL", "T"), help=argparse.SUPPRESS)  # memory mode's child
    args = p.parse_args()

    if args.one_memory:
        implementation, T = args.one_memory
        print(json.dumps(peak_memory_of_one_loss(implementation, int(T), args.n_embd, args.device)))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here; use --device cpu")
    if args.impl is None:
        args.impl = ["reference", "tiled", "dense"]
        if args.device.startswith("cuda"):
            args.impl += ["dense-bf16", "auto"] + (["triton", "triton-tf32x3"] if disperse.triton_usable() else [])
    names = (*disperse.IMPLEMENTATIONS, *TRITON_PRECISIONS, *DENSE_DTYPES)
    for implementation in args.impl:
        if implementation not in names:
            raise SystemExit(f"--impl {implementation!r}: choose from {', '.join(names)}")
        if implementation.startswith("triton") and not disperse.triton_usable(args.device):
            raise SystemExit(f"--impl {implementation}: the Triton kernel needs `pip install triton` and a CUDA "
                             "device (or TRITON_INTERPRET=1 on CPU, slow)")

    if args.old and not args.tiles:
        raise SystemExit("--old compares the loss alone: use it with --tiles")
    if args.memory:
        mode, rows = "memory", memory_table(args)
    elif args.tiles:
        mode, rows = "tiles", tile_times(args)
    else:
        mode, rows = "step", step_times(args)
    if args.json:
        device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
        choices = [{"key": str(key), **value} for key, value in disperse.AUTO_CHOICES.items()]
        write_result(args.json, {"mode": mode, "device": device_name, "torch_threads": torch.get_num_threads(),
                                 "settings": vars(args), "results": rows, "auto_choices": choices})
    failed = [row["variant"] for row in rows if "error" in row]
    if failed:
        raise SystemExit(f"{len(failed)} variant(s) failed (the others were measured): {', '.join(failed)}")


if __name__ == "__main__":
    main()
