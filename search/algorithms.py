"""Samplers and pruners by name, with hps's defaults, built and checked the same way everywhere.

A space file names an Optuna class and keyword arguments. :func:`check_args` refuses, before any
trial runs, an argument the class does not take, one a YAML file cannot express (a callable), or a
value of the wrong type; :func:`rehearse` then drives the sampler and pruner through a few trials
of the real search space on an in-memory study, so an argument that Optuna rejects only when it is
used (``reduction_factor: 1``) fails at load as one line too.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

SAMPLERS = ("tpe", "random", "cmaes", "nsga2", "gp")
PRUNERS = ("asha", "hyperband", "median", "none")
PACKAGES = {"cmaes": "cmaes", "gp": "scipy"}  # what a sampler imports only once it samples (hps installs both)
MANAGED_ARGS = ("seed", "constraints_func")  # hps sets these itself
MAX_ARG = 100_000  # no sampler or pruner count needs more; larger ones make some hang
REHEARSAL_SECONDS = 20


def sampler_class(name: str) -> Any:
    import optuna

    return {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "cmaes": optuna.samplers.CmaEsSampler, "nsga2": optuna.samplers.NSGAIISampler,
            "gp": optuna.samplers.GPSampler}[name]


def pruner_class(name: str) -> Any:
    import optuna

    return {"asha": optuna.pruners.SuccessiveHalvingPruner, "hyperband": optuna.pruners.HyperbandPruner,
            "median": optuna.pruners.MedianPruner, "none": optuna.pruners.NopPruner}[name]


def sampler_args(name: str, args: Mapping[str, Any], trials: int) -> dict[str, Any]:
    """The space's arguments with hps's defaults: TPE learns jointly and does not hand two
    workers one point."""
    out = dict(args)
    if name == "tpe":
        out.setdefault("multivariate", True)
        out.setdefault("constant_liar", True)
        out.setdefault("n_startup_trials", min(10, max(3, trials // 4)))
    return out


def pruner_args(name: str, args: Mapping[str, Any], epochs: int) -> dict[str, Any]:
    """The space's arguments with hps's defaults. ASHA's first rung comes at a quarter of the
    epochs (an epoch-1 score ranks configs poorly) and each rung keeps half: on 205 recorded
    curves this beat rungs at 1, 3, 9 keeping a third at every compute level (BENCHMARKS.md,
    "Searches replayed on recorded curves")."""
    out = dict(args)
    if name == "asha":
        out.setdefault("min_resource", max(1, epochs // 4))
        out.setdefault("reduction_factor", 2)
    if name == "hyperband":
        out.setdefault("max_resource", epochs)
    return out


def build_sampler(name: str, args: Mapping[str, Any], trials: int, seed: int) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning of some samplers' options
        return sampler_class(name)(seed=seed, **sampler_args(name, args, trials))


class TrialSeeded:
    """The space's sampler, built afresh for each trial with the seed ``seed + trial number``.
    Trial numbers are unique within a study, so workers, and separate ``hps run`` processes
    sharing a study, never draw the same random points (one seed per process would make two runs
    started together draw alike), while a study grown from the same state draws the same points
    again. Optuna's samplers keep their state in the study (CMA-ES, NSGA-II) or hold none beyond
    caches, so a fresh one per trial samples as the long-lived one would."""

    def __init__(self, name: str, args: Mapping[str, Any], trials: int, seed: int) -> None:
        self.name, self.args, self.trials, self.seed = name, dict(args), trials, seed
        self.sampler = build_sampler(name, args, trials, seed)

    def __str__(self) -> str:
        return str(self.sampler)

    def before_trial(self, study: Any, trial: Any) -> None:
        self.sampler = build_sampler(self.name, self.args, self.trials, self.seed + trial.number)
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


def build_pruner(name: str, args: Mapping[str, Any], epochs: int) -> Any:
    return pruner_class(name)(**pruner_args(name, args, epochs))


_TYPES: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "None": lambda v: v is None,
    "dict": lambda v: isinstance(v, Mapping),
    "list": lambda v: isinstance(v, list),
}


def _accepted(annotation: Any) -> list[str]:
    """The YAML-expressible types in an annotation like ``'int | None'`` or ``'str | int'``."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    kinds = []
    for part in text.split("|"):
        head = part.strip().split("[")[0]
        if head in _TYPES:
            kinds.append(head)
        elif head:
            return []  # a callable or an object: not for a YAML file
    return kinds


def check_args(cls: Any, args: Mapping[str, Any], label: str) -> None:
    """Raise ValueError (one line) for an argument ``cls`` does not take, or of the wrong type."""
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
              if n != "self" and n not in MANAGED_ARGS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    settable = {n: _accepted(p.annotation) for n, p in params.items()}
    names = ", ".join(n for n, k in settable.items() if k) or "none"
    for key, value in args.items():
        if key in MANAGED_ARGS:
            raise ValueError(f"{label}: {key} is set by hps (from study.seed and the budget); remove it")
        kinds = settable.get(key)
        if not kinds:
            raise ValueError(f"{label} has no argument {key!r} that a space file can set; allowed: {names}")
        shown = repr(value) if isinstance(value, str) else str(value)
        if not any(_TYPES[k](value) for k in kinds):
            raise ValueError(f"{label}.{key}: {shown} is not allowed; expected {' or '.join(kinds)}")
        if _TYPES["float"](value) and abs(value) > MAX_ARG:  # 3 ** 1e9 rungs would hang the pruner
            raise ValueError(f"{label}.{key}: {shown} is out of range; allowed -{MAX_ARG:,} to {MAX_ARG:,}")


class RehearsalTimeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """Raise RehearsalTimeout after ``seconds`` (main thread only; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(*_: Any) -> None:
        raise RehearsalTimeout(f"did not finish 4 rehearsal trials in {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def rehearse(directions: list[str], suggest: Callable[[Any], object], sampler: Any, pruner: Any) -> None:
    """A few asks, suggestions, reports and tells on an in-memory study: raises what the sampler
    or pruner raises when used, as ``('sampler' | 'pruner', exception)`` in a RuntimeError."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings(), _time_limit(REHEARSAL_SECONDS):
        warnings.simplefilter("ignore")
        study = optuna.create_study(directions=directions, sampler=sampler, pruner=pruner)  # type: ignore[arg-type]
        for i in range(4):
            try:
                trial = study.ask()
                suggest(trial)
            except Exception as e:
                raise RuntimeError("sampler", e) from e
            if len(directions) == 1:
                try:
                    for step in (1, 2):
                        trial.report(0.1 * (i + step), step)
                        if trial.should_prune():
                            break
                except Exception as e:
                    raise RuntimeError("pruner", e) from e
            values = [0.1 * i] * len(directions)
            try:
                study.tell(trial, values if len(values) > 1 else values[0])
            except Exception as e:
                raise RuntimeError("sampler", e) from e
