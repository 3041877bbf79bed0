"""Every storage hps offers is one of Optuna's own and passes Optuna's storage contract
(``optuna.testing.pytest_storages.StorageTestCase``), opened the way hps's workers open it."""

from __future__ import annotations

import importlib.util
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.storages import BaseStorage
from optuna.testing.pytest_storages import StorageTestCase
from optuna.trial import TrialState

from hps.search.storage import dispose, get_storage
from tests.search.conftest import PG_URL, ask_report_tell, hps, opened, sql, trials


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow), "journal"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BaseStorage]:
    """A fresh, empty storage per test: a new SQLite file, a new Postgres schema, a new journal file."""
    if request.param == "postgres":
        schema = f"contract_{uuid.uuid4().hex[:10]}"
        sql(f"CREATE SCHEMA {schema}")
        url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    else:
        url = f"sqlite:///{tmp_path / 'c.db'}" if request.param == "sqlite" else str(tmp_path / "c.log")
    store = get_storage(url)  # as a worker opens it: heartbeats on
    try:
        yield store
    finally:
        dispose(store)
        if request.param == "postgres":
            sql(f"DROP SCHEMA {schema} CASCADE")


class TestOptunaStorageContract(StorageTestCase):
    """Optuna 5.0's own storage tests, every one, against each storage hps offers."""


@pytest.mark.slow
def test_hps_copy_between_sqlite_postgres_and_a_journal_file(tmp_path: Path, study_name: str) -> None:
    journal = str(tmp_path / "studies.log")
    with opened(journal) as storage:
        study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
        study.set_user_attr("hps_space", {"study": {"name": study_name}})
        for i in range(3):
            ask_report_tell(study, i / 10)
        pruned = study.ask()
        pruned.suggest_float("x", 0, 1)
        pruned.report(0.01, 0)
        study.tell(pruned, state=TrialState.PRUNED)
        study.enqueue_trial({"x": 0.5})

    def key(url: str) -> list[tuple]:
        return [(t.number, t.state, t.values, t.params, t.intermediate_values, t.user_attrs) for t in trials(url, study_name)]

    sqlite = f"sqlite:///{tmp_path / 'copy.db'}"
    for src, dst in ((journal, PG_URL), (PG_URL, sqlite)):
        r = hps("copy", study_name, "--from", src, "--to", dst)
        assert r.returncode == 0 and f"copied {study_name} (5 trials)" in r.stdout, r.stderr
        assert key(dst) == key(journal)
    again = hps("copy", study_name, "--from", journal, "--to", PG_URL)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already holds a study named" in again.stderr


def test_a_wrong_url_is_reported_at_once() -> None:
    from hps.search.errors import StudyError

    with pytest.raises(StudyError, match=r'cannot open storage postgresql\+psycopg2://.*database "no_such_db" does not exist'):
        get_storage(PG_URL.rsplit("/", 1)[0] + "/no_such_db")


@pytest.mark.parametrize("password", ["secret", "p@ss/w#rd", "a:b@c", "@@@", "x/y?z=1"])
def test_redact_hides_all_of_a_raw_password(password: str) -> None:
    from hps.search.storage import redact

    shown = redact(f"postgresql+psycopg2://hps:{password}@db.example:5432/hps")
    assert shown == "postgresql+psycopg2://hps:***@db.example:5432/hps"
    assert redact("postgresql://hps@db.example/hps") == "postgresql://hps@db.example/hps"  # nothing to hide


def test_one_artifact_location_for_workers_export_and_dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--artifacts`` wins over ``$HPS_ARTIFACTS``, then ``hps-artifacts``; an ``s3://`` location
    stays a URL (a ``Path`` would fold it to ``s3:/``) and, without boto3, is refused in one line."""
    from hps.search.errors import StudyError
    from hps.search.storage import artifact_root, artifact_store

    monkeypatch.setenv("HPS_ARTIFACTS", str(tmp_path / "env"))
    assert artifact_root("s3://bucket/runs") == "s3://bucket/runs"
    assert artifact_root(None) == str(tmp_path / "env")
    monkeypatch.delenv("HPS_ARTIFACTS")
    assert artifact_root(None) == "hps-artifacts"
    artifact_store(tmp_path / "made").write("x", io.BytesIO(b"1"))  # a folder is made on first use
    assert (tmp_path / "made" / "x").read_bytes() == b"1"
    if importlib.util.find_spec("boto3") is None:
        with pytest.raises(StudyError, match=r"^HPS_ARTIFACTS s3://bucket/runs: an S3 store needs boto3"):
            artifact_store("s3://bucket/runs")


@pytest.mark.slow
def test_two_runs_starting_together_on_a_new_database(tmp_path: Path) -> None:
    """Both create Optuna's schema at once: neither dies of the other's half-made tables."""
    import subprocess
    import sys
    import time
    import uuid

    from tests.search.conftest import LIBPQ, PG_URL, sql

    name = f"hps_race_{uuid.uuid4().hex[:8]}"
    sql(f"CREATE DATABASE {name}")
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        start = time.time() + 2
        code = ("import sys, time; from hps.search.storage import get_storage; import optuna\n"
                "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
                "s = get_storage(sys.argv[1]); optuna.create_study(study_name='race', storage=s, load_if_exists=True)\n"
                "print('ok')")
        procs = [subprocess.Popen([sys.executable, "-c", code, url, str(start)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
        assert all(out.strip() == "ok" for out, _ in outs)
    finally:
        sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        sql(f"DROP DATABASE IF EXISTS {name}")
    assert LIBPQ
