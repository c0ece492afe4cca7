# Two entry points: `make run` (the whole system on the embedded data) and `make test`.
# Both create .venv and install the dependencies from pyproject.toml when missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test data bench notebook figures clean vendor-dashboard dashboard-screenshot

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# phantomlink (the client package) is installed, not run in place: reinstall when it changes.
$(STAMP): pyproject.toml $(wildcard phantomlink/*.py) | $(PY)
	$(PY) -m pip install --quiet ".[dev]"
	@touch $(STAMP)

# Generates the synthetic MC_Maze-shaped recording unless a dataset is configured or present.
data: $(STAMP)
	$(PY) -m broker.synthetic --ensure

run: data
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/honcho -e configs/default.env start

test: data
	$(PY) -m pytest

bench: data
	$(PY) benchmarks/run_all.py

# Re-executes the analysis notebook in place, so the figures saved in it are current.
notebook: data
	cd notebooks && JUPYTER_PLATFORM_DIRS=1 ../$(VENV)/bin/jupyter-execute --inplace data_analysis.ipynb

# Re-vendors the dashboard's JS libraries at the versions pinned in dashboard/package-lock.json.
vendor-dashboard:
	dashboard/vendor.sh

# Refreshes the README's screenshot (docs/images/dashboard.png) from the browser test.
dashboard-screenshot: data
	DASHBOARD_SCREENSHOT=$(CURDIR)/docs/images/dashboard.png $(PY) -m pytest -q \
		tests/test_dashboard.py -k screenshot

# Redraws the perturbation figures of docs/perturbations.md.
figures: data
	$(PY) docs/figures/make_perturbation_figures.py

clean:
	rm -rf data/cache data/state .pytest_cache
