"""The best feasible trial as a retrain YAML with a provenance block, and study plots.

Imports neither torch nor the trainer: the stored config is written as it was validated when
the trial ran (``hps export`` and ``hps plot`` start as fast as Optuna does)."""

from __future__ import annotations

import dataclasses
import datetime
import os
import statistics
import subprocess
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from hps.search.errors import StudyError
from hps.search.record import (
    BEST_EPOCH,
    BEST_VALUE,
    CONFIG,
    DATA,
    DEVICE_SECONDS,
    RECHECK_OF,
    SPACE,
    STORAGE_DTYPE,
    WEIGHTS,
    best_feasible,
    named_constraints,
    runs_of,
    score_note,
    search_trials,
    sign,
    stored_figures,
    study_attrs,
    trial_info,
)
from hps.search.storage import artifact_store, redact


def best_trial(study: optuna.Study, number: int | None = None) -> FrozenTrial:
    """The trial ``number``, or the best COMPLETE feasible one (multi-objective: the Pareto
    trial with the best first objective)."""
    if number is not None:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if not matches or matches[0].state != TrialState.COMPLETE or trial_info(matches[0], CONFIG) is None:
            raise StudyError(f"study {study.study_name!r}: trial {number} is not a complete hps trial")
        return matches[0]
    best = best_feasible(study)
    if best is None:
        raise StudyError(f"study {study.study_name!r} has no complete trial that meets its budget yet")
    return best


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance(study: optuna.Study, trial: FrozenTrial, storage: str) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for pkg in ("hps", "torch", "torchvision", "optuna"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    model = (trial_info(trial, CONFIG) or {}).get("model", {})
    own = {"model": {"name": model["name"], "sha256": model["sha256"]}} if model.get("sha256") else {}
    return {
        **own,
        "study": study.study_name, "trial": trial.number, "values": list(trial.values),
        "objectives": [d.name.lower() for d in study.directions], "params": trial.params,
        "budget_figures": stored_figures(trial), "constraints": named_constraints(trial),
        "data": trial_info(trial, DATA), "storage_dtype": trial_info(trial, STORAGE_DTYPE, "fp32"),
        "best_epoch": {"value": trial.user_attrs.get(BEST_VALUE), "epoch": trial.user_attrs.get(BEST_EPOCH)},
        "device_seconds": trial.user_attrs.get(DEVICE_SECONDS), "storage": redact(storage),
        **_recheck(study, trial),
        "versions": versions, "git_commit": _git_commit(),
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _recheck(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    """For a rechecked trial: its runs' values and mean, and the search's single best it was chosen over."""
    runs = runs_of(study).get(trial.number, [])
    if len(runs) < 2:
        return {}
    single = max(search_trials(study), key=lambda t: sign(study) * t.values[0])
    return {"recheck": {"values": runs, "mean": statistics.mean(runs), "search_best": {
        "trial": single.number, "value": single.values[0]}}}


def _weights_of(study: optuna.Study, trial: FrozenTrial) -> tuple[str | None, int]:
    """The trial's kept weights, else a recheck's (the same config, another seed), and whose they are."""
    if weights := trial_info(trial, WEIGHTS):
        return weights, trial.number
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.system_attrs.get(RECHECK_OF) == trial.number and trial_info(t, WEIGHTS):
            return trial_info(t, WEIGHTS), t.number
    return None, trial.number


def export(study: optuna.Study, out: Path, storage: str, *, number: int | None = None,
           artifact_dir: str | Path | None = None) -> FrozenTrial:
    """Write the trial's full trainer config plus ``provenance`` (which retrain ignores) and attach
    the file to the study as an optuna-dashboard artifact in ``artifact_dir`` (a folder or
    ``s3://``); the trial's kept weights, if any, are written beside it as ``<out>.pt``."""
    from optuna.artifacts import download_artifact, upload_artifact

    trial = best_trial(study, number)
    for target in (out, out.with_suffix(".pt")):  # written beside, then swapped in: only over a regular file
        if target.exists() and not target.is_file():
            kind = "a folder" if target.is_dir() else "not a regular file"
            raise StudyError(f"-o {out}: {target} is {kind}; name a file to write the export to")
    prov = provenance(study, trial, storage)
    store = artifact_store(artifact_dir) if artifact_dir is not None else None
    (weights, source), path = _weights_of(study, trial), out.with_suffix(".pt")
    written: dict[Path, Path] = {}  # final path -> its new version, written beside it
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if weights and store is not None:  # the trial's kept weights, beside the YAML
            part = _part(path)
            part.unlink(missing_ok=True)  # left by an export that was killed
            try:
                download_artifact(artifact_store=store, file_path=str(part), artifact_id=weights)
                written[path] = part
                prov["weights"] = {"file": path.name, "dtype": prov["storage_dtype"], "bytes": part.stat().st_size,
                                   **({"from_recheck": source} if source != trial.number else {})}
            except Exception as e:
                if isinstance(e, OSError):  # writing here failed
                    raise
                prov["weights"] = {"missing": f"{type(e).__name__}: {e}"}  # not in the store: the YAML still retrains
        config = dict(trial_info(trial, CONFIG))  # validated when the trial ran; retrain validates it again
        written[out] = _part(out)
        written[out].write_text(yaml.safe_dump({**config, "provenance": prov}, sort_keys=False,
                                               default_flow_style=None, width=100))
        for final, part in written.items():  # both written: swap them in
            os.replace(part, final)
    except OSError as e:
        for part in written.values():
            part.unlink(missing_ok=True)
        _part(path).unlink(missing_ok=True)
        raise StudyError(f"{out}: cannot write the export ({e.strerror or e}); the files there are unchanged") from None
    if store is not None and path not in written:  # an earlier export's weights would pass for this trial's
        path.unlink(missing_ok=True)
    if store is not None:
        upload_artifact(artifact_store=store, file_path=str(out), study_or_trial=study, mimetype="application/yaml")
    return trial


def _part(path: Path) -> Path:
    """Where a file's new version is written before it replaces the file (same folder: a rename)."""
    return path.with_name(f".{path.name}.part")


@dataclasses.dataclass
class Exported:
    """What :func:`hps.export` wrote: the trial, its retrain YAML and its weights (None if it kept
    none). ``number``, ``values`` and ``params`` are the trial's."""

    trial: FrozenTrial
    path: Path
    weights: Path | None
    earlier: int = 0  # trials of an earlier definition of the study, not compared
    runs: list[float] = dataclasses.field(default_factory=list)  # a rechecked trial's values: its own, its rechecks'

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def values(self) -> list[float]:
        return list(self.trial.values)

    @property
    def value(self) -> float:
        return float(self.trial.values[0])

    @property
    def params(self) -> dict[str, Any]:
        return self.trial.params

    def __str__(self) -> str:
        also = f" and {self.weights}" if self.weights else ""
        return f"wrote {self.path}{also}: trial {self.number}, {self._score()}"

    def _score(self) -> str:
        return score_note(self.values[0], self.runs)

    def __repr__(self) -> str:
        return f"<Exported trial {self.number} ({self._score()}) to {self.path}" + (
            f" + {self.weights.name}>" if self.weights else ">")


def objective_names(study: optuna.Study) -> list[str]:
    """The study's objectives by name (``val_acc``, ...), as its space named them."""
    names = (study_attrs(study).get(SPACE) or {}).get("objectives") or study.metric_names
    return list(names) if names else [f"objective {i}" for i in range(len(study.directions))]


def plot(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Optimisation history, parameter importance, intermediate values and (multi-objective) the
    Pareto front, each as HTML (plotly, loading the one ``plotly.min.js`` written beside them) and
    PNG (matplotlib); axes name the objective. Plots that need more trials than the study has are
    skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna import visualization as vis
    from optuna.visualization import matplotlib as vmpl

    if out_dir.exists() and not out_dir.is_dir():
        raise StudyError(f"-o {out_dir}: is a file; give a folder for the plots")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = objective_names(study)
    multi = len(study.directions) > 1
    kw: dict[str, Any] = {"target": lambda t: t.values[0], "target_name": names[0]} if multi else {"target_name": names[0]}
    plots: dict[str, tuple[Any, Any, dict[str, Any]]] = {
        "history": (vis.plot_optimization_history, vmpl.plot_optimization_history, kw),
        "importance": (vis.plot_param_importances, vmpl.plot_param_importances, kw),
        "intermediate": (vis.plot_intermediate_values, vmpl.plot_intermediate_values, {}),
    }
    if multi:
        plots["pareto"] = (vis.plot_pareto_front, vmpl.plot_pareto_front, {"target_names": names[:2]})
    written = []
    for name, (html_fn, png_fn, args) in plots.items():
        try:
            with warnings.catch_warnings():  # "too few trials to compute importances": the plot says so
                warnings.simplefilter("ignore", UserWarning)
                fig = html_fn(study, **args)
                ax = png_fn(study, **args)
        except (ValueError, RuntimeError) as e:  # too few trials for this plot
            (out_dir / f"{name}.skipped.txt").write_text(f"{e}\n")
            continue
        if name == "intermediate":
            fig.update_yaxes(title_text=names[0])
            (ax if hasattr(ax, "set_ylabel") else ax.flat[0]).set_ylabel(names[0])
        fig.write_html(out_dir / f"{name}.html", include_plotlyjs="directory")  # plotly.min.js, once
        png = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        png.savefig(out_dir / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(png)
        written += [out_dir / f"{name}.html", out_dir / f"{name}.png"]
    return written
