"""hps's storage (``hps+postgresql://``) on the real PostgreSQL: one history for many clients, reads
that fetch only what changed and never skip a late commit, and retries that do their work once."""

from __future__ import annotations

import math
import uuid

import optuna
import psycopg2
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

import search.pgstorage
from search.pgstorage import PostgresStorage
from tests.search.conftest import HPS_URL, JOURNAL_URL, LIBPQ, ask_report_tell, hps, opened, sql, terminate_clients, trials


def test_two_clients_see_one_history(study_name: str) -> None:
    with opened(HPS_URL) as one, opened(HPS_URL) as two:
        a = optuna.create_study(study_name=study_name, storage=one)
        b = optuna.load_study(study_name=study_name, storage=two)
        a.enqueue_trial({"x": 0.25, "opt": "adam"}, user_attrs={"warm_start": "hand"})
        for i in range(5):
            ask_report_tell(a if i % 2 else b, i / 10)
        for study in (a, b):
            ts = study.trials
            assert [t.number for t in ts] == list(range(5))
            assert [t.value for t in ts] == [i / 10 for i in range(5)]
            assert ts[0].params == {"x": 0.25, "opt": "adam"} and ts[0].user_attrs == {"warm_start": "hand"}
            assert all(list(t.params) == ["x", "opt"] for t in ts)  # in the order they were suggested
            assert all(t.state == TrialState.COMPLETE and len(t.intermediate_values) == 3 for t in ts)
            assert study.best_trial.number == 0


def test_values_json_cannot_hold_round_trip(study_name: str) -> None:
    with opened(HPS_URL) as storage:
        study = optuna.create_study(study_name=study_name, storage=storage)
        trial = study.ask()
        trial.set_user_attr("curve", [0.5, math.nan, math.inf])
        for step, v in enumerate([math.nan, math.inf, -math.inf, 0.5]):
            trial.report(v, step)
        study.tell(trial, -math.inf)
    with opened(HPS_URL) as storage:
        t = optuna.load_study(study_name=study_name, storage=storage).trials[0]
    assert t.value == -math.inf
    assert math.isnan(t.user_attrs["curve"][1]) and t.user_attrs["curve"][2] == math.inf
    assert math.isnan(t.intermediate_values[0])
    assert [t.intermediate_values[s] for s in (1, 2, 3)] == [math.inf, -math.inf, 0.5]


def test_a_parameter_keeps_its_distribution(study_name: str) -> None:
    with opened(HPS_URL) as one, opened(HPS_URL) as two:
        optuna.create_study(study_name=study_name, storage=one).ask().suggest_float("x", 0, 1)
        trial = optuna.load_study(study_name=study_name, storage=two).ask()
        with pytest.raises(ValueError, match="different distribution kind"):
            trial.suggest_int("x", 0, 3)


