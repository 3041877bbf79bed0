"""Every trial's curves where users already look, and their own callbacks.

A callback is any object with either or both of:

- ``on_epoch(trial, epoch, metrics)``: after each epoch a trial reports (``trial``: the running
  ``optuna.Trial``; ``metrics``: the epoch's figures: ``val_acc`` / ``val_loss``, ``train_loss``,
  ``lr``, ``images_per_s``, ``epoch_seconds``, or what a ``train.fn`` reported);
- ``on_trial_end(trial, state, value)``: once the trial ends (``state``: ``"complete"``,
  ``"pruned"`` or ``"fail"``; ``value``: its value, or the reason it ended).

Callbacks run where the trial runs (this process, or a Ray worker: there they must pickle), and
one that raises is reported in one line and dropped for the rest of the trial; it never fails the
trial. ``hps run --log tensorboard:DIR`` and ``--log mlflow:URI`` add the two built in here, which
write one run per trial through the libraries' own writers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hps.search.errors import SettingsError


class TensorBoard:
    """One TensorBoard run per trial, ``DIR/<study>/trial-<number>`` (tensorboard's ``SummaryWriter``):
    every figure of every epoch as a scalar at step = epoch, the params as text."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self._writers: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "_writers": {}}

    def _writer(self, trial: Any) -> Any:
        if trial.number not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            w = SummaryWriter(log_dir=str(self.root / trial.study.study_name / f"trial-{trial.number}"))
            w.add_text("params", ", ".join(f"{k}={v}" for k, v in trial.params.items()) or "(none)", 0)
            self._writers[trial.number] = w
        return self._writers[trial.number]

    def on_epoch(self, trial: Any, epoch: int, metrics: dict[str, float]) -> None:
        w = self._writer(trial)
        for key, value in metrics.items():
            if key != "epoch":
                w.add_scalar(key, value, epoch)
        w.flush()

    def on_trial_end(self, trial: Any, state: str, value: Any) -> None:
        w = self._writers.pop(trial.number, None)
        if w is not None:
            w.add_text("outcome", f"{state}: {value}", 0)
            w.close()


class MLflow:
    """One MLflow run per trial in the experiment named as the study (MLflow's own client): params
    at the start, every figure per epoch (step = epoch), the outcome as the run's status and tags.
    A path or ``file:`` URI is MLflow's file store (``MLFLOW_ALLOW_FILE_STORE`` is set for it);
    ``sqlite:///mlflow.db`` or a tracking server's URL work as MLflow takes them."""

    def __init__(self, uri: str) -> None:
        self.uri = uri if "://" in uri or uri.startswith("file:") else Path(uri).expanduser().resolve().as_uri()
        self._runs: dict[int, str] = {}
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "_runs": {}, "_client": None}

    def _run(self, trial: Any) -> tuple[Any, str]:
        if self._client is None:
            if self.uri.startswith("file:"):
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the file store, asked for by name
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        c = self._client
        if trial.number not in self._runs:
            name = trial.study.study_name
            exp = c.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp is not None else c.create_experiment(name)
            run = c.create_run(exp_id, run_name=f"trial-{trial.number}", tags={"hps.trial": str(trial.number)})
            for key, value in trial.params.items():
                c.log_param(run.info.run_id, key, value)
            self._runs[trial.number] = run.info.run_id
        return c, self._runs[trial.number]

    def on_epoch(self, trial: Any, epoch: int, metrics: dict[str, float]) -> None:
        c, run_id = self._run(trial)
        for key, value in metrics.items():
            if key != "epoch":
                c.log_metric(run_id, key, value, step=epoch)

    def on_trial_end(self, trial: Any, state: str, value: Any) -> None:
        run_id = self._runs.pop(trial.number, None)
        if run_id is None:
            return
        self._client.set_tag(run_id, "hps.outcome", f"{state}: {value}"[:500])
        self._client.set_terminated(run_id, status={"complete": "FINISHED", "pruned": "KILLED"}.get(state, "FAILED"))


def from_spec(spec: str) -> Any:
    """``tensorboard:DIR`` or ``mlflow:URI`` (``--log``) to its logger; one line otherwise."""
    kind, sep, where = spec.partition(":")
    if not sep or not where or kind not in ("tensorboard", "mlflow"):
        raise SettingsError(f"--log {spec!r} is not allowed; use tensorboard:DIR or mlflow:URI "
                            "(a folder, file:..., sqlite:///mlflow.db or a tracking server)")
    try:
        __import__("torch.utils.tensorboard" if kind == "tensorboard" else "mlflow")
    except ImportError as e:
        package = "tensorboard" if kind == "tensorboard" else "mlflow-skinny"
        raise SettingsError(f"--log {spec}: {e}; install it with pip install {package}") from None
    return TensorBoard(where) if kind == "tensorboard" else MLflow(where)


class Callbacks:
    """The run's callbacks as the objective calls them: a callback that raises is said once, in one
    line, and dropped for the rest of that trial."""

    def __init__(self, callbacks: list[Any] | None = None) -> None:
        self.callbacks = list(callbacks or [])
        for cb in self.callbacks:
            if not (hasattr(cb, "on_epoch") or hasattr(cb, "on_trial_end")):
                raise SettingsError(f"callbacks: {cb!r} has neither on_epoch(trial, epoch, metrics) nor "
                                    "on_trial_end(trial, state, value)")
        self._broken: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def _call(self, method: str, *args: Any) -> None:
        for i, cb in enumerate(self.callbacks):
            fn = getattr(cb, method, None)
            if fn is None or i in self._broken:
                continue
            try:
                fn(*args)
            except Exception as e:
                self._broken.add(i)
                print(f"callback {type(cb).__name__}.{method} raised {type(e).__name__}: {str(e)[:200]}; "
                      "it is skipped for the rest of this trial", file=sys.stderr, flush=True)

    def epoch(self, trial: Any, epoch: int, metrics: dict[str, float]) -> None:
        self._call("on_epoch", trial, epoch, {k: float(v) for k, v in metrics.items()})

    def end(self, trial: Any, state: str, value: Any) -> None:
        self._call("on_trial_end", trial, state, value)
        self._broken.clear()
