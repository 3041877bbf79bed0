"""Every trial's curves where users look: TensorBoard event files and an MLflow store, read back
with the libraries' own readers, hold every epoch of every trial; the user's own callbacks see the
same; the results come back as a DataFrame."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

import hps
from hps.search.errors import SettingsError
from hps.search.record import HISTORY
from tests.search.conftest import write_space


class Seen:
    def __init__(self) -> None:
        self.epochs: list[tuple[int, int, dict[str, float]]] = []
        self.ends: list[tuple[int, str]] = []

    def on_epoch(self, trial: Any, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs.append((trial.number, epoch, metrics))

    def on_trial_end(self, trial: Any, state: str, value: Any) -> None:
        self.ends.append((trial.number, state))


class Broken:
    def on_epoch(self, trial: Any, epoch: int, metrics: dict[str, float]) -> None:
        raise RuntimeError("my logger is broken")


@pytest.mark.slow
def test_tensorboard_mlflow_and_callbacks_hold_every_epoch_of_every_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("HPS_ARTIFACTS", str(tmp_path / "artifacts"))
    space = hps.load_space(write_space(tmp_path, "logged", study__trials=4))
    seen = Seen()
    result = hps.run(space, f"sqlite:///{tmp_path / 'hps.db'}", progress="none", callbacks=[seen, Broken()],
                     log=[f"tensorboard:{tmp_path / 'tb'}", f"mlflow:{tmp_path / 'mlruns'}"])
    trained = [t for t in result.study.trials if t.intermediate_values]
    assert len(trained) >= 2
    assert "callback Broken.on_epoch raised RuntimeError: my logger is broken" in capsys.readouterr().err
    assert all(t.state != TrialState.FAIL for t in result.study.trials)  # a broken callback fails no trial

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    exp = client.get_experiment_by_name("logged")
    runs = {r.data.tags["hps.trial"]: r for r in client.search_runs([exp.experiment_id])}
    for t in trained:
        epochs = sorted(t.intermediate_values)
        history = t.system_attrs[HISTORY]
        assert [h["epoch"] for h in history] == epochs
        assert {"val_acc", "val_loss", "train_loss", "lr", "images_per_s"} <= set(history[-1])
        acc = EventAccumulator(str(tmp_path / "tb" / "logged" / f"trial-{t.number}"))
        acc.Reload()
        assert [e.step for e in acc.Scalars("val_acc")] == epochs
        assert [e.value for e in acc.Scalars("val_acc")] == pytest.approx([t.intermediate_values[e] for e in epochs])
        assert {"train_loss", "lr", "images_per_s", "val_loss"} <= set(acc.Tags()["scalars"])
        run = runs[str(t.number)]
        metric = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in metric] == epochs
        assert run.data.params.keys() == t.params.keys()
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[t.state.name]
        assert [e for n, e, _ in seen.epochs if n == t.number] == epochs
    assert sorted(n for n, _ in seen.ends) == [t.number for t in result.study.trials]

    frame = result.dataframe()
    assert list(frame.index) == [t.number for t in result.study.trials]
    assert {"state", "value", "params.model.width", "params.optimizer.lr", "width", "params", "device_seconds",
            "cause", "reason"} <= set(frame.columns)
    over = frame[frame["cause"] == "over:max_params"]
    assert len(over) >= 1 and over["reason"].str.startswith("over budget: params").all()


@pytest.mark.parametrize(("spec", "message"), [
    ("wandb:proj", "--log 'wandb:proj' is not allowed; use tensorboard:DIR or mlflow:URI"),
    ("tensorboard", "--log 'tensorboard' is not allowed"),
    ("mlflow:", "--log 'mlflow:' is not allowed"),
])
def test_a_bad_log_spec_is_one_line_before_anything_runs(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        hps.run(write_space(tmp_path, "bad_log"), f"sqlite:///{tmp_path / 'hps.db'}", progress="none", log=[spec])
    assert not (tmp_path / "hps.db").exists()


def test_a_callback_without_either_method_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"has neither on_epoch\(trial, epoch, metrics\) nor on_trial_end"):
        hps.run(write_space(tmp_path, "bad_cb"), f"sqlite:///{tmp_path / 'hps.db'}", progress="none", callbacks=[print])


@pytest.mark.slow
def test_the_command_line_logs_to_tensorboard_and_status_writes_csv(tmp_path: Path) -> None:
    import io

    import pandas as pd

    from tests.search.conftest import hps as hps_cli

    url = f"sqlite:///{tmp_path / 'hps.db'}"
    env = {"HPS_ARTIFACTS": str(tmp_path / "artifacts")}
    ran = hps_cli("run", str(write_space(tmp_path, "cli_log", study__trials=3)), "--storage", url, "--no-live",
                  "--log", f"tensorboard:{tmp_path / 'tb'}", env=env)
    assert ran.returncode == 0, ran.stderr[-2000:]
    status = hps_cli("status", "cli_log", "--storage", url, "--csv", env=env)
    assert status.returncode == 0, status.stderr
    frame = pd.read_csv(io.StringIO(status.stdout), index_col="number")
    assert len(frame) >= 3 and {"state", "value", "params.optimizer.lr", "cause", "device_seconds"} <= set(frame.columns)
    trained = frame[frame["epochs"] > 0].index
    assert sorted(int(p.name.split("-")[1]) for p in (tmp_path / "tb" / "cli_log").iterdir()) == sorted(trained)
