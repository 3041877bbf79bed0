"""The command line as a user meets it: read-only commands start without torch, Ctrl-C ends a run
with one line and exit 130, the trial it stopped says why."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hps.search.record import reason
from tests.search.conftest import hps, trials, write_space


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished study of 20 trials with hps's attributes, written without training."""
    url = f"sqlite:///{tmp_path_factory.mktemp('ro') / 's.db'}"
    study = optuna.create_study(study_name="ro", storage=url, direction="maximize")
    for i in range(20):
        trial = study.ask()
        trial.suggest_float("model.width", 0.1, 1.0)
        trial.set_user_attr("params", 1000 * i)
        trial.storage.set_trial_system_attr(trial._trial_id, "hps:config", {"model": {"name": "resnet18", "width": 0.5}})
        study.tell(trial, i / 20)
    return url


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--version"], ["status"], ["status", "ro"], ["status", "ro", "--json"],
                                  ["export", "ro", "-o", "{tmp}/best.yaml"], ["plot", "ro", "-o", "{tmp}/plots"]])
def test_read_only_commands_do_not_import_torch(small_study: str, tmp_path: Path, args: list[str]) -> None:
    argv = [a.format(tmp=tmp_path) for a in args] + ([] if args == ["--version"] else ["--storage", small_study])
    code = ("import sys, json\nfrom hps.search.cli import app\ntry:\n    app(json.loads(sys.argv[1]), standalone_mode=False)\n"
            "finally:\n    print('\\nloaded:', sorted(m for m in ('torch', 'torchvision', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "HPS_ARTIFACTS": str(tmp_path / "art")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("loaded: []"), out.stdout
    if args[0] == "export":
        assert (tmp_path / "best.yaml").read_text().startswith("model: {name: resnet18, width: 0.5}")


def _ctrl_c_reaches() -> None:
    """A child's SIGINT as a terminal's foreground job has it: a shell starts background jobs with
    SIGINT ignored, and hps keeps an ignored SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _six_epochs_checkpointed_at_2(tmp_path: Path, study_name: str,
                                  url: str) -> tuple[subprocess.Popen[str], list[str], dict[str, str]]:
    """``hps run`` of one six-epoch trial (a warm start), returned once it has saved its checkpoint
    after epoch 2: (the process, its command, its environment)."""
    path = write_space(tmp_path, study_name, warm_start=[{"model.width": 0.25, "optimizer.lr": 0.05}])
    env = {**os.environ, "COLUMNS": "200", "HPS_CHECKPOINT_SECONDS": "0", "HPS_ARTIFACTS": str(tmp_path / "art")}
    cmd = [str(Path(sys.executable).parent / "hps"), "run", str(path), "--storage", url, "--no-live",
           "--set", "fixed.train.epochs=6", "--set", "budget.max_epochs=6"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_ctrl_c_reaches)  # as in a terminal, even when the tests run in the background
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        with contextlib.suppress(KeyError):  # the study does not exist yet
            ts = trials(url, study_name)
            if ts and (ts[0].system_attrs.get("hps:checkpoint") or {}).get("epoch", 0) >= 2:
                break
    return proc, cmd, env


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "cause", "line"), [
    (signal.SIGINT, 130, "interrupted", "interrupted (Ctrl-C / SIGINT); a rerun runs its params again"),
    (signal.SIGTERM, 143, "terminated", "terminated (SIGTERM); a rerun runs its params again"),
], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_stops_a_run_in_one_line_and_the_rerun_resumes_the_trial(
        tmp_path: Path, study_name: str, sig: int, code: int, cause: str, line: str) -> None:
    """Ctrl-C and SIGTERM (docker stop) alike: the running trial stops at once and is stored FAIL
    with the signal as its reason, its params are owed, the command prints one line and exits
    130/143; the rerun trains the owed params, resuming from the stopped trial's checkpoint."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    proc, cmd, env = _six_epochs_checkpointed_at_2(tmp_path, study_name, url)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert out.startswith(f"study {study_name} on sqlite:")
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1].startswith(f"{cause if cause == 'interrupted' else 'terminated (SIGTERM)'}; rerun the same")
    assert "Traceback" not in err
    stopped, owed = optuna.load_study(study_name=study_name, storage=url).trials
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["fail_reason"] == cause and reason(stopped) == line
    assert owed.state == TrialState.WAITING and owed.params == stopped.params and owed.system_attrs["failed_trial"] == 0
    again = subprocess.run([*cmd, "--trials", "1"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    retry = optuna.load_study(study_name=study_name, storage=url).trials[1]
    assert retry.state == TrialState.COMPLETE and sorted(retry.intermediate_values) == list(range(1, 7))
    assert retry.system_attrs["hps:resumed_from"]["trial"] == 0 and retry.system_attrs["hps:resumed_from"]["epoch"] >= 2
    assert not list((tmp_path / "art").glob("checkpoint-*"))  # both trials' checkpoints gone once the retry finished


@pytest.mark.slow
def test_a_run_killed_on_a_journal_file_is_settled_by_the_next_run(tmp_path: Path, study_name: str) -> None:
    """SIGKILL (the OOM killer, a lost container) leaves the trial RUNNING, and a journal file has no
    heartbeats to end it. The next run sees that the process is gone: the trial becomes FAIL with
    why, and its params are trained again, resuming from its checkpoint."""
    url = str(tmp_path / "studies.log")
    proc, cmd, env = _six_epochs_checkpointed_at_2(tmp_path, study_name, url)
    proc.kill()
    proc.communicate(timeout=60)
    assert trials(url, study_name)[0].state == TrialState.RUNNING  # nothing else would ever end it
    again = subprocess.run([*cmd, "--trials", "1"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert "trials 0 were left running by a run that is gone: retried" in again.stdout.splitlines()[0]
    killed, retry = trials(url, study_name)
    assert killed.state == TrialState.FAIL and killed.user_attrs["fail_reason"] == "lost_worker"
    assert reason(killed).startswith(f"its worker's process is gone (pid {proc.pid} on ")
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params and retry.system_attrs["failed_trial"] == 0
    assert retry.system_attrs["hps:resumed_from"]["epoch"] >= 2 and sorted(retry.intermediate_values) == list(range(1, 7))


@pytest.mark.slow
@pytest.mark.parametrize(("args", "env", "message"), [
    (["status", "--storage", "sqlite://"], {}, "error: storage 'sqlite://': an in-memory SQLite database vanishes with the command"),
    (["status", "--storage", "sqlite:///:memory:"], {}, "error: storage 'sqlite:///:memory:': an in-memory SQLite database"),
    (["export", "ro", "-o", "best.pt"], {}, "error: -o best.pt: the export is a YAML, and its weights go beside it as best.pt; give -o best.yaml"),
    (["status"], {"HPS_HEARTBEAT_SECONDS": "0"}, "error: HPS_HEARTBEAT_SECONDS='0' is not allowed; expected whole seconds >= 1"),
    (["status"], {"HPS_CONNECT_TIMEOUT": "ten"}, "error: HPS_CONNECT_TIMEOUT='ten' is not allowed; expected whole seconds >= 1"),
    (["run", "{tmp}/s.yaml"], {"HPS_ARTIFACTS": "/proc/hps-art"}, "error: HPS_ARTIFACTS /proc/hps-art: checkpoints and weights cannot be written there"),
], ids=["sqlite-memory", "sqlite-memory-2", "export-onto-weights", "heartbeat-0", "timeout-text", "artifacts-unwritable"])
def test_bad_settings_urls_and_options_are_one_line(small_study: str, tmp_path: Path, args: list[str], env: dict[str, str],
                                                    message: str) -> None:
    import yaml

    from tests.search.conftest import SMALL

    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**SMALL, "study": {**SMALL["study"], "name": "bad"}}))
    argv = [a.format(tmp=tmp_path) for a in args] + (["--storage", small_study] if args[0] == "export" else [])
    out = hps(*argv, env={**env, "HPS_STORAGE": f"sqlite:///{tmp_path / 'x.db'}"})
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith(message) and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "x.db").exists() or args[0] == "status"  # nothing trained


