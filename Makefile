# One command each on a fresh machine: `make test`, `make train`, `make convert`.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: install test test-fast convert train parity-table bench bench-full clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first: its pinned wheels come from the local wheel cache on these machines
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Offline default: timm deit_tiny with random (perturbed) weights -> safetensors -> vitjax, with a parity report.
convert: install
	$(PY) -m porting.random_init --model deit_tiny_patch16_224 --out out/deit_tiny_random.safetensors
	$(PY) -m porting.convert --model deit_tiny_patch16_224 --checkpoint out/deit_tiny_random.safetensors --out out/deit_tiny

train: install
	$(PY) train.py

# Side-by-side vitjax vs timm on this machine -> benchmarks/results/<host>-<date>.json and BENCHMARKS.md
bench: install
	$(PY) -m benchmarks.bench

bench-full: install
	$(PY) -m benchmarks.bench --full

parity-table: install
	$(PY) -m porting.registry_parity --readme README.md

clean:
	rm -rf out runs .pytest_cache
