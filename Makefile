# monoocc_ros: `make setup` (one-time, idempotent), `make test`, `make demo`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.monoocc-stamps

# Nothing may leave the machine: keep DDS discovery on localhost for every process we
# start (tests, benchmarks, demo). On a robot users pick their own discovery range.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
# Shared-memory-only DDS with segments that fit camera images (see the file for why).
export FASTDDS_DEFAULT_PROFILES_FILE ?= $(CURDIR)/config/fastdds_shm.xml
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup test lint demo bench ablation data clean

setup: $(STAMPS)/msg
	@echo "setup: done ($(VENV) ready; run 'make test')"

$(STAMPS)/apt: scripts/setup_apt.sh
	@bash scripts/setup_apt.sh
	@mkdir -p $(STAMPS) && touch $@

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMPS)/reqs: requirements.txt requirements.lock $(STAMPS)/apt | $(PY)
	$(PY) -m pip install -q -r requirements.txt -c requirements.lock
	@mkdir -p $(STAMPS) && touch $@

# The ROS wheels' CMake files carry their build machine's paths; see the script.
$(STAMPS)/cmakefix: $(STAMPS)/reqs scripts/fix_ros_cmake_paths.sh
	bash scripts/fix_ros_cmake_paths.sh $(VENV)
	@touch $@

# Editable install FIRST: pip would uninstall a same-named distribution, deleting the
# generated message files if they were installed before it.
$(STAMPS)/editable: setup.py $(STAMPS)/reqs
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	@touch $@

$(STAMPS)/msg: msg/VoxelGrid.msg CMakeLists.txt package.xml scripts/build_msg.sh $(STAMPS)/editable $(STAMPS)/cmakefix
	bash scripts/build_msg.sh $(VENV)
	@touch $@

# CI runs this (.ci/run): the lint gates first, then the suite.
test: lint
	$(PY) -m pytest -q test

# ruff (with mccabe complexity <= 15), formatting, mypy (mypy.ini), and no import cycle.
lint: setup
	$(VENV)/bin/ruff check monoocc_ros test scripts launch setup.py
	$(VENV)/bin/ruff format --check monoocc_ros test scripts setup.py
	$(VENV)/bin/mypy --config-file mypy.ini
	$(VENV)/bin/python scripts/import_graph.py

bench: setup
	$(VENV)/bin/monoocc bench msg

demo: setup
	$(VENV)/bin/monoocc demo --out demo_out

# The named synthetic benchmark (docs/synthetic.md): 10 training worlds, 3 validation worlds from
# other seeds, splits.yaml (written last, so its presence means the benchmark is complete).
data: setup data/benchmark/splits.yaml

data/benchmark/splits.yaml:
	$(VENV)/bin/monoocc synth --preset benchmark --out data/benchmark

# The ablation (monoocc_ros/trainer/ablation.py): 5 variants x 3 seeds on the benchmark. Each
# finished run leaves results/ablation/*.json (committed), so this resumes across sessions.
ablation: setup data/benchmark/splits.yaml
	$(VENV)/bin/monoocc ablation --data data/benchmark --seeds 42 43 44

clean:
	rm -rf build demo_out .pytest_cache