@pytest.fixture
def read_only_db(small_study: str, tmp_path: Path) -> Iterator[Path]:
    """A copy of the small study's SQLite file that cannot be written, even by root (chattr +i)."""
    import shutil

    path = tmp_path / "ro.db"
    shutil.copy(small_study.removeprefix("sqlite:///"), path)
    path.chmod(0o444)
    immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    if os.geteuid() == 0 and not immutable:
        pytest.skip("root writes any file, and chattr +i is not available here")
    yield path
    if immutable:
        subprocess.run(["chattr", "-i", str(path)], check=True)


PATH_CASES = {  # id -> (argv, the path the one line must name, what it says)
    "export-onto-folder": (["export", "ro", "-o", "{tmp}/folder", "--storage", "{db}"], "{tmp}/folder", "is a folder"),
    "export-into-proc": (["export", "ro", "-o", "/proc/hps/best.yaml", "--storage", "{db}"], "/proc/hps/best.yaml",
                         "cannot"),
    # a device is never replaced by the export's swap (a full disk: test_checkpoints' tmpfs export test)
    "export-onto-device": (["export", "ro", "-o", "/dev/full", "--storage", "{db}"], "/dev/full", "not a regular file"),
    "export-read-only-db": (["export", "ro", "-o", "{tmp}/b.yaml", "--storage", "sqlite:///{ro}"], "{ro}", "read-only"),
    "run-read-only-db": (["run", "{tmp}/s.yaml", "--storage", "sqlite:///{ro}", "--no-live"], "{ro}", "read-only"),
    "copy-to-read-only-db": (["copy", "ro", "--from", "{db}", "--to", "sqlite:///{ro}"], "{ro}", "read-only"),
    "storage-is-folder": (["status", "--storage", "sqlite:///{tmp}/folder"], "{tmp}/folder", "is a folder"),
    "journal-is-folder": (["run", "{tmp}/s.yaml", "--storage", "{tmp}/folder", "--no-live"], "{tmp}/folder", "is a folder"),
    "space-is-folder": (["run", "{tmp}/folder"], "{tmp}/folder", "is a folder"),
    "measure-folder": (["measure", "{tmp}/folder"], "{tmp}/folder", "is a folder"),
    "plot-onto-file": (["plot", "ro", "-o", "{tmp}/s.yaml", "--storage", "{db}"], "{tmp}/s.yaml", "is a file"),
    "retrain-out-file": (["retrain", "{tmp}/best.yaml", "--out", "{tmp}/s.yaml"], "{tmp}/s.yaml", "not a folder"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(PATH_CASES))
def test_paths_a_command_cannot_use_fail_in_one_line(small_study: str, read_only_db: Path, tmp_path: Path,
                                                      case: str) -> None:
    """Folders, devices, unwritable places, a read-only database: one line naming the path, exit 2."""
    import yaml

    from tests.search.conftest import SMALL

    (tmp_path / "folder").mkdir()
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**SMALL, "study": {**SMALL["study"], "name": "ro"}}))
    (tmp_path / "best.yaml").write_text(yaml.safe_dump({"model": {"name": "airnet", "width": 0.25},
                                                         "train": {"epochs": 1, "device": "cpu"}}))
    argv, path, says = PATH_CASES[case]
    fill = {"tmp": tmp_path, "db": small_study, "ro": read_only_db}
    out = hps(*(a.format(**fill) for a in argv), env={"HPS_STORAGE": f"sqlite:///{tmp_path / 'x.db'}"})
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ") and path.format(**fill) in lines[0] and says in lines[0], lines[0]


