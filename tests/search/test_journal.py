"""The journal storage on the real PostgreSQL: shared order, snapshots, and what a database crash
can and cannot lose."""

from __future__ import annotations

import json
import uuid

import optuna
import pytest
from optuna.trial import TrialState

import search.journal
from search.journal import JournalDiverged, PostgresJournalBackend, PostgresJournalStorage
from search.storage import dispose
from tests.search.conftest import JOURNAL_URL, ask_report_tell, opened, sql, terminate_clients


def test_two_clients_see_one_history(study_name: str) -> None:
    with opened(JOURNAL_URL) as one, opened(JOURNAL_URL) as two:
        a = optuna.create_study(study_name=study_name, storage=one)
        b = optuna.load_study(study_name=study_name, storage=two)
        for i in range(5):
            ask_report_tell(a if i % 2 else b, i / 10)
        for study in (a, b):
            ts = study.trials
            assert [t.number for t in ts] == list(range(5))
            assert [t.value for t in ts] == [i / 10 for i in range(5)]
            assert all(t.state == TrialState.COMPLETE and len(t.intermediate_values) == 3 for t in ts)
    seqs = [r[0] for r in sql("SELECT seq FROM hps_journal ORDER BY seq")]
    assert seqs == list(range(len(seqs)))  # gapless: every reader sees a prefix of one order


def test_a_new_client_starts_from_the_snapshot(study_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search.journal, "SNAPSHOT_EVERY", 100)  # logs
    with opened(JOURNAL_URL) as storage:
        study = optuna.create_study(study_name=study_name, storage=storage)
        for i in range(30):
            ask_report_tell(study, i / 200)
        written = [(t.number, t.value, t.params) for t in study.trials]
    total = sql("SELECT count(*) FROM hps_journal")[0][0]
    reads: list[int] = []
    read = PostgresJournalBackend.read_logs
    monkeypatch.setattr(PostgresJournalBackend, "read_logs", lambda self, n: reads.append(n) or read(self, n))
    fresh = PostgresJournalStorage(JOURNAL_URL)
    loaded = optuna.load_study(study_name=study_name, storage=fresh).trials
    assert total - 200 <= reads[0] <= total  # it read only the logs after the snapshot...
    assert fresh._replay_result.log_number_read == total  # ...and holds everything
    assert [(t.number, t.value, t.params) for t in loaded] == written
    dispose(fresh)


def test_a_client_that_read_lost_logs_stops(study_name: str) -> None:
    """A database crash can lose the last reports of running trials (committed without waiting for
    the disk). A client that had read them must not carry on from a state the database lost."""
    with opened(JOURNAL_URL) as storage:
        study = optuna.create_study(study_name=study_name, storage=storage)
        trial = study.ask()
        trial.report(0.5, 0)
        # a crash loses the report; another worker then appends a different log at the same place
        other = json.dumps({"op_code": 2, "worker_id": "other", "study_id": study._study_id, "user_attr": {"k": 1}})
        sql("UPDATE hps_journal SET log = %s WHERE seq = (SELECT max(seq) FROM hps_journal)", other)
        terminate_clients()
        with pytest.raises(JournalDiverged, match="lost logs this worker had read"):
            trial.report(0.6, 1)


def test_a_retried_append_is_stored_once(study_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that breaks after the commit but before the reply makes the client send the
    same batch again; it must not be appended twice (a duplicate CREATE_TRIAL would be a ghost trial)."""
    with opened(JOURNAL_URL) as storage:
        study_id = optuna.create_study(study_name=study_name, storage=storage)._study_id
    log = {"op_code": 2, "worker_id": "w", "study_id": study_id, "user_attr": {"retried": 1}}
    batch = uuid.uuid4()
    monkeypatch.setattr(search.journal.uuid, "uuid4", lambda: batch)
    backend = PostgresJournalBackend(JOURNAL_URL)
    backend.append_logs([log])
    backend.append_logs([log])  # the retry
    assert sql("SELECT count(*) FROM hps_journal WHERE log = %s", json.dumps(log))[0][0] == 1
    backend.close()
