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

.PHONY: demo dev test eval bench bench-smoke bench-list lint clean weights figures notebooks site browser

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
	@$(MAKE) --no-print-directory bench-smoke

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

# Every benchmark with --smoke, so that none rots (make test runs this after the suite): tiny settings,
# each script's whole path and its reference side end to end, its table printed, numbers meaningless,
# temporary output folders, no ../shared/data needed (benchmarks/_smoke.py). Every benchmarks/*.py is
# one, except the helpers named _*.py (tests/test_benchmarks.py checks that each takes --smoke). A
# failure shows the end of that script's log and fails the target once every script has run. One
# thread: on tensors this small a second one only adds synchronisation, and on a loaded machine a
# thread waiting at a barrier for a descheduled partner turns seconds into minutes.
BENCHMARKS := $(sort $(filter-out benchmarks/_%,$(wildcard benchmarks/*.py)))
SMOKE_LOGS := runs/bench-smoke

bench-list:
	@echo $(BENCHMARKS)

bench-smoke: $(VENV)/.dev weights
	@mkdir -p $(SMOKE_LOGS); failed=""; all=$$(date +%s); \
	for script in $(BENCHMARKS); do \
	  log=$(SMOKE_LOGS)/$$(basename $$script .py).log; start=$$(date +%s); \
	  if OMP_NUM_THREADS=1 $(PY) $$script --smoke > $$log 2>&1; then \
	    echo "$$script --smoke: ok ($$(( $$(date +%s) - start )) s)"; \
	  else \
	    echo "$$script --smoke: FAILED ($$log ends with:)"; tail -n 25 $$log; failed="$$failed $$script"; \
	  fi; \
	done; \
	echo "bench-smoke: $$(( $$(date +%s) - all )) s in all"; \
	if [ -n "$$failed" ]; then echo "bench-smoke failed:$$failed"; exit 1; fi

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check minift tests benchmarks tools

clean:
	rm -rf $(VENV) runs build
