#!/usr/bin/env bash
# GPU run book: the checks that need a GPU, as one command (about 8 minutes on one H200, no network;
# the step limits add up to 560 s, so it fits one 600-second command).
#
#   bash bench/gpu_check.sh                 # on a CUDA machine; JSON to bench/results/gpu_check/<UTC time>/
#   bash bench/gpu_check.sh --out DIR       # JSON to DIR
#   bash bench/gpu_check.sh --dry-run       # the same steps on the CPU at tiny sizes (CI runs it, about a minute)
#
# Steps (each one's JSON in the output folder; a step that fails or runs out of its time is reported
# and the others still run; the exit status is 1 if any step failed):
#   0. triton.json       the Triton dispersion kernels against the float64 reference, every pair variant,
#                        small shapes and the training shape (bench/check_triton.py); the dry run checks
#                        the small shapes under Triton's interpreter; skipped without triton
#   1. train_gpt2.json   GPT-2 124M training throughput and MFU: bf16, torch.compile, nanoGPT's
#                        config (batch 12 x 1024 tokens, no accumulation), bench/bench_train.py
#   2. dispersion.json   angular dispersion's step overhead, all 1024 positions and 256 sampled,
#                        reference / tiled / Triton with float32 or tf32x3 matmuls (bench/bench_dispersion.py)
#   3. modes.json        compiled vs eager losses of the same run (CE + angular dispersion on every
#                        layer, lambda 0.1), and with 2+ GPUs a 2-process
#                        torchrun (DDP) on the same batches (bench/check_train_modes.py); the dry run
#                        compares eager with a 2-process CPU torchrun instead (no compile: too slow on a CPU)
#   4. eval/bench_eval.json  benchmark scorer items/s, ours vs lm-eval's hf model (bench/bench_eval.py);
#                        needs lm-eval and DISPERSE_BENCHMARKS, TIKTOKEN_CACHE_DIR (the offline data); skipped without
#   5. summary.json      the figures above in one place, also printed
# MFU uses model.PEAK_FLOPS by device name; set PEAK_FLOPS=<flop/s> for a GPU the table lacks.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT="$2"; shift ;;
        *) echo "error: unknown argument $1 (use --dry-run and/or --out DIR)" >&2; exit 2 ;;
    esac
    shift
done
OUT="${OUT:-bench/results/gpu_check/$(date -u +%Y%m%dT%H%M%SZ)$([ $DRY = 1 ] && echo -dry)}"
mkdir -p "$OUT/eval"
PY="${PYTHON:-python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled  # no network

if [ $DRY = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""  # the CPU, even on a GPU machine
    NGPU=0
    TRAIN=(--iters 3 --warmup 1 -- --n_layer=2 --n_head=2 --n_embd=64 --block_size=64 --batch_size=2
           --gradient_accumulation_steps=1 --device=cpu --dtype=float32 --compile=False)
    DISP=(--device cpu --n-layer 2 --n-head 2 --n-embd 64 --seq 128 --max-tokens 32 --reps 1 --impl reference,tiled)
    # eager vs a 2-process torchrun (gloo): an inductor compile on the CPU alone takes a minute, and
    # tests/test_train_compile.py covers compiled training on the CPU
    MODE_LIST=eager,ddp
    MODES=(--iters 3 --skip 1 --accum 2 -- --n_layer=1 --n_head=2 --n_embd=32 --block_size=32 --batch_size=2
           --device=cpu --dtype=float32 --dispersion=angular --dispersion_weight=0.1)
    EVAL=(--device cpu --limit 3 --tasks arc_easy --n-layer 1 --n-head 2 --n-embd 32 --block-size 64 --batch-size 4
          --lmeval-batch-size 4)
    LIMITS=(120 120 240 240 120)
    TRITON=(env TRITON_INTERPRET=1 "$PY" bench/check_triton.py --device cpu)
else
    NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
    if [ "$NGPU" = 0 ]; then
        echo "error: no CUDA device here; use --dry-run for the CPU pipeline" >&2
        exit 1
    fi
    GPT2=(--n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --device=cuda --dtype=bfloat16)
    TRAIN=(--preset gpt2-gpu --iters 30 --warmup 10 --)  # train.py settings may follow the --
    DISP=(--device cuda --batch 8 --dtype bfloat16 --impl reference,tiled,triton,triton-tf32x3 --reps 4)
    # with the angular loss on every layer, so that its Triton kernels run inside compiled and DDP steps
    MODES=(--iters 8 --skip 3 --accum 2 -- "${GPT2[@]}" --batch_size=8 --dispersion=angular --dispersion_weight=0.1)
    EVAL=(--device cuda --limit 200 --tasks arc_easy,hellaswag,piqa --n-layer 12 --n-head 12 --n-embd 768
          --block-size 1024 --batch-size 32 --lmeval-batch-size 32)
    LIMITS=(130 100 140 90 100)  # 560 s in all: under the device tool's 600 s per command
    TRITON=("$PY" bench/check_triton.py --device cuda)
fi
if [ $DRY = 0 ] && [ "$NGPU" -ge 2 ]; then
    MODE_LIST=eager,compiled,ddp
elif [ $DRY = 0 ]; then
    MODE_LIST=eager,compiled
fi
PEAK=()
[ -n "${PEAK_FLOPS:-}" ] && PEAK=(--peak_flops="$PEAK_FLOPS")

FAILED=()
SKIPPED=()
step() {  # step NAME SECONDS COMMAND...: run it under a time limit; a failure is noted, not fatal
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit}s): $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tail -n 25
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0))s"
    [ "$rc" = 0 ] || FAILED+=("$name (exit $rc)")
}

