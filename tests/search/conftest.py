"""Real storages (a SQLite file and the local PostgreSQL) and a small space on real CIFAR images."""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from tests.conftest import REPO

PG_URL = os.environ.get("HPS_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
LIBPQ = PG_URL.replace("postgresql+psycopg2", "postgresql")

# airnet on 1,500 images, 3 epochs: about a second a trial. Trial 0 (warm start) is over budget,
# trial 1 is a sound config that completes, trial 2 barely learns and is pruned after epoch 1.
SMALL: dict[str, Any] = {
    "study": {"name": "x", "trials": 5, "seed": 0, "sampler": {"name": "tpe"},
              "pruner": {"name": "median", "args": {"n_startup_trials": 1}}},
    "base": {"model": {"name": "airnet", "width": 0.25}, "data": {"subset": 1500, "val_fraction": 0.2},
             "optimizer": {"name": "sgd", "lr": 0.05}, "train": {"epochs": 3, "batch_size": 100, "device": "cpu"}},
    "space": {"model.width": {"low": 0.125, "high": 1.0}, "optimizer.lr": {"low": 1.0e-4, "high": 0.2, "log": True}},
    "budget": {"max_params": 300_000, "max_epochs": 3},
    "warm_start": [{"model.width": 1.0, "optimizer.lr": 0.05}, {"model.width": 0.25, "optimizer.lr": 0.05},
                   {"model.width": 0.25, "optimizer.lr": 1.0e-4}],
}


def write_space(tmp_path: Path, name: str, **changes: Any) -> Path:
    data = copy.deepcopy(SMALL)
    data["study"]["name"] = name
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow),
                        pytest.param("journal", marks=pytest.mark.slow)])  # the fast subset: SQLite
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield {"sqlite": f"sqlite:///{tmp_path / 'hps.db'}", "postgres": PG_URL,
           "journal": str(tmp_path / "studies.log")}[request.param]


@contextlib.contextmanager
def opened(url: str) -> Iterator[optuna.storages.BaseStorage]:
    """A storage whose connections are closed on exit (tests poll; leaked pools would pile up)."""
    from hps.search.storage import dispose, get_storage

    storage = get_storage(url, heartbeat=False)
    try:
        yield storage
    finally:
        dispose(storage)


def hps(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """The hps command line, run as a user runs it."""
    exe = Path(sys.executable).parent / "hps"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=REPO, env={**os.environ, "COLUMNS": "200", **(env or {})}, **kw)


def sql(query: str, *args: object) -> list[tuple]:
    """One statement on the test database, on a connection of its own."""
    import psycopg2

    conn = psycopg2.connect(LIBPQ)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(query, args)
        rows = cur.fetchall() if cur.description else []
    conn.close()
    return rows


def terminate_clients() -> None:
    """Drop every hps connection, as a database restart would."""
    sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'hps' AND pid <> pg_backend_pid()")


def ask_report_tell(study: optuna.Study, x: float) -> None:
    """One trial of two params and three reports, valued ``x``: what the storage tests write."""
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.suggest_categorical("opt", ["sgd", "adam"])
    for step in range(3):
        trial.report(x * step, step)
    study.tell(trial, x)


def trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    with opened(url) as storage:
        return optuna.load_study(study_name=name, storage=storage).trials


@pytest.fixture
def study_name() -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(KeyError), opened(PG_URL) as storage:
        optuna.delete_study(study_name=name, storage=storage)