READ_ONLY_COMMANDS = [["status"], ["status", "s"], ["status", "s", "--json"], ["export", "s", "-o", "{tmp}/b.yaml"],
                      ["plot", "s", "-o", "{tmp}/plots"], ["delete", "s", "--yes"], ["dashboard"]]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
@pytest.mark.parametrize("args", READ_ONLY_COMMANDS, ids=lambda a: "-".join(a[:3]).replace("{tmp}/", ""))
def test_commands_that_read_never_create_a_storage(tmp_path: Path, args: list[str], kind: str) -> None:
    missing = tmp_path / ("hps.db" if kind == "sqlite" else "studies.log")
    url = f"sqlite:///{missing}" if kind == "sqlite" else str(missing)
    out = hps(*(a.format(tmp=tmp_path) for a in args), "--storage", url)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == f"error: no study storage at {missing} (nothing was created); give --storage the URL " \
                                 "your runs used or set HPS_STORAGE"
    assert not missing.exists()
    copied = hps("copy", "s", "--from", url, "--to", f"sqlite:///{tmp_path / 'to.db'}")
    assert copied.returncode == 2 and "no study storage at" in copied.stderr and not missing.exists()


@pytest.mark.slow
def test_a_missing_study_names_the_storage_url_without_its_password() -> None:
    from tests.search.conftest import PG_URL

    url = PG_URL.replace("postgres@", "postgres:s3cret@")
    out = hps("status", "nope", "--storage", url)
    assert out.returncode == 2, out.stderr
    assert f"no study named 'nope' in {PG_URL.replace('postgres@', 'postgres:***@')}; studies:" in out.stderr
    assert "s3cret" not in out.stderr


