"""hps trainers: one fast CIFAR trainer, a model zoo with a width knob, and a budget meter.

Imports nothing of ``search``, Optuna or Ray.
"""

from trainers.config import (
    ConfigError,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    with_overrides,
)
from trainers.data import DataError, DataMismatch, data_identity, load_data, pin_data
from trainers.meter import Measurement, measure, saved_bytes, state_dict_at
from trainers.models import create_model, list_models, register_model, round_channels
from trainers.train import Checkpoint, TrainingDiverged, TrainResult, retrain, train

__all__ = [
    "Checkpoint", "ConfigError", "DataError", "DataMismatch", "Measurement", "TrainConfig", "TrainResult", "TrainingDiverged",
    "config_from_dict", "config_to_dict", "create_model", "data_identity", "dump_config", "list_models", "load_config",
    "load_data", "measure", "pin_data", "register_model", "retrain", "round_channels", "saved_bytes", "state_dict_at",
    "train", "with_overrides",
]