def test_a_read_fetches_only_what_changed(study_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No client replays the others' work: a read decodes the rows changed since its last read."""
    decoded: list[int] = []
    decode = search.pgstorage._trial
    monkeypatch.setattr(search.pgstorage, "_trial", lambda row: decoded.append(row[0]) or decode(row))
    with opened(HPS_URL) as writer, opened(HPS_URL) as reader:
        a = optuna.create_study(study_name=study_name, storage=writer)
        for i in range(20):
            ask_report_tell(a, i / 100)
        b = optuna.load_study(study_name=study_name, storage=reader)
        assert len(b.trials) == 20
        decoded.clear()
        ask_report_tell(a, 0.5)
        writes = len(decoded)  # the writer decodes the row each of its writes returns
        assert [t.value for t in b.trials][-1] == 0.5
        assert len(decoded) == writes + 1  # the reader: one row, not 21
        decoded.clear()
        b.ask()  # with nothing queued, asking reads no other trial
        assert len(decoded) == 1


def test_a_change_that_commits_late_is_not_skipped(study_name: str) -> None:
    """A transaction that began before a reader's last read but committed after it: its change
    has an older id than rows the reader has seen, and must still be read next time."""
    with opened(HPS_URL) as writer, opened(HPS_URL) as reader:
        a = optuna.create_study(study_name=study_name, storage=writer)
        slow = a.ask()
        b = optuna.load_study(study_name=study_name, storage=reader)
        conn = psycopg2.connect(LIBPQ)
        with conn.cursor() as cur:  # a slow writer: its transaction stays open across the reads below
            cur.execute("UPDATE hps_trials SET user_attrs = user_attrs || '{\"late\": \"1\"}', "
                        "changed = pg_current_xact_id() WHERE trial_id = %s", (slow._trial_id,))
            ask_report_tell(a, 0.3)  # a change that begins and commits after the slow one began
            assert [t.user_attrs for t in b.trials] == [{}, {}]
            conn.commit()
        conn.close()
        assert [t.user_attrs for t in b.trials] == [{"late": 1}, {}]


@pytest.mark.parametrize("url", [HPS_URL, JOURNAL_URL], ids=["hps", "journal"])
def test_a_reconnect_carries_on(study_name: str, url: str) -> None:
    """Connections dropped as a database restart drops them: both Postgres storages carry on
    (the journal's case with lost logs is in test_journal)."""
    with opened(url) as storage:
        study = optuna.create_study(study_name=study_name, storage=storage)
        ask_report_tell(study, 0.1)
        terminate_clients()
        ask_report_tell(study, 0.2)
        assert [t.value for t in study.trials] == [0.1, 0.2]


def test_a_retried_create_is_stored_once(study_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that breaks after the commit but before the reply makes the client send the
    statement again: the trial must not be created twice (a ghost RUNNING trial)."""
    token = uuid.uuid4()
    monkeypatch.setattr(search.pgstorage.uuid, "uuid4", lambda: token)
    storage = PostgresStorage(HPS_URL)
    study_id = optuna.create_study(study_name=study_name, storage=storage)._study_id
    first = storage.create_new_trial(study_id)
    assert storage.create_new_trial(study_id) == first  # the retry finds its own trial
    assert sql("SELECT count(*) FROM hps_trials WHERE study_id = %s", study_id)[0][0] == 1
    storage.close()


def test_a_retried_state_change_knows_itself(study_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same claim is the same operation sent twice (True); another client's claim on a trial
    taken or finished meanwhile is refused, as Optuna's storages must."""
    with opened(HPS_URL) as one, opened(HPS_URL) as two:
        study = optuna.create_study(study_name=study_name, storage=one)
        study.enqueue_trial({"x": 0.5})
        waiting = study.trials[0]._trial_id
        claim = uuid.uuid4()
        monkeypatch.setattr(search.pgstorage.uuid, "uuid4", lambda: claim)
        assert one.set_trial_state_values(waiting, TrialState.RUNNING)
        assert one.set_trial_state_values(waiting, TrialState.RUNNING)  # a retry of the same pop
        monkeypatch.undo()
        assert not two.set_trial_state_values(waiting, TrialState.RUNNING)  # taken by the first
        assert one.set_trial_state_values(waiting, TrialState.COMPLETE, [1.0])
        with pytest.raises(UpdateFinishedTrialError):
            two.set_trial_state_values(waiting, TrialState.FAIL)
        with pytest.raises(UpdateFinishedTrialError):
            two.set_trial_user_attr(waiting, "k", 1)
        assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 1.0


def test_heartbeats_fail_a_silent_trial(study_name: str) -> None:
    with opened(HPS_URL) as storage:
        study = optuna.create_study(study_name=study_name, storage=storage)
        silent, beating, never = study.ask(), study.ask(), study.ask()
    hb = PostgresStorage(HPS_URL, heartbeat_interval=1, grace_period=2)
    hb.record_heartbeat(silent._trial_id)
    sql("UPDATE hps_trials SET heartbeat = now() - interval '10 seconds' WHERE trial_id = %s", silent._trial_id)
    hb.record_heartbeat(beating._trial_id)
    study_id = silent.study._study_id
    assert hb._get_stale_trial_ids(study_id) == [silent._trial_id]  # a trial that never beat is not stale
    assert never._trial_id not in hb._get_stale_trial_ids(study_id)
    hb.close()


def test_hps_copy_moves_a_journal_study_here(study_name: str) -> None:
    """Studies stored in the earlier cluster default come along, trial for trial."""
    with opened(JOURNAL_URL) as storage:
        study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
        study.set_user_attr("hps_space", {"study": {"name": study_name}})
        for i in range(3):
            ask_report_tell(study, i / 10)
        pruned = study.ask()
        pruned.suggest_float("x", 0, 1)
        pruned.report(0.01, 0)
        study.tell(pruned, state=TrialState.PRUNED)
        study.enqueue_trial({"x": 0.5})
    r = hps("copy", study_name, "--from", JOURNAL_URL, "--to", HPS_URL)
    assert r.returncode == 0 and f"copied {study_name} (5 trials)" in r.stdout, r.stderr
    key = [(t.number, t.state, t.values, t.params, t.intermediate_values, t.user_attrs) for t in trials(JOURNAL_URL, study_name)]
    assert [(t.number, t.state, t.values, t.params, t.intermediate_values, t.user_attrs) for t in trials(HPS_URL, study_name)] == key
    with opened(HPS_URL) as storage:
        assert optuna.load_study(study_name=study_name, storage=storage).user_attrs["hps_space"]["study"]["name"] == study_name
    again = hps("copy", study_name, "--from", JOURNAL_URL, "--to", HPS_URL)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already holds a study named" in again.stderr


def test_a_wrong_url_is_reported_at_once() -> None:
    """The first connection is not retried (only a lost one is): a typo is an error, not a wait."""
    from search.errors import StudyError
    from search.storage import get_storage

    with pytest.raises(StudyError, match=r'cannot open storage hps\+postgresql://.*database "no_such_db" does not exist'):
        get_storage(HPS_URL.rsplit("/", 1)[0] + "/no_such_db")
