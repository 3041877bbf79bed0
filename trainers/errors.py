"""The trainer's errors (importable without torch): each message is one line a user can act on."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config value; the message is one line: ``file: key: value ... allowed``."""


class DataError(RuntimeError):
    """The data could not be found or read, or is not what the config says; the message says what to set."""


class DataMismatch(DataError):
    """The data found here is not the data a config (or an export) was made on."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class ModelError(ConfigError):
    """A model the config names cannot be built as asked: its code fails to import, is not a
    builder, raises, or returns the wrong output; the message names the file and the cause."""


class TrainFnError(RuntimeError):
    """The user's training function (``train.fn``) did something hps cannot score: it raised, never
    reported, reported out of order or a non-finite value, or returned the wrong thing; the message
    is one line with the file:line where it was raised."""


class EpochLimit(RuntimeError):
    """A training function reported an epoch beyond ``train.epochs``, the epochs the budget checked."""


class ModelChanged(ModelError):
    """The network built to train is not the one the meter measured (a builder that returns
    different networks on different calls): the budget would have judged another model."""
