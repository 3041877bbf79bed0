"""A trial's life (search/trials.py): trials left RUNNING by a process that is gone settled once
(journal files have no heartbeats), never-started trials, retries that record their own story,
and a worker seen alive keeping its trial; on real storages (a SQLite file, the local
PostgreSQL, a journal file)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hps.search.executors import Target
from hps.search.record import FAIL_REASON, reason
from hps.search.trials import gone, identity, settle
from tests.helpers import dead_pid, fake_trial
from tests.search.conftest import opened


def _half(trial: optuna.Trial) -> float:
    return 0.5


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgres"])
def test_a_rerun_settles_trials_left_running_by_a_process_that_is_gone_once(tmp_path: Path, study_name: str,
                                                                              kind: str) -> None:
    """A trial whose process died (SIGKILL, OOM) stays RUNNING: a journal file has no heartbeats,
    so nothing else would ever end it. The next run on this machine sees the process is gone,
    stores the trial FAIL with why and queues its params once; a second run settling at the same
    time (or later) queues nothing more. A trial of a live process, or of another machine, stays."""
    from tests.search.conftest import PG_URL

    url = {"journal": str(tmp_path / "s.log"), "sqlite": f"sqlite:///{tmp_path / 's.db'}", "postgres": PG_URL}[kind]
    with opened(url) as storage:
        study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
        me = identity("r1")
        dead = fake_trial(study, TrialState.RUNNING, {**me, "pid": dead_pid(), "started": 1})
        reused = fake_trial(study, TrialState.RUNNING, {**me, "started": me["started"] - 1})  # our pid, another process's start
        live = fake_trial(study, TrialState.RUNNING, me)
        elsewhere = fake_trial(study, TrialState.RUNNING, {**me, "host": "another-machine", "pid": dead_pid()})
        assert [gone(trial_worker) for trial_worker in (me, {**me, "host": "x"}, None, {})] == [False] * 4

        assert settle(study) == [dead, reused]
        assert settle(optuna.load_study(study_name=study_name, storage=storage)) == []  # a second run: nothing twice
        ts = study.get_trials()
        for n in (dead, reused):
            assert ts[n].state == TrialState.FAIL and ts[n].user_attrs[FAIL_REASON] == "lost_worker"
            assert reason(ts[n]).startswith("its worker's process is gone (pid ")
        assert ts[live].state == ts[elsewhere].state == TrialState.RUNNING
        retries = [t for t in ts if t.state == TrialState.WAITING]
        assert sorted(t.system_attrs["failed_trial"] for t in retries) == [dead, reused]
        assert all(t.params == ts[t.system_attrs["failed_trial"]].params for t in retries)
        for n in (live, elsewhere):  # leave the shared database clean
            study._storage.set_trial_state_values(ts[n]._trial_id, TrialState.FAIL)




def test_a_run_leaves_no_trial_running_that_a_killed_run_never_started(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A run SIGKILLed between Optuna's ask and hps's first write leaves a RUNNING trial with no
    worker and no heartbeat, judged lost only once older than a worker takes to record itself. A
    run that met it too young (its start-up settling, stubbed here) ended with it still RUNNING
    when nothing ran after (the soak test's last CI failure); a run now waits for it and settles it."""
    import hps
    import hps.search.trials as trials_module
    from tests.search.conftest import SMALL

    space = {**SMALL, "study": {**SMALL["study"], "name": "unstarted"}, "warm_start": []}
    url = f"sqlite:///{tmp_path / 's.db'}"
    hps.run(space, url, trials=2, objective=_half, progress="none")
    n = optuna.load_study(study_name="unstarted", storage=url).ask().number  # the killed run's: no worker, nothing drawn
    monkeypatch.setattr(trials_module, "settle", lambda study, run=None: [])  # the start-up settling found it too young
    monkeypatch.setattr(trials_module, "NEVER_STARTED_AFTER", 2)
    result = hps.run(space, url, trials=2, objective=_half, progress="none")
    t = result.study.trials[n]
    assert t.state == TrialState.FAIL and reason(t) == "it never started: its run stopped between creating it and running it"
    assert not [x for x in result.study.trials if x.state == TrialState.RUNNING]


