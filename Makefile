# The interface: CI calls the same targets a person does.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ROWS ?= 200000
PYTEST_ARGS ?=
# Test processes (pytest-xdist; a test file stays in one). Much of the suite waits on
# subprocesses, podman and loopback servers, so two overlap well on two cores.
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help setup demo fleet-demo lock test test-fast lint images base-image wheelhouse podman bench bench-images bench-search bench-fleet bench-fleet-k8s report-screenshots kill-resume chromium clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# Two virtualenv layers: the runtime (what the demo needs) and the dev tools
# on top (what tests and lint need), both pinned by constraints.txt so every
# machine installs the same versions.
$(BIN)/batchline: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	@# --no-compile: Python compiles what it imports on first use; compiling every
	@# module of pyarrow, numpy and DuckDB up front costs about half the install.
	$(BIN)/pip install --quiet --no-compile -c constraints.txt -e '.[all]'
	@touch $@

$(VENV)/.dev-tools: $(BIN)/batchline
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

setup: $(VENV)/.dev-tools  ## create .venv with batchline and its dev tools

demo: $(BIN)/batchline  ## generate ROWS rows of demo data and run the pipeline locally (runtime only)
	$(BIN)/batchline demo-data --rows $(ROWS) --out demo-data
	$(BIN)/batchline run jobs/readmission.yaml --storage batchline-data \
	  --set stages.ingest.params.source=demo-data/encounters.csv

# 500 hospitals of about 2,000-20,000 rows each (sizes geometric, 1:10): 4M encounters.
FLEET_HOSPITALS ?= 500
FLEET_ROWS ?= 4000000
fleet-demo: $(BIN)/batchline  ## a fleet: FLEET_HOSPITALS hospital models + a global one, gated into the registry (runtime only)
	$(BIN)/batchline demo-data --hospitals $(FLEET_HOSPITALS) --rows $(FLEET_ROWS) --out demo-fleet
	$(BIN)/batchline run jobs/readmission_fleet.yaml --storage batchline-data \
	  --set stages.ingest.params.source=demo-fleet/encounters.csv
	$(BIN)/batchline models list readmission-fleet --storage batchline-data | tail -5
	@echo "all champions: $(BIN)/batchline models list readmission-fleet --storage batchline-data"

lock:  ## refresh constraints.txt from a fresh install of .[dev,bench]; review the diff
	rm -rf build/lock-venv
	$(PY) -m venv build/lock-venv
	build/lock-venv/bin/pip install --quiet -e '.[dev,bench]'
	{ echo "# Exact versions for every install path (make demo: .[all]; make setup/test: .[dev]; bench-search: .[bench])."; \
	  echo "# Regenerate with \`make lock\` (a fresh install of .[dev,bench]) and review the diff."; \
	  build/lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e '; } > constraints.txt
	rm -rf build/lock-venv
	git diff --stat constraints.txt

test: setup podman chromium base-image images  ## every test, slow end-to-end ones too (podman, images, chromium)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=40 $(PYTEST_ARGS)

test-fast: setup  ## unit tests only
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

lint: setup  ## ruff, mypy, import layering, hadolint
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint images/stage.Dockerfile images/*/Dockerfile

podman:  ## install and configure podman (Debian; root)
	bash images/setup-podman.sh

chromium:  ## install Debian's chromium, which the report tests look through (root)
	command -v chromium >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

base-image: podman  ## air-gapped Debian base image from Debian packages (debootstrap)
	bash images/build-base.sh

wheelhouse: setup  ## wheels for the images, built on the host
	bash images/build-wheelhouse.sh $(BIN)/pip

images: wheelhouse  ## build every stage image and the launcher (podman or docker)
	PYTHON=$(BIN)/python bash images/build-images.sh

bench: setup  ## demo at 1M and 5M rows vs the single-process limit and a pandas script (--busy too); appends to bench/results.md
	$(BIN)/python bench/run.py

bench-search: setup  ## search vs H2O AutoML at equal time budget per model (needs Java); appends to bench/results.md
	$(BIN)/pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/search_vs_h2o.py

bench-fleet: setup  ## the 500-hospital fleet run, then the same models trained in a plain one-process loop
	rm -rf build/bench-fleet
	$(BIN)/batchline demo-data --hospitals $(FLEET_HOSPITALS) --rows $(FLEET_ROWS) --out build/bench-fleet/data
	$(BIN)/batchline run jobs/readmission_fleet.yaml --storage build/bench-fleet/store --run-id fleet \
	  --set stages.ingest.params.source=build/bench-fleet/data/encounters.csv
	$(BIN)/python bench/fleet_vs_loop.py build/bench-fleet/store fleet

report-screenshots: setup  ## the run report of the demo and of a 500-hospital fleet: docs/report/*.png, sizes for bench/results.md (needs chromium)
	$(BIN)/python bench/report_screenshots.py

bench-fleet-k8s: setup images  ## the 500-hospital fleet on the Kubernetes harness: train as one Indexed Job, S3 on moto
	test -f build/bench-fleet/data/encounters.csv || \
	  $(BIN)/batchline demo-data --hospitals $(FLEET_HOSPITALS) --rows $(FLEET_ROWS) --out build/bench-fleet/data
	rm -rf build/bench-fleet-k8s
	$(BIN)/python bench/fleet_kubernetes.py build/bench-fleet/data

kill-resume: setup  ## the SIGKILL/resume tests with 50 kills on a local folder and 50 on S3 (the suite runs 20 each)
	BATCHLINE_TEST_KILLS=50 $(BIN)/pytest -n 2 --dist loadfile -rP tests/test_kill_resume.py tests/test_kill_resume_s3.py

bench-images: images  ## image sizes and container start overhead vs local processes
	$(BIN)/python bench/bench_images.py

clean:  ## remove generated data and build output
	rm -rf batchline-data demo-data demo-fleet build
