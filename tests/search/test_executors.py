"""Workers sharing a study: per-trial seeds, the target counted across processes, trials left
RUNNING by a process that is gone settled once (journal files have no heartbeats), on real
storages (a SQLite file, the local PostgreSQL, a journal file)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hps.search.algorithms import TrialSeeded
from hps.search.executors import Target
from hps.search.trials import identity
from tests.helpers import dead_pid, fake_trial, other_process
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


def test_the_target_counts_trials_other_workers_are_running_unless_their_worker_is_gone(tmp_path: Path) -> None:
    """Processes sharing a study stop together at the target: a running trial of a live worker
    counts (it will finish), one whose process is gone does not (it will be retried), and a
    WAITING trial is always owed first."""
    with opened(str(tmp_path / "t.log")) as storage:
        study = optuna.create_study(storage=storage, direction="maximize")
        for _ in range(2):
            fake_trial(study, TrialState.COMPLETE, None)
        fake_trial(study, TrialState.RUNNING, other_process("other"))
        assert Target(3).reached(study) and not Target(4).reached(study)
        fake_trial(study, TrialState.RUNNING, {**identity("dead"), "pid": dead_pid()})
        assert not Target(4).reached(study)
        study.enqueue_trial({"lr": 0.1})
        assert not Target(3).reached(study)


@pytest.mark.slow  # two CLI processes
def test_ray_at_an_address_where_nothing_listens_is_one_line_at_once(tmp_path: Path) -> None:
    """Ray itself retried for 100 s and then printed a traceback."""
    import yaml

    from tests.helpers import free_port
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
