"""hps: hyperparameter search for small image classifiers under hard budgets (Optuna + Ray).

A study from Python::

    import hps

    space = hps.load_space("spaces/quickstart.yaml", overrides={"study.trials": 4})
    result = hps.run(space)                  # SQLite file hps.db unless storage= says otherwise
    print(result.best_trial.params, result.counts)
    hps.export(result, "best.yaml")          # a retrain YAML; hps.train("best.yaml") retrains it

The folders behind the name: ``hps.search`` (spaces, studies, executors, the CLI) and
``hps.trainers`` (the trainer, models, data, meter; it imports no Optuna or Ray). Names load on
first use, so ``import hps`` imports neither torch nor Optuna.
"""

from __future__ import annotations

import importlib
import os
import warnings
from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("hps")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
    __version__ = "0+unknown"

if os.environ.get("HPS_DEBUG", "").strip() in ("", "0"):  # before anything imports Optuna (and tqdm.auto): its
    warnings.filterwarnings("ignore", message="IProgress not found")  # Jupyter warning (hps.search.quiet says more)

_WHERE = {
    "load_space": "hps.search.space", "Space": "hps.search.space",
    "run": "hps.search.run", "RunResult": "hps.search.run",
    "export": "hps.search.api", "plot": "hps.search.api", "studies": "hps.search.api", "Exported": "hps.search.export",
    "best_trial": "hps.search.api", "measure": "hps.search.api",
    "train": "hps.search.api", "config": "hps.search.api",
    "SpaceError": "hps.search.errors", "SettingsError": "hps.search.errors", "StudyError": "hps.search.errors",
    "RunFailed": "hps.search.errors",
    "ConfigError": "hps.trainers", "DataError": "hps.trainers", "DataMismatch": "hps.trainers",
    "TrainingDiverged": "hps.trainers",
    "TrainConfig": "hps.trainers", "TrainResult": "hps.trainers", "Measurement": "hps.trainers",
    "retrain": "hps.trainers", "load_config": "hps.trainers",
    "create_model": "hps.trainers", "register_model": "hps.trainers", "list_models": "hps.trainers",
}

if TYPE_CHECKING:
    from hps.search.api import best_trial, config, export, measure, plot, studies, train
    from hps.search.errors import RunFailed, SettingsError, SpaceError, StudyError
    from hps.search.export import Exported
    from hps.search.run import RunResult, run
    from hps.search.space import Space, load_space
    from hps.trainers import (
        ConfigError,
        DataError,
        DataMismatch,
        Measurement,
        TrainConfig,
        TrainingDiverged,
        TrainResult,
        create_model,
        list_models,
        load_config,
        register_model,
        retrain,
    )


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'hps' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = [
    "ConfigError",
    "DataError",
    "DataMismatch",
    "Exported",
    "Measurement",
    "RunFailed",
    "RunResult",
    "SettingsError",
    "Space",
    "SpaceError",
    "StudyError",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "best_trial",
    "config",
    "create_model",
    "export",
    "list_models",
    "load_config",
    "load_space",
    "measure",
    "plot",
    "register_model",
    "retrain",
    "run",
    "studies",
    "train",
]
