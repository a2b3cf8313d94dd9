# Two commands do all set-up on a fresh machine:
#   make demo   fine-tunes all-MiniLM-L6-v2 on the built-in sentiment set
#   make test   runs the test suite (real weights included)
# make dev sets up what the lessons use (make test's set-up) without running the suite.
# All create .venv on first use. TORCH overrides the torch requirement (e.g. a CUDA build).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
MODEL := all-MiniLM-L6-v2

.PHONY: demo dev test eval bench lint clean weights

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

weights: $(VENV)/.base
	$(PY) -m minift weights pull $(MODEL)

demo: weights
	$(PY) -m minift finetune --model $(MODEL) --out runs/demo --overwrite

# What the lessons use: the references (transformers, seqeval, scikit-learn), matplotlib, the weights.
dev: $(VENV)/.dev weights

test: $(VENV)/.dev weights
	MINIFT_REQUIRE_WEIGHTS=1 $(PY) -m pytest -q

# Slower runs on real data (../shared/data): fine-tuning on SST-5 and CFIMDB.
eval: $(VENV)/.dev weights
	$(PY) benchmarks/real_data.py

bench: $(VENV)/.dev weights
	$(PY) benchmarks/bert_vs_transformers.py

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check minift tests benchmarks tools

clean:
	rm -rf $(VENV) runs
