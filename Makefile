# The two set-up commands (README): `make demo` runs the offline main job, `make test` the tests.
# Offline data comes from SHARED (default: ../shared beside the checkout); override with make SHARED=...
SHARED ?= ../shared
PYTHON ?= python3
OUT ?= out-experiment-cpu
export TIKTOKEN_CACHE_DIR := $(abspath $(SHARED)/tiktoken)
export DISPERSE_SHARED := $(abspath $(SHARED))
export DISPERSE_BENCHMARKS := $(abspath $(SHARED)/benchmarks)
export DISPERSE_WIKITEXT := $(abspath $(SHARED)/corpus/wikitext103/valid.raw)
export DISPERSE_WIKITEXT_TEST := $(abspath $(SHARED)/corpus/wikitext103/test.raw)

.PHONY: install demo size-sweep train-demo test prepare-local clean

# torch is pinned and installed first, so pip never swaps in a multi-GB CUDA build on CPU machines
install:
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet transformers safetensors tokenizers matplotlib scipy datasets wandb
	# triton: the GPU kernel's tests run on CPU under TRITON_INTERPRET=1, and compile it for CUDA GPUs (a ~290 MB wheel;
	# pinned: the register figures the compile test checks are those of this version)
	$(PYTHON) -m pip install --quiet triton==3.9.0

data/local/train.bin:
	$(PYTHON) -m data.local.prepare --input $(SHARED)/corpus --out_dir data/local

prepare-local: data/local/train.bin

# the main job, the paper's protocol in miniature: pretrain one small GPT with CE, mid-train it five ways
# (CE, angular dispersion lambda 0.1 and 1, the parameter-matched rotated_angular control, condense) x 5 seeds,
# two runs at a time; score the paper's 10 benchmarks, LAMBADA and WikiText, probe condensation, write the report.
# GLIBC_TUNABLES: glibc keeps freed memory instead of returning every big (B, T, vocab) buffer to the OS
# and page-faulting it back at the next step (without it, sys time was about equal to user time)
demo: export GLIBC_TUNABLES ?= glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296
demo: install data/local/train.bin
	$(PYTHON) experiment.py config/experiment_cpu.py --exp_dir=$(OUT)
	$(PYTHON) sample.py --out_dir=$(OUT)/angular_1/seed0 --start="The meaning of" --num_samples=1 --max_new_tokens=40
	@echo "done: the report is $(OUT)/report.md (with report.json and PNGs beside it)"

# the paper's Fig. 3 in miniature: from-scratch GPTs that differ only in MLP width, CE vs angular, 3 seeds
# (23-37 minutes on 2 cores, by machine); its table is in docs/dispersion.md
size-sweep: export GLIBC_TUNABLES ?= glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296
size-sweep: install data/local/train.bin
	$(PYTHON) experiment.py config/experiment_size_cpu.py
	@echo "done: the report is out-experiment-size-cpu/report.md"

# one small model, no grid: train, sample, probe, plot (a couple of minutes)
train-demo: install data/local/train.bin
	$(PYTHON) train.py config/train_local_cpu.py --out_dir=out-train-demo
	$(PYTHON) sample.py --out_dir=out-train-demo --start="The meaning of" --num_samples=2 --max_new_tokens=60
	$(PYTHON) -m eval.condensation --ckpt out-train-demo --n-seq 20 --seq-len 128 --out out-train-demo/condensation
	$(PYTHON) -m eval.plots training out-train-demo/metrics.jsonl --out out-train-demo/training.png

test: install
	$(PYTHON) -m pytest tests -q

clean:
	rm -rf out-experiment-cpu out-experiment-size-cpu out-train-demo data/local/*.bin data/local/meta.json
