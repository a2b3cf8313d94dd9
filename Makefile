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

.PHONY: demo dev test eval bench lint clean weights figures notebooks site browser

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

test: $(VENV)/.dev weights browser
	MINIFT_REQUIRE_WEIGHTS=1 $(PY) -m pytest -q

# What tests/test_site.py needs besides the venv: Debian's chromium (the browser it drives) and KaTeX
# (the site's math renderer, fetched here with npm so that no test reaches the network). Both installed
# only when missing, chromium and npm only as root, as CI does; elsewhere that test skips with a
# message (with CI set it fails instead).
browser: $(VENV)/.dev
	@for tool in chromium npm; do \
	  command -v $$tool >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$tool >/dev/null; \
	  else echo "$$tool is missing and this is not root: tests/test_site.py will be skipped"; fi; \
	done
	@command -v npm >/dev/null 2>&1 && $(PY) -m course.katex || true

# The course for readers: figures redrawn from the lessons (committed), and, in build/ (not committed),
# every lesson as a notebook and the whole course as a static site.
figures: $(VENV)/.dev weights
	$(PY) -m course.figures

notebooks: $(VENV)/.dev
	$(PY) -m course.notebooks

site: $(VENV)/.dev
	$(PY) -m course.website

# Slower runs on real data (../shared/data): fine-tuning on SST-5 and CFIMDB.
eval: $(VENV)/.dev weights
	$(PY) benchmarks/real_data.py

bench: $(VENV)/.dev weights
	$(PY) benchmarks/bert_vs_transformers.py

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check minift tests benchmarks tools

clean:
	rm -rf $(VENV) runs build