# one refusal per command, with the kind of outcome docs/exit-codes.md gives it
EXIT_CASES: dict[str, tuple[list[str], str]] = {
    "retrain": (["retrain", "{tmp}/bad.yaml"], "refused"),
    "measure": (["measure", "{tmp}/none.yaml"], "refused"),
    "run": (["run", "{tmp}/bad.yaml"], "refused"),
    "status": (["status", "--storage", "sqlite:///{tmp}/none.db"], "refused"),
    "delete": (["delete", "s", "--yes", "--storage", "sqlite:///{tmp}/none.db"], "refused"),
    "export": (["export", "s", "-o", "best.pt"], "refused"),
    "evaluate": (["evaluate", "{tmp}/bad.yaml", "--weights", "{tmp}/none.pt"], "refused"),
    "plot": (["plot", "s", "--storage", "sqlite:///{tmp}/none.db"], "refused"),
    "copy": (["copy", "s", "--from", "sqlite:///{tmp}/none.db", "--to", "sqlite:///{tmp}/to.db"], "refused"),
    "dashboard": (["dashboard", "--storage", "sqlite:///{tmp}"], "refused"),
    "models": (["models", "--no-such-option"], "refused"),
    "status-db-down": (["status", "--storage", "postgresql://u@127.0.0.1:{port}/db"], "unavailable"),
    "python -m hps.trainers": (["-m", "hps.trainers", "{tmp}/bad.yaml"], "refused"),
}


def _documented_codes() -> dict[str, int]:
    """kind -> exit code, from the table in docs/exit-codes.md."""
    from tests.conftest import REPO

    rows = [line.split("|") for line in (REPO / "docs" / "exit-codes.md").read_text().splitlines()
            if line.startswith("|") and line.split("|")[1].strip().isdigit()]
    return {cells[2].strip(): int(cells[1]) for cells in rows}


def test_every_command_has_an_exit_code_case() -> None:
    from hps.search import errors
    from hps.search.cli import app

    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    assert names <= set(EXIT_CASES), names - set(EXIT_CASES)
    assert _documented_codes() == {"done": errors.OK, "failed": errors.FAILED, "refused": errors.REFUSED,
                                   "unavailable": errors.UNAVAILABLE, "interrupted": errors.INTERRUPTED_CODE,
                                   "terminated": errors.TERMINATED_CODE}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(EXIT_CASES))
