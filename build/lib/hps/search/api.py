"""The functions ``import hps`` offers beside :func:`hps.run` and :func:`hps.load_space`: a config
(a file, a dict or a :class:`TrainConfig`, with dotted overrides) to a model measured or trained,
and a study's best trial to a retrain YAML."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hps.search.errors import StudyError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hps.search.run import RunResult
    from hps.trainers import Measurement, TrainConfig, TrainResult


def config(source: TrainConfig | str | Path | Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """A validated trainer config from a retrain YAML, a dict or a config, with dotted overrides
    (``{"optimizer.lr": 0.05}``); errors are one-line :class:`ConfigError`."""
    from hps.trainers import TrainConfig, config_from_dict, load_config, with_overrides
    from hps.trainers.config import resolve_paths

    if isinstance(source, TrainConfig):
        cfg, label = source, "<config>"
    elif isinstance(source, Mapping):
        cfg, label = resolve_paths(config_from_dict(source, "<config dict>"), Path.cwd()), "<config dict>"
    else:
        cfg, label = load_config(source), str(source)
    return with_overrides(cfg, overrides, f"{label}: --set") if overrides else cfg


def measure(source: TrainConfig | str | Path | Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Measurement:
    """Params, file bytes per storage dtype, MACs/FLOPs and training memory, without training."""
    from hps.trainers import measure as run_measure

    return run_measure(config(source, overrides))


def train(source: TrainConfig | str | Path | Mapping[str, Any], overrides: Mapping[str, Any] | None = None, *,
          report: Any = None, test: bool = False) -> TrainResult:
    """Train a config from scratch with the one trainer; ``report(epoch, metrics)`` after each epoch.
    The result carries its config (data path and sha256 pinned), history and model."""
    from hps.trainers import train as run_train

    return run_train(config(source, overrides), report, test=test)


def _study(study: optuna.Study | RunResult | str, storage: str | None) -> tuple[optuna.Study, str]:
    import sys

    import optuna

    from hps.search.storage import get_storage, storage_url
    from hps.search.study import load_study

    run = sys.modules.get("hps.search.run")  # a RunResult exists only once the driver is loaded (torch)
    if run is not None and isinstance(study, run.RunResult):
        return study.study, study.storage
    if isinstance(study, optuna.Study):
        return study, storage or "<study>"
    if isinstance(study, str):
        return load_study(study, get_storage(storage, heartbeat=False)), storage_url(storage)
    raise StudyError(f"expected a study name, an optuna.Study or a RunResult, got {type(study).__name__}")


def best_trial(study: optuna.Study | RunResult | str, storage: str | None = None) -> FrozenTrial:
    """The best COMPLETE trial that meets the budget; :class:`StudyError` if there is none yet."""
    from hps.search.export import best_trial as best

    return best(_study(study, storage)[0])


def export(study: optuna.Study | RunResult | str, out: str | Path = "best.yaml", *, trial: int | None = None,
           storage: str | None = None, artifacts: str | None = None) -> FrozenTrial:
    """Write the best feasible trial (or trial number ``trial``) as a retrain YAML with a
    ``provenance`` block, and its kept weights beside it as ``<out>.pt``. Returns the trial."""
    from hps.search.export import export as run_export
    from hps.search.storage import artifact_root

    st, url = _study(study, storage)
    return run_export(st, Path(out), url, number=trial, artifact_dir=artifact_root(artifacts))
