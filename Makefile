# The two set-up commands of the README: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Offline machines point HPS_DATA at an .npz of CIFAR images; with internet, leave it empty to
# download CIFAR-10. The workspace's mini set is used when it sits beside the checkout.
HPS_DATA ?= $(wildcard $(abspath ../shared/data/cifar10-mini.npz))
export HPS_DATA

.PHONY: install demo test lint bench

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

test: lint
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/trainer.py
