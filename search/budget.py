"""The budget as hard constraints: measured by the trainer's meter before anything trains.

Each limit becomes an Optuna constraint ``measured - limit`` (<= 0 is feasible) and, when broken,
a human reason such as ``params 7.1M > max_params 5M``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, model_validator

from hps.search.errors import SpaceError
from hps.search.record import LIMITS, human
from hps.trainers import Measurement, TrainConfig, measure, with_overrides
from hps.trainers.validation import OptInteger, OptNumber, Strict, Text, one_of


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
