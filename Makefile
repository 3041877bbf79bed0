# The two set-up commands of the README: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Offline machines point HPS_DATA at an .npz of CIFAR images; with internet, leave it empty to
# download CIFAR-10. The workspace's mini set is used when it sits beside the checkout.
HPS_DATA ?= $(wildcard $(abspath ../shared/data/cifar10-mini.npz))
export HPS_DATA

.PHONY: install system-deps demo test lint bench

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

# Debian packages the tests use: docker-compose (offline validation of the compose file) and
# Chromium + ChromeDriver (the dashboard in a real browser).
system-deps:
	@command -v docker-compose >/dev/null && command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose chromium chromium-driver; }

test: lint system-deps
	docker-compose --env-file .env.example config -q
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/trainer.py
	$(BIN)/python bench/orchestration.py
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/augment.py
	$(BIN)/python bench/search_quality.py