def test_a_trial_that_never_started_neither_blocks_the_target_nor_stays_running(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupt between Optuna creating a trial and hps running it leaves a RUNNING trial with
    no worker and no heartbeat: nothing would ever end it, and counted as running it made a rerun
    stop one trial short of its target. It does not count, and once it is older than a worker
    takes to record itself it is settled (FAIL, why stored; nothing drawn, so nothing retried)."""
    import hps.search.trials as trials_module

    with opened(str(tmp_path / "n.log")) as storage:
        study = optuna.create_study(storage=storage, direction="maximize")
        for _ in range(2):
            fake_trial(study, TrialState.COMPLETE, None)
        n = study.ask().number  # nothing drawn, no worker recorded
        assert not Target(3).reached(study)
        assert settle(study) == []  # too young to judge
        monkeypatch.setattr(trials_module, "NEVER_STARTED_AFTER", -1)
        assert settle(study) == [n]
        t = study.get_trials()[n]
        assert t.state == TrialState.FAIL and reason(t) == "it never started: its run stopped between creating it and running it"
        assert [x.state for x in study.get_trials()].count(TrialState.WAITING) == 0


def _terminated_once(trial: optuna.Trial) -> float:
    """Draws, reports an epoch, then is stopped as SIGTERM stops a run."""
    from hps.search.errors import Terminated

    x = trial.suggest_float("x", 0.0, 1.0)
    trial.report(x, 1)
    raise Terminated()


def _drawn(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


def test_a_retry_of_a_terminated_trial_that_completes_says_complete(tmp_path: Path) -> None:
    """Optuna's retry copied the original's user and system attrs: a retry of a terminated trial
    that then COMPLETEd carried ``fail_reason=terminated`` and the original's ``hps:why``, so the
    progress line, ``hps status`` and the record called a complete trial terminated. A retry now
    starts with no reasons of its own and points to the trial it retries."""
    import json

    import hps
    from hps.search.errors import Terminated
    from hps.search.progress import finished_line
    from tests.search.conftest import SMALL
    from tests.search.conftest import hps as cli

    space = {**SMALL, "study": {**SMALL["study"], "name": "retried"}, "warm_start": []}
    url = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.raises(Terminated):
        hps.run(space, url, trials=1, objective=_terminated_once, progress="none")
    result = hps.run(space, url, trials=1, objective=_drawn, progress="none")
    first, retry = result.study.trials[:2]
    assert first.state == TrialState.FAIL and first.user_attrs[FAIL_REASON] == "terminated"
    assert retry.state == TrialState.COMPLETE and retry.params == first.params
    assert FAIL_REASON not in retry.user_attrs and reason(retry) is None
    assert retry.system_attrs["failed_trial"] == first.number and retry.system_attrs["retry_history"] == [first.number]
    assert finished_line(retry, 1, 1) == f"[1/1] trial 1 complete value {retry.value:.4f} (x={retry.params['x']:.3g})"
    out = cli("status", "retried", "--storage", url, "--json")
    row = json.loads(out.stdout)["trials"][1]
    assert (row["state"], row["cause"], row["reason"], row["retry_of"]) == ("complete", None, None, 0)
    table = cli("status", "retried", "--storage", url).stdout
    assert "terminated" not in next(line for line in table.splitlines() if line.strip().startswith("│ 1 ")), table


def _holds_the_gil(trial: optuna.Trial) -> float:
    """Two 'epochs' of work that holds the GIL for seconds each (a regular expression that
    backtracks: CPython's ``re`` never releases the GIL), as a C extension may: Optuna's heartbeat
    thread in this process cannot beat meanwhile."""
    import re

    x = trial.suggest_float("x", 0.0, 1.0)
    for epoch in (1, 2):
        re.match(r"(a+)+$", "a" * 26 + "b")
        trial.report(x, epoch)
    return x


@pytest.mark.slow  # two runs side by side, a CPU hog: about a minute
def test_two_runs_under_a_cpu_hog_never_fail_each_others_live_trials(tmp_path: Path, study_name: str) -> None:
    """A late heartbeat (a busy machine, work holding the GIL) made the other run fail a trial
    that was still training and queue its params again (a fresh clone's CI on a busy machine:
    6 distinct params for 8 trials). A trial whose worker is seen alive is never failed now."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.helpers import cpu_hog
    from tests.search.conftest import PG_URL, SMALL

    space = {**SMALL, "study": {**SMALL["study"], "name": study_name}, "warm_start": []}
    code = ("import sys; import hps; from tests.search.test_trials import _holds_the_gil\n"
            f"r = hps.run({space!r}, {PG_URL!r}, trials=4, objective=_holds_the_gil, progress='none'); print(r)")
    env = {**os.environ, "HPS_HEARTBEAT_SECONDS": "1", "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    with cpu_hog():
        runs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        outs = [p.communicate(timeout=600) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], outs
    with opened(PG_URL) as storage:
        ts = optuna.load_study(study_name=study_name, storage=storage).trials
    failed = [(t.number, reason(t)) for t in ts if t.state == TrialState.FAIL]
    assert failed == [], failed
    assert not any("failed by another run" in err for _, err in outs), outs
    assert len({t.params["x"] for t in ts}) == len(ts) >= 4


def test_a_retry_whose_checkpoint_is_gone_says_so_in_its_record(tmp_path: Path) -> None:
    """A retry whose original's checkpoint was deleted (or never saved) trained from scratch
    without a word; its record now says it starts from scratch, and why."""
    from hps.search.checkpoints import TrialCheckpoint
    from hps.search.record import CHECKPOINT, RESUMED_FROM, retry_note
    from hps.search.storage import artifact_store
    from hps.search.trials import owe

    with opened(f"sqlite:///{tmp_path / 's.db'}") as storage:
        study = optuna.create_study(storage=storage, direction="maximize")
        gone_one = fake_trial(study, TrialState.RUNNING, None)
        never = fake_trial(study, TrialState.RUNNING, None)
        storage.set_trial_system_attr(study.trials[gone_one]._trial_id, CHECKPOINT,
                                      {"id": "checkpoint-deleted", "epoch": 2, "bytes": 10})
        for n in (gone_one, never):
            storage.set_trial_state_values(study.trials[n]._trial_id, TrialState.FAIL)
            assert owe(study, study.trials[n])
        store = artifact_store(tmp_path / "artifacts")
        for original in (gone_one, never):
            retry = study.ask()
            assert TrialCheckpoint(retry, store).load() is None
            study.tell(retry, 0.5)
            done = study.trials[retry.number]
            assert done.system_attrs[RESUMED_FROM]["trial"] == original and done.system_attrs[RESUMED_FROM]["epoch"] == 0
        first, second = study.trials[2:]
        assert retry_note(first) == ("retry of trial 0, from scratch: its original's checkpoint checkpoint-deleted "
                                     "(epoch 2) is gone from the artifact store")
        assert retry_note(second) == "retry of trial 1, from scratch: its original saved no checkpoint before it stopped"


def _pg(action: str) -> None:
    import os
    import subprocess

    version = os.listdir("/etc/postgresql")[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True, timeout=60)


@pytest.mark.slow  # stops the real PostgreSQL server until the run meets it (seconds; other tests see a restart)
def test_a_run_that_loses_its_database_mid_trial_waits_it_out_and_owes_the_trial(tmp_path: Path, study_name: str) -> None:
    """A PostgreSQL restart during a run ended it with exit 0 and "1/2 finished (1 running, 1
    complete)": the trial in flight stayed RUNNING with no process behind it (the run counted its
    own orphan as live work), its checkpoint deleted. Now the run waits for the database, fails
    the trial with the reason, owes it, and its retry resumes from the kept checkpoint."""
    import contextlib
    import os
    import subprocess
    import sys
    import threading

    from hps.search.record import CHECKPOINT, RESUMED_FROM
    from tests.helpers import wait_until
    from tests.search.conftest import PG_URL, trials, write_space

    path = write_space(tmp_path, study_name, warm_start=[{"model.width": 0.25, "optimizer.lr": 0.05}],
                       study__pruner={"name": "none"})
    env = {**os.environ, "COLUMNS": "200", "HPS_CHECKPOINT_SECONDS": "0", "HPS_ARTIFACTS": str(tmp_path / "art")}
    cmd = [str(Path(sys.executable).parent / "hps"), "run", str(path), "--storage", PG_URL, "--no-live", "--trials", "2",
           "--set", "fixed.train.epochs=6", "--set", "budget.max_epochs=6"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_until(lambda: (trials(PG_URL, study_name)[0].system_attrs.get(CHECKPOINT) or {}).get("epoch", 0) >= 1, 180,
                   what="a checkpoint")
        _pg("stop")  # until the trial's next epoch meets no database (bounded: the old code said nothing)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: any("the database went away" in line for line in lines), 60, every=0.1)
    finally:
        _pg("start")
    out = proc.stdout.read()  # type: ignore[union-attr]
    proc.wait(timeout=600)
    reader.join(timeout=10)
    err = "".join(lines)
    assert proc.returncode == 0, err
    ts = trials(PG_URL, study_name)
    assert not [t.number for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)], out
    lost = ts[0]
    assert lost.state == TrialState.FAIL and lost.user_attrs[FAIL_REASON] == "storage_outage", lost.user_attrs
    assert reason(lost).startswith("its worker lost the database mid-trial")
    retry = next(t for t in ts if t.system_attrs.get("failed_trial") == 0)
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert retry.system_attrs[RESUMED_FROM]["epoch"] >= 1 and FAIL_REASON not in retry.user_attrs
    summary = next(line for line in out.splitlines() if line.startswith(f"study {study_name}: "))
    assert summary.startswith(f"study {study_name}: 2/2 finished (") and "running" not in summary, out
    assert "lost to a database outage mid-trial; failed and owed again" in err


@pytest.mark.slow  # a run whose trials hold the GIL for seconds: about half a minute
def test_work_that_holds_the_gil_does_not_starve_the_heartbeat(tmp_path: Path) -> None:
    """Optuna beats from a thread of the worker's process: work that holds the GIL (a C extension,
    here a regular expression that backtracks for seconds) starved it, and the trial looked dead to
    every other run. A process of its own beats for the worker's trials meanwhile."""
    import os
    import sqlite3
    import subprocess
    import sys
    import time

    from tests.conftest import REPO
    from tests.search.conftest import SMALL

    db = tmp_path / "s.db"
    space = {**SMALL, "study": {**SMALL["study"], "name": "gil"}, "warm_start": []}
    code = ("import hps; from tests.search.test_trials import _holds_the_gil\n"
            f"hps.run({space!r}, 'sqlite:///{db}', trials=2, objective=_holds_the_gil, progress='none')")
    env = {**os.environ, "HPS_HEARTBEAT_SECONDS": "1", "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, text=True, stderr=subprocess.PIPE)
    ages: list[float] = []
    while proc.poll() is None:
        time.sleep(0.25)
        with contextlib.suppress(sqlite3.Error):
            conn = sqlite3.connect(db, timeout=1)
            row = conn.execute("SELECT max((julianday('now') - julianday(h.heartbeat)) * 86400) FROM trial_heartbeats h "
                               "JOIN trials t ON t.trial_id = h.trial_id WHERE t.state = 'RUNNING'").fetchone()
            conn.close()
            if row and row[0] is not None:
                ages.append(row[0])
    assert proc.returncode == 0, proc.stderr.read()  # type: ignore[union-attr]
    # beats every second, so its age stays well under the 6 s grace (3 beats, at least 5 s over one);
    # starved, it reached 13 s. (A beat can wait a second or two for SQLite's lock on a busy machine.)
    assert len(ages) > 20 and max(ages) < 5.0, (len(ages), max(ages, default=None))


@pytest.mark.slow  # a run that waits 25 s for its database, then a rerun: about two minutes
def test_a_run_whose_database_stays_away_stops_in_one_line_and_the_rerun_resumes(tmp_path: Path, study_name: str) -> None:
    """The database stays away (cut at the network: the server itself runs on): the run waits its
    bounded time, then exits non-zero with one line, no traceback; the trial's checkpoint is kept,
    and the rerun settles the trial and resumes it from that checkpoint."""
    import os
    import subprocess
    import sys

    from hps.search.record import CHECKPOINT, RESUMED_FROM
    from tests.helpers import TcpProxy, wait_until
    from tests.search.conftest import PG_URL, trials, write_space

    proxy = TcpProxy(("127.0.0.1", 5432))
    via_proxy = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    path = write_space(tmp_path, study_name, warm_start=[{"model.width": 0.25, "optimizer.lr": 0.05}],
                       study__pruner={"name": "none"})
    env = {**os.environ, "COLUMNS": "200", "HPS_CHECKPOINT_SECONDS": "0", "HPS_ARTIFACTS": str(tmp_path / "art"),
           "HPS_CONNECT_TIMEOUT": "2"}
    cmd = [str(Path(sys.executable).parent / "hps"), "run", str(path), "--no-live", "--trials", "1",
           "--set", "fixed.train.epochs=6", "--set", "budget.max_epochs=6", "--storage"]
    proc = subprocess.Popen([*cmd, via_proxy], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_until(lambda: (trials(PG_URL, study_name)[0].system_attrs.get(CHECKPOINT) or {}).get("epoch", 0) >= 1, 180,
               what="a checkpoint")
    proxy.cut()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode not in (0, None) and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: lost the database for over 25 s ("), err
    assert trials(PG_URL, study_name)[0].state == TrialState.RUNNING  # nothing could be written; its checkpoint kept
    again = subprocess.run([*cmd, PG_URL], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    lost, retry = trials(PG_URL, study_name)[:2]
    assert lost.state == TrialState.FAIL and lost.user_attrs[FAIL_REASON] == "lost_worker"
    assert retry.state == TrialState.COMPLETE and retry.system_attrs[RESUMED_FROM]["epoch"] >= 1
