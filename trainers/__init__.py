"""hps trainers: one fast image-classifier trainer, a model zoo with a width knob, and a budget meter.

Imports nothing of ``search``, Optuna or Ray. Names load on first use, so ``import hps.trainers``
(or reading a config) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hps.trainers.errors import ConfigError, DataError, DataMismatch, EpochLimit, TrainFnError, TrainingDiverged

_WHERE = {
    "TrainConfig": "config", "config_from_dict": "config", "config_to_dict": "config", "dump_config": "config",
    "load_config": "config", "with_overrides": "config",
    "data_identity": "data", "load_data": "data", "pin_data": "data",
    "Measurement": "meter", "measure": "meter", "saved_bytes": "meter", "state_dict_at": "meter",
    "create_model": "models", "list_models": "models", "register_model": "models", "round_channels": "models",
    "Checkpoint": "loop", "TrainResult": "loop", "retrain": "loop", "train": "loop", "Context": "custom",
}

if TYPE_CHECKING:
    from hps.trainers.config import TrainConfig, config_from_dict, config_to_dict, dump_config, load_config, with_overrides
    from hps.trainers.custom import Context
    from hps.trainers.data import data_identity, load_data, pin_data
    from hps.trainers.loop import Checkpoint, TrainResult, retrain, train
    from hps.trainers.meter import Measurement, measure, saved_bytes, state_dict_at
    from hps.trainers.models import create_model, list_models, register_model, round_channels


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'hps.trainers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hps.trainers.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Checkpoint", "ConfigError", "Context", "DataError", "DataMismatch", "EpochLimit", "Measurement", "TrainConfig",
    "TrainFnError", "TrainResult", "TrainingDiverged",
    "config_from_dict", "config_to_dict", "create_model", "data_identity", "dump_config", "list_models", "load_config",
    "load_data", "measure", "pin_data", "register_model", "retrain", "round_channels", "saved_bytes", "state_dict_at",
    "train", "with_overrides",
]
