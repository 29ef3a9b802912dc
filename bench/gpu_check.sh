#!/usr/bin/env bash
# GPU run book: the checks that need a GPU, as one command (one H200, no network; the step limits add up
# to 550 s, so it fits one 600-second command of the device tool).
#
#   NANOGPT=/path/to/nanoGPT bash bench/gpu_check.sh   # on a CUDA machine; JSON to bench/results/gpu_check/<UTC time>/
#   bash bench/gpu_check.sh --out DIR                   # JSON to DIR
#   bash bench/gpu_check.sh --scorer                    # also the scorer's speed against lm-eval (another ~100 s)
#   bash bench/gpu_check.sh --dry-run                   # the same steps on the CPU at tiny sizes (CI runs it)
#
# NANOGPT names a folder with nanoGPT's model.py, train.py and configurator.py (a clone of
# github.com/karpathy/nanoGPT; not part of this repository: with the device tool, put it in .nanogpt/,
# which git ignores, and carry it). Without it the nanoGPT step is skipped.
#
# Steps (each one's JSON in the output folder; a step that fails or runs out of its time is reported
# and the others still run; the exit status is 1 if any step failed):
#   1. engines.json     every dispersion engine (tiled, dense with float32 / TF32 / bf16 products, the Triton
#                       kernels) against the float64 reference, small shapes and (4, 1024, 768) (check_engines.py)
#   2. nanogpt.json     whole train.py iterations, ours and nanoGPT's, GPT-2 124M, batch 12 x 1024, bf16,
#                       torch.compile, random tokens, interleaved rounds (bench_nanogpt.py --train)
#   3. overhead.json    the same training, compiled: CE only, + angular dispersion on every layer at all 1024
#                       positions, + at 256 sampled positions; ms/iter, MFU, peak memory (bench_train.py)
#   4. dispersion.json  the angular loss alone and in an eager step, by engine, B 8 (bench_dispersion.py), and
#                       which engine 'auto' picks
#   5. modes.json       compiled vs eager losses of the same run (CE + angular dispersion on every layer,
#                       lambda 0.1), and with 2+ GPUs a 2-process torchrun (DDP) (check_train_modes.py); the dry
#                       run compares eager with a 2-process CPU torchrun instead (no compile: too slow on a CPU)
#   6. eval/bench_eval.json  with --scorer: scorer items/s, ours vs lm-eval's hf model (bench_eval.py)
#   7. summary.json     the figures above in one place, also printed
# MFU uses system.PEAK_FLOPS by device name; set PEAK_FLOPS=<flop/s> for a GPU the table lacks.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
SCORER=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --scorer) SCORER=1 ;;
        --out) OUT="$2"; shift ;;
        *) echo "error: unknown argument $1 (use --dry-run, --scorer and/or --out DIR)" >&2; exit 2 ;;
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
    ENGINES=(--device cpu)
    NANO=(--device cpu --n-layer 2 --n-head 2 --n-embd 64 --block-size 64 --batch 2 --iters 4 --skip 1 --rounds 1)
    # the dry run's model is too short for 256 sampled positions to mean anything: 32
    OVERHEAD=(--sampled 32 --iters 3 --warmup 1 -- --n_layer=2 --n_head=2 --n_embd=64 --block_size=64 --batch_size=2
              --gradient_accumulation_steps=1 --device=cpu --dtype=float32 --compile=False)
    DISP=(--device cpu --n-layer 2 --n-head 2 --n-embd 64 --seq 128 --max-tokens 32 --reps 1 --impl reference,tiled,dense)
    # eager vs a 2-process torchrun (gloo): an inductor compile on the CPU alone takes a minute, and
    # tests/test_train_compile.py covers compiled training on the CPU
    MODE_LIST=eager,ddp
    MODES=(--iters 3 --skip 1 --accum 2 -- --n_layer=1 --n_head=2 --n_embd=32 --block_size=32 --batch_size=2
           --device=cpu --dtype=float32 --dispersion=angular --dispersion_weight=0.1)
    EVAL=(--device cpu --limit 3 --tasks arc_easy --n-layer 1 --n-head 2 --n-embd 32 --block-size 64 --batch-size 4
          --lmeval-batch-size 4)
    LIMITS=(60 120 120 120 120 120)
