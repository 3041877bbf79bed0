"""The budget as hard constraints: measured by the trainer's meter before anything trains.

Each limit becomes an Optuna constraint ``measured - limit`` (<= 0 is feasible) and, when broken,
a human reason such as ``params 7.1M > max_params 5M``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from search.errors import SpaceError
from trainers import Measurement, TrainConfig, measure, with_overrides

if TYPE_CHECKING:
    from search.space import Budget, Space


def human(n: float) -> str:
    """7100000 -> '7.1M', 20000000 -> '20M', 512 -> '512'."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


@dataclass(frozen=True)
class Check:
    figures: dict[str, float]  # params, model_bytes (at the storage dtype), macs, flops, epochs
    constraints: dict[str, float]  # budget key -> measured - limit
    violations: list[str]  # one human line per broken limit

    @property
    def feasible(self) -> bool:
        return not self.violations


# budget key -> (figure name, human label)
_LIMITS = {"max_params": ("params", "params"), "max_model_bytes": ("model_bytes", "model bytes"),
           "max_macs": ("macs", "MACs"), "max_flops": ("flops", "FLOPs"), "max_epochs": ("epochs", "epochs")}


def figures(cfg: TrainConfig, budget: Budget, m: Measurement | None = None) -> dict[str, float]:
    m = m or measure(cfg, dtypes=(budget.storage_dtype,))
    return {"params": m.params, "model_bytes": m.model_bytes[budget.storage_dtype], "macs": m.macs,
            "flops": m.flops, "epochs": cfg.train.epochs, "train_memory_mb": m.train_memory_mb}


def check(cfg: TrainConfig, budget: Budget) -> Check:
    """Measure ``cfg`` (no training) and compare it with every static limit of ``budget``."""
    figs = figures(cfg, budget)
    constraints, violations = {}, []
    for key, (fig, label) in _LIMITS.items():
        limit = getattr(budget, key)
        if limit is None:
            continue
        constraints[key] = float(figs[fig] - limit)
        if figs[fig] > limit:
            dtype = f" at {budget.storage_dtype}" if fig == "model_bytes" else ""
            violations.append(f"{label}{dtype} {human(figs[fig])} > {key} {human(limit)}")
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


def _smallest_candidates(space: Space) -> list[dict[str, Any]]:
    """Overrides giving the smallest config for every model family the space can pick."""
    dists = space.spec.space
    fixed: dict[str, Any] = {}
    for key in ("model.width", "model.depth", "train.epochs"):
        d = dists.get(key)
        if d is not None and d.when is None:
            fixed[key] = min(d.values_to_check())
    names = dists["model.name"].choices if "model.name" in dists and dists["model.name"].kind == "categorical" else None
    options = [{"model.name": n} for n in names] if names else [{}]
    return [dict(fixed, **o) for o in options]


def check_smallest(space: Space) -> None:
    """Refuse a space in which even the smallest config breaks a size budget."""
    b = space.budget
    if all(getattr(b, k) is None for k in _LIMITS):
        return
    results = []
    for overrides in _smallest_candidates(space):
        cfg = with_overrides(space.base, overrides, space.source)
        result = check(cfg, b)
        if result.feasible:
            return
        results.append((cfg, result))
    cfg, result = min(results, key=lambda r: sum(max(v, 0) / abs(getattr(b, k)) for k, v in r[1].constraints.items()))
    name = f" ({cfg.model.name} at width {cfg.model.width:g})"
    raise SpaceError(f"{space.source}: budget: smallest config{name} has {result.violations[0]}; "
                     "raise the budget or lower the space's minimum")


