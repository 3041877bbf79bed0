# The two set-up commands of the README: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Offline machines point HPS_DATA at an .npz of CIFAR images; with internet, leave it empty to
# download CIFAR-10. The workspace's mini set is used when it sits beside the checkout.
HPS_DATA ?= $(wildcard $(abspath ../shared/data/cifar10-mini.npz))
export HPS_DATA

.PHONY: install system-deps docker-deps demo test lint bench compose-test

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# The main job: a small real study on the embedded default (SQLite file hps.db), then export and retrain.
demo: install
	$(BIN)/hps run spaces/quickstart.yaml
	$(BIN)/hps export quickstart -o runs/quickstart-best.yaml
	$(BIN)/hps retrain runs/quickstart-best.yaml --test --out runs/quickstart-best

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# Debian packages the tests use: Chromium + ChromeDriver (the dashboard in a real browser) and
# docker-compose (the compose files, resolved offline). `make compose-test` adds a Docker engine
# (docker.io) and debootstrap (base images made from Debian packages where Docker Hub is out of reach).
system-deps:
	@command -v docker-compose >/dev/null && command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose chromium chromium-driver; }

docker-deps: system-deps
	@command -v dockerd >/dev/null && command -v debootstrap >/dev/null || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap; }

test: lint system-deps
	$(BIN)/pytest -q --durations=30

# `docker compose up` for real on a Docker engine this starts (as root; its own dirs under
# ~/.cache/hps-docker, stopped by pid): builds the images against a local pip mirror, runs a study
# through the whole stack, kills a worker, down/up, export, dashboard in Chromium. About 5 minutes
# with a cold image cache; it needs root, so it is its own target, which .ci/run runs after `make test`.
compose-test: install docker-deps
	HPS_COMPOSE_TEST=1 $(BIN)/pytest -q tests/docker/test_compose_up.py

bench: install
	$(BIN)/python bench/trainer.py
	$(BIN)/python bench/orchestration.py
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/augment.py
	$(BIN)/python bench/checkpoint.py
	$(BIN)/python bench/search_quality.py
	$(BIN)/python bench/startup.py