else
    NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
    if [ "$NGPU" = 0 ]; then
        echo "error: no CUDA device here; use --dry-run for the CPU pipeline" >&2
        exit 1
    fi
    GPT2=(--n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --device=cuda --dtype=bfloat16)
    ENGINES=(--device cuda --training-shape)
    NANO=(--device cuda --gpt2 --iters 40 --skip 10 --rounds 2)
    OVERHEAD=(--preset gpt2-gpu --iters 25 --warmup 8 --)
    DISP=(--device cuda --batch 8 --dtype bfloat16 --reps 4)
    # with the angular loss on every layer, so that the engine 'auto' picks runs inside compiled and DDP steps
    MODES=(--iters 8 --skip 3 --accum 2 -- "${GPT2[@]}" --batch_size=8 --dispersion=angular --dispersion_weight=0.1)
    EVAL=(--device cuda --limit 200 --tasks arc_easy,hellaswag,piqa --n-layer 12 --n-head 12 --n-embd 768
          --block-size 1024 --batch-size 32 --lmeval-batch-size 32)
    LIMITS=(60 170 130 80 110 100)  # 550 s without the scorer: under the device tool's 600 s per command
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
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tail -n 30
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0))s"
    [ "$rc" = 0 ] || FAILED+=("$name (exit $rc)")
}

step engines "${LIMITS[0]}" "$PY" bench/check_engines.py "${ENGINES[@]}" --json "$OUT/engines.json"
if [ -n "${NANOGPT:-}" ] && [ -f "${NANOGPT:-}/train.py" ]; then
    step nanogpt "${LIMITS[1]}" "$PY" bench/bench_nanogpt.py --nanogpt "$NANOGPT" --train "${NANO[@]}" \
        --json "$OUT/nanogpt.json"
else
    echo "== nanogpt: skipped (set NANOGPT to a folder with nanoGPT's model.py, train.py and configurator.py)"
    SKIPPED+=("nanogpt (no NANOGPT folder)")
fi
step overhead "${LIMITS[2]}" "$PY" bench/bench_train.py --dispersion-overhead --json "$OUT/overhead.json" \
    "${OVERHEAD[@]}" "${PEAK[@]}"
step dispersion "${LIMITS[3]}" "$PY" bench/bench_dispersion.py "${DISP[@]}" --json "$OUT/dispersion.json"
step modes "${LIMITS[4]}" "$PY" bench/check_train_modes.py --modes "$MODE_LIST" --nproc 2 --json "$OUT/modes.json" "${MODES[@]}"
if [ $SCORER = 0 ]; then
    SKIPPED+=("scorer (not asked for: --scorer)")
elif ! "$PY" -c "import lm_eval" 2>/dev/null; then
    echo "== scorer: skipped (lm-eval is not installed: pip install lm-eval==0.4.13)"
    SKIPPED+=("scorer (no lm-eval)")
elif [ -n "${DISPERSE_BENCHMARKS:-}" ] && [ -d "${DISPERSE_BENCHMARKS:-}" ] && [ -n "${TIKTOKEN_CACHE_DIR:-}" ]; then
    step scorer "${LIMITS[5]}" "$PY" bench/bench_eval.py "${EVAL[@]}" --data-dir "$DISPERSE_BENCHMARKS" \
        --tiktoken-dir "$TIKTOKEN_CACHE_DIR" --out "$OUT/eval" --work "$OUT/eval/work"
    rm -rf "$OUT/eval/work"  # the exported model and task files: large, and rebuilt every run
else
    echo "== scorer: skipped (set DISPERSE_BENCHMARKS and TIKTOKEN_CACHE_DIR to the offline data)"
    SKIPPED+=("scorer (no offline data)")
fi

"$PY" bench/gpu_summary.py "$OUT" "$DRY" "$(IFS=';'; echo "${FAILED[*]}")" "$(IFS=';'; echo "${SKIPPED[*]}")"
[ ${#FAILED[@]} = 0 ]
