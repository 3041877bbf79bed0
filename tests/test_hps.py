"""``import hps``: the public API, driven as a notebook user drives it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import hps
from hps.search.record import CONFIG, SPACE, study_attrs
from tests.conftest import REPO
from tests.search.conftest import PG_URL, SMALL
from tests.search.conftest import hps as hps_cli


def _space(name: str, **study: Any) -> dict[str, Any]:
    return {**SMALL, "study": {**SMALL["study"], "name": name, **study}}


def _records(url: str, name: str) -> list[tuple[Any, ...]]:
    """What a study stores that a rerun of the same space must reproduce."""
    trials = optuna.load_study(study_name=name, storage=url).trials
    return [(t.number, t.state, t.params, t.values, t.intermediate_values, t.user_attrs.get("prune_reason"),
             t.user_attrs.get("params"), t.system_attrs.get(CONFIG, {}).get("model")) for t in trials]


def test_import_hps_loads_no_torch_no_optuna_and_no_generic_names(tmp_path: Path) -> None:
    code = ("import sys, json, hps; heavy = [m for m in ('torch', 'optuna', 'ray') if m in sys.modules]; "
            "missing = [n for n in hps.__all__ if getattr(hps, n, None) is None]; "
            "print(json.dumps([heavy, missing, hps.__version__]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert json.loads(out.stdout) == [[], [], "0.1.0"]  # nothing heavy at import; every public name resolves
    for generic in ("search", "trainers"):  # the install adds hps alone to a user's environment
        gone = subprocess.run([sys.executable, "-c", f"import {generic}"], capture_output=True, text=True, cwd=tmp_path)
        assert gone.returncode == 1 and "ModuleNotFoundError" in gone.stderr


@pytest.mark.slow
def test_a_study_from_a_dict_gives_the_records_of_hps_run(tmp_path: Path) -> None:
    """The same space, once as a dict through hps.run and once as a YAML file through the command
    line: the same trials, params, values and stored figures (the trainer is deterministic on the CPU)."""
    url = f"sqlite:///{tmp_path / 'api.db'}"
    result = hps.run(_space("api"), url, progress="none")
    assert isinstance(result.study, optuna.Study) and result.study.study_name == "api"
    assert result.target == 5 and result.finished == 5 and sum(result.counts.values()) == 5
    assert result.counts.get("complete", 0) >= 1 and set(result.counts) <= {"complete", "pruned"}
    assert result.failures == [] and result.stopped == []
    best = result.best_trial
    assert best is not None and best.state == TrialState.COMPLETE and best.user_attrs["params"] <= 300_000
    assert best.number == max((t for t in result.study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value).number
    assert "5/5 finished" in str(result)

    path = tmp_path / "api.yaml"
    path.write_text(yaml.safe_dump(_space("api")))
    cli_url = f"sqlite:///{tmp_path / 'cli.db'}"
    out = hps_cli("run", str(path), "--storage", cli_url, "--no-live")
    assert out.returncode == 0, out.stderr
    assert _records(cli_url, "api") == _records(url, "api")

    exported = hps.export(result, tmp_path / "best.yaml")
    assert exported.number == best.number
    cfg = hps.config(tmp_path / "best.yaml")
    assert cfg.model.width == best.params["model.width"] and cfg.optimizer.lr == best.params["optimizer.lr"]
    assert hps.measure(tmp_path / "best.yaml").params == best.user_attrs["params"]


def test_run_raises_run_failed_with_the_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hps.search.objective as objective_module

    def broken(*args: Any) -> Any:
        raise RuntimeError("meter broke")

    monkeypatch.setattr(objective_module, "check", broken)
    with pytest.raises(hps.RunFailed, match="stopped after 3 failed trials in a row; first: trial 0: RuntimeError: meter broke") as e:
        hps.run(_space("fails", trials=6), f"sqlite:///{tmp_path / 'f.db'}", progress="none")
    result = e.value.result
    assert result.counts == {"fail": 3} and len(result.failures) == 3 and result.best_trial is None
    assert result.failures[0] == "trial 0: RuntimeError: meter broke"


def test_user_errors_come_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    with pytest.raises(hps.SpaceError, match=r"^<space dict>: study.trials: 'many' is not allowed; expected an integer$"):
        hps.run(_space("e"), url, overrides={"study.trials": "many"})
    with pytest.raises(hps.SpaceError, match=r"--set nope.x: 'nope' is not a space section; allowed: study, base"):
        hps.load_space(_space("e"), overrides={"nope.x": 1})
    monkeypatch.setenv("HPS_KEEP_WEIGHTS", "three")
    with pytest.raises(hps.SettingsError, match=r"^HPS_KEEP_WEIGHTS='three' is not allowed; expected a whole number >= 0$"):
        hps.run(_space("e"), url)
    assert not (tmp_path / "e.db").exists()  # nothing opened, nothing trained


@pytest.mark.slow
def test_train_and_measure_take_a_dict_with_overrides() -> None:
    cfg = {**SMALL["base"], "train": {**SMALL["base"]["train"], "epochs": 1}}
    m = hps.measure(cfg, {"model.width": 0.5})
    assert m.params == hps.measure({**cfg, "model": {"name": "airnet", "width": 0.5}}).params
    result = hps.train(cfg)
    assert len(result.history) == 1 and result.config.data.sha256 and 0.0 <= result.val_acc <= 1.0
    with pytest.raises(hps.ConfigError, match=r"train\.epochs: 0 is out of range"):
        hps.train(cfg, {"train.epochs": 0})


@pytest.fixture
def study_name() -> Iterator[str]:
    """A study of its own on the shared PostgreSQL, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=PG_URL)


@pytest.mark.slow
def test_a_study_from_python_on_postgres_through_ray(tmp_path: Path, study_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    import ray

    try:
        result = hps.run(_space(study_name, trials=4), PG_URL, ray="local", workers=2, progress="none")
    finally:
        ray.shutdown()
    assert result.finished >= 4 and result.failures == [] and result.best_trial is not None
    stored = study_attrs(optuna.load_study(study_name=study_name, storage=PG_URL))[SPACE]
    assert stored["study"]["name"] == study_name and stored["budget"]["max_params"] == 300_000
    workers = {t.system_attrs["hps:worker"]["pid"] for t in result.study.trials if "hps:worker" in t.system_attrs}
    assert workers  # trials ran in Ray workers, not in this process


def test_hps_version_and_python_dash_m(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "hps", "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("hps 0.1.0 (optuna 5.0")
    assert json.loads(subprocess.run([sys.executable, "-c", "import hps, json; print(json.dumps(hps.__all__))"],
                                     capture_output=True, text=True, cwd=REPO, check=True).stdout)
