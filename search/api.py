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

    from hps.search.export import Exported
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


def open_study(name: str, storage: str | None = None) -> tuple[optuna.Study, str]:
    """An existing study, for commands that only read: never creates a database (a missing SQLite
    or journal file is one line naming it); a missing study's error names the storage URL."""
    from hps.search.storage import existing_storage, redact, storage_url
    from hps.search.study import load_study

    url = storage_url(storage)
    return load_study(name, existing_storage(url), redact(url)), url


def _study(study: optuna.Study | RunResult | str, storage: str | None) -> tuple[optuna.Study, str]:
    import sys

    import optuna

    run = sys.modules.get("hps.search.run")  # a RunResult exists only once the driver is loaded (torch)
    if run is not None and isinstance(study, run.RunResult):
        return study.study, study.storage
    if isinstance(study, optuna.Study):
        return study, storage or "<study>"
    if isinstance(study, str):
        return open_study(study, storage)
    raise StudyError(f"expected a study name, an optuna.Study or a RunResult, got {type(study).__name__}")


def best_trial(study: optuna.Study | RunResult | str, storage: str | None = None) -> FrozenTrial:
    """The best COMPLETE trial that meets the budget; :class:`StudyError` if there is none yet."""
    from hps.search.export import best_trial as best

    return best(_study(study, storage)[0])


def export(study: optuna.Study | RunResult | str, out: str | Path = "best.yaml", *, trial: int | None = None,
           storage: str | None = None, artifacts: str | None = None) -> Exported:
    """Write the best feasible trial (or trial number ``trial``) as a retrain YAML with a
    ``provenance`` block, and its kept weights beside it as ``<out>.pt``. Returns what was written
    (:class:`Exported`: ``.trial``, ``.path``, ``.weights``; ``.number``, ``.values`` and ``.params``
    are the trial's)."""
    from hps.search.export import Exported
    from hps.search.export import export as run_export
    from hps.search.record import current, runs_of
    from hps.search.storage import artifact_root

    st, url = _study(study, storage)
    t = run_export(st, Path(out), url, number=trial, artifact_dir=artifact_root(artifacts))
    weights = Path(out).with_suffix(".pt")
    same = current(st)
    earlier = 0 if trial is not None else sum(not same(x) for x in st.get_trials(deepcopy=False))
    return Exported(t, Path(out), weights if weights.exists() and "weights" in _provenance(out) else None, earlier,
                    runs_of(st).get(t.number, []))


def _provenance(out: str | Path) -> dict[str, Any]:
    import yaml

    return (yaml.safe_load(Path(out).read_text()) or {}).get("provenance", {}).get("weights") or {}


def studies(storage: str | None = None) -> list[dict[str, Any]]:
    """Every study in the storage: name, trial count, directions, best value, why its last run
    stopped early. Never creates a database."""
    import optuna

    from hps.search.optuna_compat import study_id
    from hps.search.record import stop_reasons
    from hps.search.storage import dispose, existing_storage

    store = existing_storage(storage)
    try:
        return [{"study": s.study_name, "trials": s.n_trials, "directions": [d.name.lower() for d in s.directions],
                 "best_value": s.best_trial.values[0] if s.best_trial and s.best_trial.values else None,
                 "stopped": stop_reasons(store.get_study_system_attrs(study_id(s)))}
                for s in optuna.get_all_study_summaries(store)]
    finally:
        dispose(store)


def measure_space(space: str | Path | Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """A space's base config and its smallest and largest configs (with ``type: fit``, the width
    fitted to the budget), each measured and checked against the budget, without training."""
    from hps.search.budget import check, fit_width
    from hps.search.space import _smallest_candidates, load_space
    from hps.trainers import with_overrides

    sp = load_space(space, overrides)
    fit = sp.spec.space.get("model.width")
    rows = []
    for label, pick in (("base", None), ("smallest", min), ("largest", max)):
        cands = [sp.base] if pick is None else [with_overrides(sp.base, o, sp.source)
                                                for o in _smallest_candidates(sp.spec, sp.base, pick)]
        checked = [(cfg, check(cfg, sp.budget)) for cfg in cands]
        cfg, result = (pick or min)(checked, key=lambda r: r[1].figures["params"])
        if label == "largest" and fit is not None and fit.kind == "fit" and not result.feasible:
            assert fit.low is not None and fit.high is not None
            width = fit_width(cfg, sp.budget, fit.low, fit.high)
            if width is not None:
                cfg = with_overrides(cfg, {"model.width": width}, sp.source)
                label, result = "largest (width fitted)", check(cfg, sp.budget)
        rows.append({"config": label, "model": cfg.model.name, "width": cfg.model.width, "depth": cfg.model.depth,
                     "image_size": cfg.data.image_size, **result.figures, "violations": result.violations})
    return rows


def evaluate(config: str | Path, weights: str | Path, *, test: bool = False,
             allow_model_change: bool = False) -> dict[str, float]:
    """Score a weights file (a state dict: ``hps export``'s .pt, retrain's model.pt) on the
    validation (and test) split of ``config``, without training."""
    import pickle
    import zipfile

    import torch

    from hps.trainers import load_config
    from hps.trainers.loop import score

    cfg = load_config(config)
    if allow_model_change:
        cfg = cfg.replace("model", sha256=None)
    if not Path(weights).is_file():
        raise StudyError(f"--weights {weights}: no such file")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as e:
        raise StudyError(f"{weights}: not a weights file torch can read ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise StudyError(f"{weights}: holds a {type(state).__name__}, not a state dict (hps export's .pt, retrain's model.pt)")
    return score(cfg, state, test=test)


def plot(study: optuna.Study | RunResult | str, out: str | Path = "plots", *, storage: str | None = None) -> list[Path]:
    """Optimisation history, parameter importance, intermediate values (and the Pareto front), as
    HTML (one plotly.min.js beside them) and PNG in ``out``; the axis names the objective."""
    from hps.search.export import plot as run_plot

    return run_plot(_study(study, storage)[0], Path(out))