def test_every_command_refuses_with_its_documented_exit_code(tmp_path: Path, case: str) -> None:
    from tests.helpers import free_port

    (tmp_path / "bad.yaml").write_text("optimizer: {name: lion}\nstudy: {name: x}\n")
    argv, kind = EXIT_CASES[case]
    argv = [a.format(tmp=tmp_path, port=free_port()) for a in argv]
    if argv[0] == "-m":
        out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp_path)
    else:
        out = hps(*argv, env={"HPS_CONNECT_TIMEOUT": "2"}, timeout=60)
    assert out.returncode == _documented_codes()[kind], out.stderr
    if "--no-such-option" not in argv:  # a usage error prints click's usage too
        assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("error: "), out.stderr


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``hps run`` of two trials of a space whose width is fitted to the budget (``type: fit``),
    on a SQLite file that is not the default one."""
    import yaml

    from tests.search.conftest import SMALL

    tmp = tmp_path_factory.mktemp("fit")
    space = {**SMALL, "study": {**SMALL["study"], "name": "fit", "trials": 2}, "warm_start": [],
             "space": {"model.width": {"type": "fit", "low": 0.125, "high": 1.0},
                       "optimizer.lr": {"low": 0.01, "high": 0.1, "log": True}}}
    (tmp / "fit.yaml").write_text(yaml.safe_dump(space))
    url = f"sqlite:///{tmp / 'fit.db'}"
    out = hps("run", str(tmp / "fit.yaml"), "--storage", url, "--no-live", env={"HPS_ARTIFACTS": str(tmp / "art")})
    assert out.returncode == 0, out.stderr
    return {"tmp": tmp, "url": url, "out": out}


@pytest.mark.slow
def test_the_hint_after_a_run_carries_its_storage_and_works_when_pasted(fit_run: dict[str, Any], tmp_path: Path) -> None:
    import shlex

    hint = fit_run["out"].stdout.strip().splitlines()[-1]
    assert hint == f"export it with: hps export fit -o best.yaml --storage {fit_run['url']}"
    argv = shlex.split(hint.removeprefix("export it with: "))
    pasted = subprocess.run([str(Path(sys.executable).parent / "hps"), *argv[1:]], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "HPS_ARTIFACTS": str(fit_run["tmp"] / "art")})
    assert pasted.returncode == 0, pasted.stderr
    assert (tmp_path / "best.yaml").exists() and not (tmp_path / "hps.db").exists()


@pytest.mark.slow
def test_the_fitted_width_shows_wherever_params_do(fit_run: dict[str, Any]) -> None:
    lines = [x for x in fit_run["out"].stdout.splitlines() if x.startswith("[")]
    assert lines and all("model.width (fit)=" in x for x in lines), lines
    ts = trials(fit_run["url"], "fit")
    assert all(0.125 <= t.user_attrs["width"] < 1.0 for t in ts)  # the dashboard's column
    rows = json.loads(hps("status", "fit", "--storage", fit_run["url"], "--json").stdout)["trials"]
    assert [r["fitted_width"] for r in rows] == [t.user_attrs["width"] for t in ts]
    table = hps("status", "fit", "--storage", fit_run["url"]).stdout
    header = next(x for x in table.splitlines() if "state" in x)
    assert "width" in header and f"{ts[0].user_attrs['width']:.4g}" in table


@pytest.mark.slow
def test_plots_name_the_objective_and_load_plotly_once(fit_run: dict[str, Any], tmp_path: Path) -> None:
    out = hps("plot", "fit", "--storage", fit_run["url"], "-o", str(tmp_path / "plots"))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    html = sorted((tmp_path / "plots").glob("*.html"))
    assert [p.name for p in html] == ["history.html", "importance.html", "intermediate.html"]
    assert all(p.stat().st_size < 100_000 for p in html)  # not 4.8 MB each
    assert (tmp_path / "plots" / "plotly.min.js").stat().st_size > 1_000_000
    assert all('src="plotly.min.js"' in p.read_text() for p in html)
    for name in ("history", "intermediate"):
        text = (tmp_path / "plots" / f"{name}.html").read_text()
        assert '"text":"val_acc"' in text.replace(" ", "") and "Objective Value" not in text, name


@pytest.mark.slow
def test_measure_takes_a_space_and_measures_its_base_smallest_and_largest(fit_run: dict[str, Any]) -> None:
    out = hps("measure", str(fit_run["tmp"] / "fit.yaml"), "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["config"]: r for r in json.loads(out.stdout)}
    assert list(rows) == ["base", "smallest", "largest (width fitted)"]
    assert rows["smallest"]["width"] == 0.125 and rows["smallest"]["params"] < rows["base"]["params"]
    assert rows["largest (width fitted)"]["violations"] == [] and rows["largest (width fitted)"]["params"] <= 300_000
    assert 0.125 < rows["largest (width fitted)"]["width"] < 1.0
    table = hps("measure", str(fit_run["tmp"] / "fit.yaml")).stdout
    assert "smallest" in table and "largest (width fitted)" in table and "fits" in table


def test_a_resumed_trial_reports_its_restored_epochs_without_optuna_warning() -> None:
    import warnings

    from hps.search.quiet import quiet_optuna

    quiet_optuna()
    trial = optuna.create_study(direction="maximize").ask()
    with warnings.catch_warnings(record=True) as caught:
        trial.report(0.5, 1)
        trial.report(0.5, 1)  # a retry re-reports what its checkpoint restored
    assert [str(w.message) for w in caught] == []


@pytest.mark.slow
def test_a_ray_run_stopped_keeps_rays_noise_off_the_terminal(tmp_path: Path, study_name: str) -> None:
    """No token banner, no raylet "will be retried" lines with colour codes: the one line of hps."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    path = write_space(tmp_path, study_name, warm_start=[{"model.width": 0.25, "optimizer.lr": 0.05}])
    cmd = [str(Path(sys.executable).parent / "hps"), "run", str(path), "--storage", url, "--no-live", "--ray", "local",
           "--workers", "1", "--set", "fixed.train.epochs=500", "--set", "budget.max_epochs=500"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HPS_ARTIFACTS": str(tmp_path / "art")})
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.5)
        with contextlib.suppress(KeyError):
            if any(t.intermediate_values for t in trials(url, study_name)):
                break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 143, err
    assert "\x1b[" not in out + err and "retried" not in out + err and "Token" not in out + err, out + err
    assert err.strip().splitlines() == ["terminated (SIGTERM); rerun the same command to resume (finished trials are "
                                        "kept, the stopped one is owed)"]
