# One command each on a fresh machine: `make test`, `make train`, `make convert`.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: install test test-fast test-zoo test-all convert train parity-table bench bench-full clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@# torch's Linux wheel is a CUDA build (~5.5 GB with its nvidia-* libraries, ~8 GB for the whole venv);
	@# say so up front instead of failing half-way with ENOSPC.
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4/1048576)}'); \
	  if [ "$$free" -lt 8 ]; then echo "make install: needs ~8 GB free here for .venv, $$free GB free" >&2; exit 1; fi
	python3 -m venv .venv
	# no pip cache: on a machine without the local wheel mirror the downloads would double the disk used
	$(PY) -m pip install -q --no-cache-dir --upgrade pip
	# torch first: its pinned wheels come from the local wheel cache on these machines
	$(PY) -m pip install -q --no-cache-dir "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q --no-cache-dir -e ".[dev]"
	touch $(STAMP)

# Two workers (these machines have 2 cores); a test file stays on one worker so its module fixtures (a
# reference run, a converted model) are built once. XLA's compilation cache is shared (tests/conftest.py).
# --durations: the 60 slowest tests close the log, to see where the suite's time goes.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile --durations=60

# Tiers (docs/testing.md): test = every guarantee, every family, one architecture per option set (CI);
# test-fast = the unit tier; test-zoo = the exhaustive sweeps (every zoo architecture, the full-size parity
# rows), for any change under vitjax/models or the name tables (vitjax/weights); test-all = both.
test: install
	$(PYTEST) -m "not zoo"

test-fast: install
	$(PYTEST) -m "not slow and not zoo"

test-zoo: install
	$(PYTEST) -m zoo

test-all: install
	$(PYTEST)

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
	$(PY) -m porting.registry_parity --doc docs/models.md

clean:
	rm -rf out runs .pytest_cache
