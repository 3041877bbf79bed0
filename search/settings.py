"""Every ``HPS_*`` setting: read from the environment (never from the repo), validated once.

``settings()`` parses and checks them together, so a bad value is one line before anything runs
(``hps run`` and :func:`hps.run` call it first); later calls return the same object while the
environment is unchanged. Ray workers get every ``HPS_*`` variable of the driver
(:func:`forwarded`). The trainer alone reads one of them itself: ``HPS_DATA`` (an .npz or a folder
of images; ``trainers/data.py``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from hps.search.errors import SettingsError

DEFAULT_STORAGE = "sqlite:///hps.db"
DEFAULT_ARTIFACTS = "hps-artifacts"


@dataclass(frozen=True)
class Settings:
    storage: str  # HPS_STORAGE: the study storage URL when --storage is not given
    artifacts: str  # HPS_ARTIFACTS: checkpoints, kept weights, exports (a folder or s3://bucket/prefix)
    data: str | None  # HPS_DATA: an .npz or a folder (read by the trainer)
    heartbeat_seconds: int  # HPS_HEARTBEAT_SECONDS: a worker's heartbeat; a trial is stale after 3x (trials.grace_seconds)
    connect_timeout: int  # HPS_CONNECT_TIMEOUT: seconds a database connection may take to open
    checkpoint_seconds: float  # HPS_CHECKPOINT_SECONDS: least time between a trial's checkpoints
    keep_weights: int  # HPS_KEEP_WEIGHTS: the best N complete trials keep their weights


# name -> (field, type, default, least value, what it is)
SPEC: dict[str, tuple[str, type, object, float | None, str]] = {
    "HPS_STORAGE": ("storage", str, DEFAULT_STORAGE, None, "a storage URL or a journal file"),
    "HPS_ARTIFACTS": ("artifacts", str, DEFAULT_ARTIFACTS, None, "a folder or s3://bucket/prefix"),
    "HPS_DATA": ("data", str, None, None, "an .npz file or a folder"),
    "HPS_HEARTBEAT_SECONDS": ("heartbeat_seconds", int, 30, 1, "whole seconds >= 1"),
    "HPS_CONNECT_TIMEOUT": ("connect_timeout", int, 10, 1, "whole seconds >= 1"),
    "HPS_CHECKPOINT_SECONDS": ("checkpoint_seconds", float, 300.0, 0, "seconds >= 0"),
    "HPS_KEEP_WEIGHTS": ("keep_weights", int, 3, 0, "a whole number >= 0"),
}


def settings() -> Settings:
    """The settings of this environment, validated; raises :class:`SettingsError` with one line."""
    return _parse(tuple((k, os.environ[k]) for k in SPEC if os.environ.get(k)))


@functools.lru_cache(maxsize=8)
def _parse(env: tuple[tuple[str, str], ...]) -> Settings:
    given = dict(env)
    values: dict[str, object] = {}
    for name, (field, kind, default, least, what) in SPEC.items():
        raw = given.get(name)
        if raw is None:
            values[field] = default
            continue
        raw = raw.strip()
        try:
            value: object = kind(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not allowed; expected {what}") from None
        if least is not None and float(value) < least:  # type: ignore[arg-type]
            raise SettingsError(f"{name}={raw!r} is not allowed; expected {what}")
        values[field] = value
    data = values["data"]
    if data is not None and not Path(str(data)).expanduser().exists():
        raise SettingsError(f"HPS_DATA={data!r}: no such file or folder; point it at an .npz or a folder (or unset it)")
    return Settings(**values)  # type: ignore[arg-type]


def forwarded() -> dict[str, str]:
    """Every ``HPS_*`` variable of this process: what Ray workers get in their environment."""
    return {k: v for k, v in os.environ.items() if k.startswith("HPS_")}
