"""Workers sharing a study: per-trial seeds, the target counted across processes, trials left
RUNNING by a process that is gone settled once (journal files have no heartbeats), on real
storages (a SQLite file, the local PostgreSQL, a journal file)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hps.search.algorithms import TrialSeeded
from hps.search.executors import Target, gone, identity, settle
from hps.search.record import FAIL_REASON, WORKER, reason
from tests.search.conftest import opened


def _study(url: str, name: str, seed: int = 0) -> optuna.Study:
    return optuna.create_study(study_name=name, storage=url, load_if_exists=True, direction="maximize",
                               sampler=TrialSeeded("tpe", {"n_startup_trials": 2}, 10, seed))


def _draw(study: optuna.Study) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1.0, log=True)
    trial.suggest_float("width", 0.1, 1.0)
    return trial


def test_two_processes_on_one_study_never_draw_alike_and_a_study_regrown_draws_the_same(tmp_path: Path) -> None:
    """Two runs opened on one study at the same state (what two ``hps run`` started together see)
    draw different points: the seed follows the trial's number, unique in the study. One seeded
    per process (the old way) drew the same point in both. The same study grown again from the
    same state draws the same points."""
    def grow(url: str) -> list[dict[str, float]]:
        a, b = _study(url, "s"), _study(url, "s")  # two processes' views of one study
        points = []
        for _ in range(5):  # past TPE's random start-up trials
            ta, tb = _draw(a), _draw(b)
            points += [ta.params, tb.params]
            a.tell(ta, ta.params["lr"])
            b.tell(tb, tb.params["width"])
        return points

    first = grow(f"sqlite:///{tmp_path / 'a.db'}")
    assert len({json.dumps(p, sort_keys=True) for p in first}) == len(first) == 10
    assert grow(f"sqlite:///{tmp_path / 'b.db'}") == first


def _trial(study: optuna.Study, state: TrialState, worker: dict | None) -> int:
    trial = study.ask({"lr": FloatDistribution(1e-4, 1.0, log=True)})
    if worker is not None:
        study._storage.set_trial_system_attr(trial._trial_id, WORKER, worker)
    if state != TrialState.RUNNING:
        study.tell(trial, 0.5, state=state)
    return trial.number


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(proc.stdout)


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
        dead = _trial(study, TrialState.RUNNING, {**me, "pid": _dead_pid(), "started": 1})
        reused = _trial(study, TrialState.RUNNING, {**me, "started": me["started"] - 1})  # our pid, another process's start
        live = _trial(study, TrialState.RUNNING, me)
        elsewhere = _trial(study, TrialState.RUNNING, {**me, "host": "another-machine", "pid": _dead_pid()})
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


def test_the_target_counts_trials_other_workers_are_running_unless_their_worker_is_gone(tmp_path: Path) -> None:
    """Processes sharing a study stop together at the target: a running trial of a live worker
    counts (it will finish), one whose process is gone does not (it will be retried), and a
    WAITING trial is always owed first."""
    with opened(str(tmp_path / "t.log")) as storage:
        study = optuna.create_study(storage=storage, direction="maximize")
        for _ in range(2):
            _trial(study, TrialState.COMPLETE, None)
        _trial(study, TrialState.RUNNING, identity("other"))
        assert Target(3).reached(study) and not Target(4).reached(study)
        _trial(study, TrialState.RUNNING, {**identity("dead"), "pid": _dead_pid()})
        assert not Target(4).reached(study)
        study.enqueue_trial({"lr": 0.1})
        assert not Target(3).reached(study)


@pytest.mark.slow  # two CLI processes
def test_ray_at_an_address_where_nothing_listens_is_one_line_at_once(tmp_path: Path) -> None:
    """Ray itself retried for 100 s and then printed a traceback."""
    import yaml

    from tests.conftest import free_port
    from tests.search.conftest import SMALL, hps

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SMALL))
    port = free_port()
    out = hps("run", str(tmp_path / "s.yaml"), "--storage", "postgresql://postgres@127.0.0.1:5432/test",
              "--ray", f"127.0.0.1:{port}", timeout=60)
    assert out.returncode == 2  # a user error, as every one-line refusal
    assert out.stderr.strip() == (f"error: --ray 127.0.0.1:{port}: no Ray cluster answers there (Connection refused); "
                                  "start one (ray start --head), or use --ray local for a private one")
    bad = hps("run", str(tmp_path / "s.yaml"), "--storage", "postgresql://postgres@127.0.0.1:5432/test", "--ray", "head",
              timeout=60)
    assert bad.stderr.strip().startswith("error: --ray head: expected local, auto, HOST:PORT")


def _failed_under_it(trial: optuna.Trial) -> float:
    """An objective whose first trial another run fails while it runs (its heartbeat late to them)."""
    if trial.number == 0:
        trial.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return 0.5


def test_a_worker_whose_trial_another_run_failed_carries_on(tmp_path: Path) -> None:
    """A starved heartbeat thread (an overloaded machine) can make another run fail a live trial;
    Optuna then cannot tell it ("Cannot tell a FAIL trial"), which ended the whole run with a
    traceback. The worker goes on with the next trial."""
    import hps
    from tests.search.conftest import SMALL

    space = {**SMALL, "study": {**SMALL["study"], "name": "late"}, "warm_start": []}
    result = hps.run(space, f"sqlite:///{tmp_path / 's.db'}", trials=3, objective=_failed_under_it, progress="none")
    assert result.finished == 3 and result.study.trials[0].state == TrialState.FAIL


def _failed_then_reports(trial: optuna.Trial) -> float:
    """The same, but the objective goes on writing to its trial (a report, an attr), as training does."""
    if trial.number == 0:
        trial.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        trial.set_user_attr("curve", [0.1])
    return 0.5


def test_a_trial_failed_under_its_worker_ends_in_one_line_not_a_traceback(tmp_path: Path,
                                                                          capfd: pytest.CaptureFixture[str]) -> None:
    """A write to a trial that another run failed raised ``UpdateFinishedTrialError`` in the
    objective, and Optuna logged its whole traceback (the soak test's CI failure); the run goes on
    and says it in one line."""
    import hps
    from tests.search.conftest import SMALL

    space = {**SMALL, "study": {**SMALL["study"], "name": "late"}, "warm_start": []}
    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append  # type: ignore[method-assign]
    logging.getLogger("optuna").addHandler(handler)  # (Optuna's own handler holds the stderr of its first use)
    try:
        result = hps.run(space, f"sqlite:///{tmp_path / 's.db'}", trials=3, objective=_failed_then_reports, progress="none")
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    err = capfd.readouterr().err
    assert result.finished == 3 and result.study.trials[0].state == TrialState.FAIL
    assert [r.exc_info for r in logged if r.exc_info] == []
    assert [r.getMessage() for r in logged if "Trial 0 failed" in r.getMessage()] == [
        "Trial 0 failed with parameters: {} because of the following error: "
        "SettledElsewhere('trial 0 was failed by another run while this worker ran it')."]
    assert "a trial of this worker was failed by another run" in err


def test_a_run_leaves_no_trial_running_that_a_killed_run_never_started(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A run SIGKILLed between Optuna's ask and hps's first write leaves a RUNNING trial with no
    worker and no heartbeat, judged lost only once older than a worker takes to record itself. A
    run that met it too young (its start-up settling, stubbed here) ended with it still RUNNING
    when nothing ran after (the soak test's last CI failure); a run now waits for it and settles it."""
    import hps
    import hps.search.executors as executors
    from tests.search.conftest import SMALL

    space = {**SMALL, "study": {**SMALL["study"], "name": "unstarted"}, "warm_start": []}
    url = f"sqlite:///{tmp_path / 's.db'}"
    hps.run(space, url, trials=2, objective=_failed_under_it, progress="none")
    n = optuna.load_study(study_name="unstarted", storage=url).ask().number  # the killed run's: no worker, nothing drawn
    monkeypatch.setattr(executors, "settle", lambda study, run=None: [])  # the start-up settling found it too young
    monkeypatch.setattr(executors, "NEVER_STARTED_AFTER", 2)
    result = hps.run(space, url, trials=2, objective=_failed_under_it, progress="none")
    t = result.study.trials[n]
    assert t.state == TrialState.FAIL and reason(t) == "it never started: its run stopped between creating it and running it"
    assert not [x for x in result.study.trials if x.state == TrialState.RUNNING]


def test_a_trial_that_never_started_neither_blocks_the_target_nor_stays_running(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupt between Optuna creating a trial and hps running it leaves a RUNNING trial with
    no worker and no heartbeat: nothing would ever end it, and counted as running it made a rerun
    stop one trial short of its target. It does not count, and once it is older than a worker
    takes to record itself it is settled (FAIL, why stored; nothing drawn, so nothing retried)."""
    import hps.search.executors as executors

    with opened(str(tmp_path / "n.log")) as storage:
        study = optuna.create_study(storage=storage, direction="maximize")
        for _ in range(2):
            _trial(study, TrialState.COMPLETE, None)
        n = study.ask().number  # nothing drawn, no worker recorded
        assert not Target(3).reached(study)
        assert settle(study) == []  # too young to judge
        monkeypatch.setattr(executors, "NEVER_STARTED_AFTER", -1)
        assert settle(study) == [n]
        t = study.get_trials()[n]
        assert t.state == TrialState.FAIL and reason(t) == "it never started: its run stopped between creating it and running it"
        assert [x.state for x in study.get_trials()].count(TrialState.WAITING) == 0
