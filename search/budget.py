"""The budget, every rule of it in one place.

- Static limits (:data:`LIMITS`): measured by the trainer's meter before anything trains
  (:func:`check`). Each becomes an Optuna constraint ``measured - limit`` (<= 0 is feasible) and,
  when broken, a human reason such as ``params 7.1M > max_params 5M``; :func:`note` writes them as
  the trial's dashboard note, :func:`columns` picks the figures shown as dashboard columns.
- The space's smallest config (:func:`check_smallest`) and a fitted width (:func:`fit_width`,
  :func:`check_fit`).
- Per-epoch limits (:class:`EpochLimits`): ``max_trial_seconds`` and ``max_gpu_memory_mb``,
  checked after each epoch as an Optuna pruner is asked; breaking one raises :class:`OverBudget`.
- The study's compute (:class:`StudyBudget`): ``max_device_hours`` over every trial's device-seconds.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import optuna
import torch
from optuna.trial import FrozenTrial
from pydantic import Field, model_validator

from hps.search.errors import SpaceError
from hps.search.record import DEVICE_SECONDS, RECHECK_OF, STOPPED, human, rechecks_due, set_study_attr
from hps.trainers import Measurement, TrainConfig, measure, with_overrides
from hps.trainers.validation import OptInteger, OptNumber, Strict, Text, one_of

# budget limit -> (the figure it limits, its human label): the static limits the meter checks
LIMITS = {"max_params": ("params", "params"), "max_model_bytes": ("model_bytes", "model bytes"),
          "max_macs": ("macs", "MACs"), "max_flops": ("flops", "FLOPs"), "max_epochs": ("epochs", "epochs")}


class Budget(Strict):
    """A space file's ``budget:`` section. Every limit is optional."""

    max_params: OptInteger = Field(None, gt=0)
    max_model_bytes: OptInteger = Field(None, gt=0)
    storage_dtype: Annotated[Text, one_of(("fp32", "fp16", "bf16", "int8"))] = "fp32"
    max_macs: OptInteger = Field(None, gt=0)
    max_flops: OptInteger = Field(None, gt=0)
    max_epochs: OptInteger = Field(None, ge=1)
    max_trial_seconds: OptNumber = Field(None, gt=0)
    max_gpu_memory_mb: OptNumber = Field(None, gt=0)
    max_device_hours: OptNumber = Field(None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> Budget:
        if self.max_macs is not None and self.max_flops is not None and self.max_flops != 2 * self.max_macs:
            raise ValueError(f"max_macs {self.max_macs} and max_flops {self.max_flops} disagree "
                             "(FLOPs = 2 x MACs); give one of them")
        return self


def over(measured: float, limit: float) -> tuple[str, str]:
    """Both figures in short form, with as many digits as it takes to tell them apart
    (400,490 vs 400,000: '400.49k' and '400k', never '400k > 400k')."""
    for digits in range(3, 16):
        a, b = human(measured, digits), human(limit, digits)
        if a != b:
            return a, b
    return f"{measured:,}", f"{limit:,}"


@dataclass(frozen=True)
class Check:
    figures: dict[str, float]  # params, model_bytes (at the storage dtype), macs, flops, epochs
    constraints: dict[str, float]  # budget key -> measured - limit
    violations: list[str]  # one human line per broken limit

    @property
    def feasible(self) -> bool:
        return not self.violations

    @property
    def excess(self) -> float:
        """The largest ``(measured - limit) / limit`` over the limits: <= 0 fits the budget."""
        return max(v / (fig - v) if fig - v else 0.0 for v, fig in
                   ((self.constraints[k], self.figures[LIMITS[k][0]]) for k in self.constraints))




def figures(cfg: TrainConfig, budget: Budget, m: Measurement | None = None) -> dict[str, float]:
    m = m or measure(cfg, dtypes=(budget.storage_dtype,))
    return {"params": m.params, "model_bytes": m.model_bytes[budget.storage_dtype], "macs": m.macs,
            "flops": m.flops, "epochs": cfg.train.epochs, "train_memory_mb": m.train_memory_mb}


def check(cfg: TrainConfig, budget: Budget) -> Check:
    """Measure ``cfg`` (no training) and compare it with every static limit of ``budget``."""
    figs = figures(cfg, budget)
    constraints, violations = {}, []
    for key, (fig, label) in LIMITS.items():
        limit = getattr(budget, key)
        if limit is None:
            continue
        constraints[key] = float(figs[fig] - limit)
        if figs[fig] > limit:
            dtype = f" at {budget.storage_dtype}" if fig == "model_bytes" else ""
            shown, cap = over(figs[fig], limit)
            violations.append(f"{label}{dtype} {shown} > {key} {cap}")
    return Check(figs, constraints, violations)


def fit_width(cfg: TrainConfig, budget: Budget, low: float, high: float, steps: int = 14) -> float | None:
    """The largest ``model.width`` in [low, high] whose config meets the budget (bisection with the
    meter; size grows with width). None if even ``low`` breaks it."""

    def ok(w: float) -> bool:
        return check(with_overrides(cfg, {"model.width": w}), budget).feasible

    if ok(high):
        return high
    if not ok(low):
        return None
    lo, hi = low, high
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return round(lo, 4) if ok(round(lo, 4)) else lo


def check_fit(base: TrainConfig, budget: Budget, low: float, high: float, source: str) -> None:
    """``type: fit`` (:func:`fit_width` bisects the width) needs a model whose size grows with width."""
    small, large = (measure(with_overrides(base, {"model.width": w}), dtypes=(budget.storage_dtype,)) for w in (low, high))
    if small.params >= large.params and small.macs >= large.macs:
        raise SpaceError(f"{source}: space.model.width: type 'fit' needs a model whose size grows with width, but "
                         f"{base.model.name} has {small.params:,} params at width {low:g} and {large.params:,} at "
                         f"{high:g}; search the width as a range, or make the builder use it")


def check_smallest(base: TrainConfig, budget: Budget, candidates: Sequence[Mapping[str, Any]], source: str) -> None:
    """Refuse a space in which even the smallest config breaks a static budget limit.
    ``candidates``: overrides of ``base`` that give the space's smallest configs (one per model
    family it can pick); the space is feasible if any of them is."""
    if all(getattr(budget, k) is None for k in LIMITS):
        return
    results = []
    for overrides in candidates:
        cfg = with_overrides(base, overrides, source)
        result = check(cfg, budget)
        if result.feasible:
            return
        results.append((cfg, result))
    cfg, result = min(results, key=lambda r: sum(max(v, 0) / abs(getattr(budget, k)) for k, v in r[1].constraints.items()))
    px = f", {cfg.data.image_size} px" if cfg.data.image_size not in (None, 32) else ""
    name = f" ({cfg.model.name} at width {cfg.model.width:g}, depth {cfg.model.depth:g}{px})"
    raise SpaceError(f"{source}: budget: smallest config{name} has {result.violations[0]}; "
                     "raise the budget or lower the space's minimum")


def columns(budget: Budget) -> list[str]:
    """The budget figures a study shows as dashboard columns: params, and each size figure its budget
    limits (epochs are fixed, or a searched param with a column of its own; every figure is in hps:budget)."""
    return ["params", *(fig for key, (fig, _) in LIMITS.items()
                        if getattr(budget, key) is not None and fig not in ("params", "epochs"))]


def note(screen: Check, budget: Budget) -> str:
    """The trial's budget as its optuna-dashboard note (shown on the trial's page): each limit
    beside the measured figure, then the figures no limit names. The table stays narrow."""
    rows = []
    for key, (fig, _) in LIMITS.items():
        limit = getattr(budget, key)
        if limit is None:
            continue
        shown, cap = over(screen.figures[fig], limit)
        rows.append(f"| {key} | {cap} | {shown} | {'fits' if screen.figures[fig] <= limit else '**over**'} |")
    for key in ("max_trial_seconds", "max_gpu_memory_mb"):
        if getattr(budget, key) is not None:
            rows.append(f"| {key} | {getattr(budget, key):g} | checked every epoch | |")
    limited = {fig for key, (fig, _) in LIMITS.items() if getattr(budget, key) is not None}
    for fig, value in screen.figures.items():  # the figures no limit names: measured all the same
        if fig not in limited:
            rows.append(f"| ({fig}) | - | {human(value)} | |")
    return (f"**Budget** (model bytes at {budget.storage_dtype})\n\n| limit | value | this trial | |\n"
            "|---|---|---|---|\n" + "\n".join(rows))


class OverBudget(optuna.TrialPruned):
    """A per-epoch limit reached during training; ``cause`` names it (``over:max_trial_seconds``)."""

    def __init__(self, cause: str, text: str) -> None:
        super().__init__(text)
        self.cause = cause


class EpochLimits:
    """The budget's per-epoch limits for one trial, asked after each epoch as an Optuna pruner is:
    :meth:`check` raises :class:`OverBudget` once the trial has run longer than ``max_trial_seconds``
    (since this object was made: the trial's start), or its peak GPU memory (on CUDA only) passed
    ``max_gpu_memory_mb``."""

    def __init__(self, max_trial_seconds: float | None = None, max_gpu_memory_mb: float | None = None, *,
                 cuda: bool = False) -> None:
        for name, value in (("max_trial_seconds", max_trial_seconds), ("max_gpu_memory_mb", max_gpu_memory_mb)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} must be a number > 0 or None, got {value!r}")
        self.max_seconds, self.max_memory_mb, self.cuda = max_trial_seconds, max_gpu_memory_mb, cuda
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()

    @classmethod
    def of(cls, budget: Budget, cuda: bool) -> EpochLimits:
        return cls(budget.max_trial_seconds, budget.max_gpu_memory_mb, cuda=cuda)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def check(self, epoch: int) -> None:
        elapsed = self.elapsed()
        if self.max_seconds is not None and elapsed > self.max_seconds:
            raise OverBudget("over:max_trial_seconds",
                             f"ran {elapsed:.0f} s > max_trial_seconds {self.max_seconds:g} at epoch {epoch}")
        if self.max_memory_mb is not None and self.cuda:
            used = torch.cuda.max_memory_allocated() / 2**20
            if used > self.max_memory_mb:
                raise OverBudget("over:max_gpu_memory_mb",
                                 f"GPU memory {used:.0f} MiB > max_gpu_memory_mb {self.max_memory_mb:g}")


def device_seconds(study: optuna.Study) -> float:
    """The study's compute spent: every trial's training wall time."""
    return _seconds(study.get_trials(deepcopy=False))


def _seconds(trials: Sequence[FrozenTrial]) -> float:
    return sum(float(t.user_attrs.get(DEVICE_SECONDS, 0.0)) for t in trials)


BUDGET_SPENT = "compute budget spent"  # the start of the stop reason StudyBudget stores


def _typical(trials: Sequence[FrozenTrial]) -> float | None:
    """The median device-seconds of the complete trials (None before one completes)."""
    full = [float(t.user_attrs[DEVICE_SECONDS]) for t in trials
            if t.state == optuna.trial.TrialState.COMPLETE and DEVICE_SECONDS in t.user_attrs]
    return statistics.median(full) if full else None


class StudyBudget:
    """Stops the study once its trials' device-seconds reach ``budget.max_device_hours``. With
    ``study.recheck: K`` the search stops once its next typical complete trial (their median
    device-seconds) would eat into K such trials' worth, so the K rechecks are paid from the same
    budget (keeping back only K, the last search trial's overrun would leave K - 1); once they are
    queued, the whole budget applies."""

    def __init__(self, max_device_hours: float | None, recheck: int = 0) -> None:
        self.limit = None if max_device_hours is None else max_device_hours * 3600
        self.recheck = recheck

    def spent(self, study: optuna.Study) -> bool:
        if self.limit is None:
            return False
        trials = study.get_trials(deepcopy=False)  # one read per check: it runs after every trial
        return _seconds(trials) >= self.limit - self._reserve(trials)

    def _reserve(self, trials: Sequence[FrozenTrial]) -> float:
        if not self.recheck or any(RECHECK_OF in t.system_attrs for t in trials):
            return 0.0  # none kept back, or the rechecks' turn
        return (self.recheck + 1) * (_typical(trials) or 0.0)

    def affordable(self, study: optuna.Study, k: int) -> int:
        """How many of the ``k`` rechecks due (:func:`rechecks_due`, best first) the budget left
        pays for, each at its own trial's device-seconds: a recheck trains that config again, and
        one the budget cannot finish would be stopped half-way (the search may have overshot what
        it kept back: a trial ends after the budget is checked)."""
        if self.limit is None:
            return k
        left, n = self.limit - device_seconds(study), 0
        for t in rechecks_due(study, k):
            left -= float(t.user_attrs.get(DEVICE_SECONDS, 0.0))
            if left < 0:
                break
            n += 1
        return n

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.spent(study):
            set_study_attr(study, STOPPED, f"{BUDGET_SPENT}: {device_seconds(study):.0f} device-seconds")
            study.stop()