if "$PY" -c "import triton" 2>/dev/null; then
    step triton "${LIMITS[4]}" "${TRITON[@]}" --json "$OUT/triton.json"
else
    echo "== triton: skipped (triton is not installed: pip install triton)"
    SKIPPED+=("triton (not installed)")
fi
step train_gpt2 "${LIMITS[0]}" "$PY" bench/bench_train.py --json "$OUT/train_gpt2.json" "${TRAIN[@]}" "${PEAK[@]}"
step dispersion "${LIMITS[1]}" "$PY" bench/bench_dispersion.py "${DISP[@]}" --json "$OUT/dispersion.json"
step modes "${LIMITS[2]}" "$PY" bench/check_train_modes.py --modes "$MODE_LIST" --nproc 2 --json "$OUT/modes.json" "${MODES[@]}"
if ! "$PY" -c "import lm_eval" 2>/dev/null; then
    echo "== scorer: skipped (lm-eval is not installed: pip install lm-eval==0.4.13)"
    SKIPPED+=("scorer (no lm-eval)")
elif [ -n "${DISPERSE_BENCHMARKS:-}" ] && [ -d "${DISPERSE_BENCHMARKS:-}" ] && [ -n "${TIKTOKEN_CACHE_DIR:-}" ]; then
    step scorer "${LIMITS[3]}" "$PY" bench/bench_eval.py "${EVAL[@]}" --data-dir "$DISPERSE_BENCHMARKS" \
        --tiktoken-dir "$TIKTOKEN_CACHE_DIR" --out "$OUT/eval" --work "$OUT/eval/work"
    rm -rf "$OUT/eval/work"  # the exported model and task files: large, and rebuilt every run
else
    echo "== scorer: skipped (set DISPERSE_BENCHMARKS and TIKTOKEN_CACHE_DIR to the offline data)"
    SKIPPED+=("scorer (no offline data)")
fi

"$PY" - "$OUT" "$DRY" "$(IFS=';'; echo "${FAILED[*]}")" "$(IFS=';'; echo "${SKIPPED[*]}")" <<'EOF'
import json, os, sys
out, dry = sys.argv[1], sys.argv[2] == "1"
failed, skipped = [s for s in sys.argv[3].split(";") if s], [s for s in sys.argv[4].split(";") if s]
def read(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None
summary = {"dry_run": dry, "failed_steps": failed, "skipped_steps": skipped}
k = read("triton.json")
if k:
    summary["triton"] = {"device": k["device"], "cases": len(k["results"]), "failed": k["failed"]}
    print(f"triton kernels vs the float64 reference on {k['device']}: {len(k['results']) - len(k['failed'])} of "
          f"{len(k['results'])} cases agree" + (f"; OFF: {', '.join(k['failed'])}" if k["failed"] else ""))
t = read("train_gpt2.json")
if t:
    r = t["results"][0]
    summary["train"] = {"device": t.get("gpu", t.get("processor")), "tokens_per_s": r["tokens_per_s"],
                        "ms_per_iter": r["ms_per_iter"], "mfu": r["mfu"], "peak_mem_mb": r["peak_mem_mb"]}
    mfu = f"{r['mfu'] * 100:.1f}%" if r["mfu"] is not None else "n/a"
    print(f"training: {r['tokens_per_s']:,.0f} tokens/s, {r['ms_per_iter']:.1f} ms/iter, MFU {mfu} on {summary['train']['device']}")
d = read("dispersion.json")
if d:
    summary["dispersion"] = [{k: row.get(k) for k in ("variant", "median_s", "overhead", "share_of_ce_step", "error")}
                             for row in d["results"]]
    for row in d["results"]:
        if "error" in row:
            print(f"dispersion: {row['variant']}: FAILED, {row['error']}")
            continue
        over, share = row.get("overhead"), row.get("share_of_ce_step")
        print(f"dispersion: {row.get('variant')}: {row.get('median_s', float('nan')):.4f} s"
              + (f"/step, {over * 100:+.1f}% over CE" if isinstance(over, (int, float)) else "")
              + (f", {share * 100:.1f}% of the CE step" if isinstance(share, (int, float)) else ""))
m = read("modes.json")
if m:
    summary["modes"] = {k: {"max_rel_diff_vs_eager": v["max_rel_diff_vs_eager"], "agrees": v["agrees"],
                            "ms_per_iter": v["ms_per_iter"]} for k, v in m["results"].items()}
    for k, v in m["results"].items():
        print(f"modes: {k}: {v['ms_per_iter']:.1f} ms/iter, losses vs eager: max relative difference "
              f"{v['max_rel_diff_vs_eager']:.1e} ({'agree' if v['agrees'] else 'DIFFER'})")
e = read("eval/bench_eval.json")
if e:
    summary["scorer"] = [{k: row[k] for k in ("task", "items", "ours_items_per_s", "lmeval_items_per_s", "speedup")}
                         for row in e["rows"]]
    for row in e["rows"]:
        print(f"scorer: {row['task']}: ours {row['ours_items_per_s']:.1f} items/s, lm-eval {row['lmeval_items_per_s']:.1f} "
              f"items/s ({row['speedup']:.2f}x)")
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(f"failed steps: {', '.join(failed) or 'none'}; skipped: {', '.join(skipped) or 'none'}; JSON in {out}")
EOF
[ ${#FAILED[@]} = 0 ]
