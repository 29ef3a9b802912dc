# The two set-up commands (README): `make demo` runs the offline main job, `make test` the tests.
# Offline data comes from SHARED (default: ../shared beside the checkout); override with make SHARED=...
SHARED ?= ../shared
PYTHON ?= python3
OUT ?= out-demo
export TIKTOKEN_CACHE_DIR := $(abspath $(SHARED)/tiktoken)
export DISPERSE_SHARED := $(abspath $(SHARED))
export DISPERSE_BENCHMARKS := $(abspath $(SHARED)/benchmarks)
export DISPERSE_WIKITEXT := $(abspath $(SHARED)/corpus/wikitext103/valid.raw)
export DISPERSE_WIKITEXT_TEST := $(abspath $(SHARED)/corpus/wikitext103/test.raw)

.PHONY: install demo test prepare-local clean

# torch is pinned and installed first, so pip never swaps in a multi-GB CUDA build on CPU machines
install:
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet transformers matplotlib scipy datasets

data/local/train.bin:
	$(PYTHON) -m data.local.prepare --input $(SHARED)/corpus --out_dir data/local

prepare-local: data/local/train.bin

demo: install data/local/train.bin
	$(PYTHON) train.py config/train_local_cpu.py --out_dir=$(OUT)
	$(PYTHON) sample.py --out_dir=$(OUT) --start="The meaning of" --num_samples=2 --max_new_tokens=60
	$(PYTHON) -m eval.condensation --ckpt $(OUT) --n-seq 20 --seq-len 128 --out $(OUT)/condensation
	$(PYTHON) -m eval.plots training $(OUT)/metrics.jsonl --out $(OUT)/training.png
	@echo "done: checkpoint, metrics.jsonl, condensation probe and plots are in $(OUT)/"

test: install
	$(PYTHON) -m pytest tests -q

clean:
	rm -rf out-demo data/local/*.bin data/local/meta.json
