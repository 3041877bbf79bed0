"""A space file: the study, a base trainer config, distributions over trainer keys, a budget.

Everything is checked when the file loads, before any trial runs; each problem is one
:class:`SpaceError` line naming the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from search.errors import SpaceError
from trainers import ConfigError, TrainConfig, config_from_dict, config_to_dict, load_config, with_overrides
from trainers.config import check_value, flat_keys, read_yaml

SAMPLERS = ("tpe", "random", "cmaes", "nsga2", "gp")
PRUNERS = ("asha", "hyperband", "median", "none")
METRICS = {"val_acc": "maximize", "val_loss": "minimize"}
SECOND_OBJECTIVES = ("params", "macs", "flops", "model_bytes")
Scalar = bool | int | float | str | None


class _Strict(BaseModel):
    """Unknown keys are an error that lists the allowed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                raise ValueError(f"unknown key {unknown[0]!r}; allowed keys: {', '.join(cls.model_fields)}")
        return data


class Named(_Strict):
    """A sampler or pruner: a name plus keyword arguments of its Optuna class."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict)


class StudySection(_Strict):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    metric: Literal["val_acc", "val_loss"] = "val_acc"
    direction: Literal["maximize", "minimize"] | None = None
    trials: int = Field(20, ge=1, le=100_000)
    timeout: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0)
    sampler: Named = Named(name="tpe")
    pruner: Named = Named(name="asha")

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: Named) -> Named:
        return _check_named(v, SAMPLERS, _sampler_class)

    @field_validator("pruner")
    @classmethod
    def _pruner(cls, v: Named) -> Named:
        return _check_named(v, PRUNERS, _pruner_class)

    @model_validator(mode="after")
    def _direction(self) -> StudySection:
        if self.direction is not None and self.direction != METRICS[self.metric]:
            raise ValueError(f"direction {self.direction!r} contradicts metric {self.metric!r}, "
                             f"which is {METRICS[self.metric]}d")
        return self


class Dist(_Strict):
    """``{type: float|int, low, high, log, step}``, ``{choices: [...]}`` or ``{type: fit, low, high}``
    (the largest value in [low, high] that meets the budget; for ``model.width``). ``when`` makes
    the parameter conditional on earlier keys: ``{schedule.name: multistep}`` or a list of values."""

    type: Literal["float", "int", "categorical", "fit"] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None
    when: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _shape(self) -> Dist:
        kind = self.kind
        if kind == "categorical":
            if not self.choices:
                raise ValueError("choices is empty; give at least one value")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical takes choices only, not low/high/log/step")
            return self
        if self.choices is not None:
            raise ValueError(f"choices do not go with type {kind!r}; drop type or choices")
        if self.low is None or self.high is None:
            raise ValueError(f"type {kind!r} needs low and high")
        if self.low > self.high:
            raise ValueError(f"low {self.low:g} > high {self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0, got low {self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if kind == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"type 'int' needs integer low and high, got {self.low:g}, {self.high:g}")
        if kind == "fit" and (self.log or self.step is not None or self.when is not None):
            raise ValueError("type 'fit' takes low and high only")
        return self

    @property
    def kind(self) -> str:
        return self.type or ("categorical" if self.choices is not None else "float")

    def values_to_check(self) -> list[Any]:
        """Values that must be valid trainer values: the bounds, or every choice."""
        if self.kind == "categorical":
            return list(self.choices or [])
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


class Budget(_Strict):
    max_params: int | None = Field(None, gt=0)
    max_model_bytes: int | None = Field(None, gt=0)
    storage_dtype: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    max_macs: int | None = Field(None, gt=0)
    max_flops: int | None = Field(None, gt=0)
    max_epochs: int | None = Field(None, ge=1)
    max_trial_seconds: float | None = Field(None, gt=0)
    max_gpu_memory_mb: float | None = Field(None, gt=0)
    max_device_hours: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_compute_cap(self) -> Budget:
        if self.max_macs is not None and self.max_flops is not None and self.max_flops != 2 * self.max_macs:
            raise ValueError(f"max_macs {self.max_macs} and max_flops {self.max_flops} disagree "
                             "(FLOPs = 2 x MACs); give one of them")
        return self


class SpaceFile(_Strict):
    study: StudySection
    base: str | dict[str, Any] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Dist] = Field(default_factory=dict)
    budget: Budget = Budget()
    objectives: list[str] = Field(default_factory=lambda: ["val_acc"])
    warm_start: list[str | dict[str, Any]] = Field(default_factory=list)

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[str]) -> list[str]:
        if not 1 <= len(v) <= 2:
            raise ValueError(f"give 1 or 2 objectives, got {len(v)}")
        if v[0] not in METRICS:
            raise ValueError(f"first objective {v[0]!r} is not allowed; choose one of {', '.join(METRICS)}")
        if len(v) == 2 and v[1] not in SECOND_OBJECTIVES:
            raise ValueError(f"second objective {v[1]!r} is not allowed; choose one of {', '.join(SECOND_OBJECTIVES)}")
        return v


def _sampler_class(name: str) -> Any:
    import optuna

    return {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "cmaes": optuna.samplers.CmaEsSampler, "nsga2": optuna.samplers.NSGAIISampler,
            "gp": optuna.samplers.GPSampler}[name]


def _pruner_class(name: str) -> Any:
    import optuna

    return {"asha": optuna.pruners.SuccessiveHalvingPruner, "hyperband": optuna.pruners.HyperbandPruner,
            "median": optuna.pruners.MedianPruner, "none": optuna.pruners.NopPruner}[name]


_MANAGED_ARGS = {"seed", "constraints_func"}  # hps sets these itself


def _check_named(v: Named, allowed: tuple[str, ...], cls_of: Any) -> Named:
    if v.name not in allowed:
        raise ValueError(f"name {v.name!r} is not allowed; choose one of {', '.join(allowed)}")
    params = [p for p in inspect.signature(cls_of(v.name).__init__).parameters if p not in ("self", *_MANAGED_ARGS)]
    for key in v.args:
        if key not in params:
            raise ValueError(f"{v.name} has no argument {key!r}; allowed: {', '.join(params) or 'none'}")
    return v


class Space:
    """A loaded, validated space file; ``base`` has ``fixed`` applied."""

    def __init__(self, spec: SpaceFile, base: TrainConfig, source: str, warm: list[tuple[str, dict[str, Any]]]):
        self.spec, self.base, self.source, self.warm_start = spec, base, source, warm

    @property
    def name(self) -> str:
        return self.spec.study.name

    @property
    def budget(self) -> Budget:
        return self.spec.budget

    @property
    def directions(self) -> list[str]:
        first = METRICS[self.spec.objectives[0]]
        return [first] + ["minimize"] * (len(self.spec.objectives) - 1)

    @property
    def multi_objective(self) -> bool:
        return len(self.spec.objectives) > 1

    def to_dict(self) -> dict[str, Any]:
        data = self.spec.model_dump(mode="json", exclude_none=True)
        data["base"] = config_to_dict(self.base)
        return data


def _pydantic_line(source: str, e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = "" if isinstance(value, Mapping) or err["type"] == "missing" else f"{_show(value)}: "
    if err["type"] == "missing":
        msg = "required key is missing"
    return f"{source}: {loc}: {shown}{msg}" if loc else f"{source}: {shown}{msg}"


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def encode_choice(value: Any) -> Scalar:
    """Optuna stores scalars only; lists (e.g. milestones) are stored as JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def decode_choice(value: Any, choices: list[Any]) -> Any:
    for c in choices:
        if encode_choice(c) == value:
            return c
    return value


def load_space(path: str | Path) -> Space:
    """Read and validate a space file; raises :class:`SpaceError` with one line."""
    path = Path(path)
    source = str(path)
    raw = read_yaml(path, SpaceError)
    if not isinstance(raw, Mapping):
        raise SpaceError(f"{source}: expected a mapping with keys study, base, fixed, space, budget, objectives, warm_start")
    try:
        spec = SpaceFile.model_validate(raw)
    except ValidationError as e:
        raise SpaceError(_pydantic_line(source, e)) from None
    base = _load_base(spec.base, path)
    try:
        base = with_overrides(base, spec.fixed, f"{source}: fixed")
    except ConfigError as e:
        raise SpaceError(str(e)) from None
    _check_space(spec, base, source)
    warm = [_warm_params(w, spec, path, i) for i, w in enumerate(spec.warm_start)]
    space = Space(spec, base, source, warm)
    from search.budget import check_smallest  # budget imports this module

    check_smallest(space)
    return space


def _load_base(base: str | dict[str, Any], path: Path) -> TrainConfig:
    source = f"{path}: base"
    try:
        if isinstance(base, str):
            return load_config(path.parent / base)
        return config_from_dict(base, source)
    except ConfigError as e:
        raise SpaceError(str(e) if isinstance(base, str) else f"{e}") from None


def _check_space(spec: SpaceFile, base: TrainConfig, source: str) -> None:
    keys = flat_keys()
    seen: list[str] = []
    for key, dist in spec.space.items():
        where = f"{source}: space.{key}"
        if key not in keys:
            raise SpaceError(f"{where}: not a trainer key; allowed: {', '.join(keys)}")
        if dist.kind == "fit" and key != "model.width":
            raise SpaceError(f"{where}: type 'fit' is only for model.width")
        if dist.kind == "fit" and not spec.budget.model_dump(exclude_none=True).keys() & {
                "max_params", "max_model_bytes", "max_macs", "max_flops"}:
            raise SpaceError(f"{where}: type 'fit' needs a size budget (max_params, max_model_bytes, max_macs or max_flops)")
        for cond_key, cond in (dist.when or {}).items():
            if cond_key not in keys:
                raise SpaceError(f"{where}.when.{cond_key}: not a trainer key; allowed: {', '.join(keys)}")
            if cond_key in spec.space and cond_key not in seen:
                raise SpaceError(f"{where}.when.{cond_key}: must come before {key} in the space")
            for v in cond if isinstance(cond, list) else [cond]:
                _trainer_value(cond_key, v, f"{where}.when.{cond_key}")
        for v in dist.values_to_check():
            _trainer_value(key, v, where)
        seen.append(key)
    if spec.budget.max_epochs is not None and "train.epochs" not in spec.space and base.train.epochs > spec.budget.max_epochs:
        raise SpaceError(f"{source}: base.train.epochs: {base.train.epochs} breaks budget.max_epochs "
                         f"{spec.budget.max_epochs}; lower one of them")


def _trainer_value(key: str, value: Any, where: str) -> None:
    try:
        check_value(key, value, "x")
    except ConfigError as e:
        detail = str(e).split(": ", 2)[-1]  # drop the synthetic "x: key: " prefix
        raise SpaceError(f"{where}: {detail}") from None


def _warm_params(entry: str | dict[str, Any], spec: SpaceFile, path: Path, i: int) -> tuple[str, dict[str, Any]]:
    """Param values for the searched keys, taken from a retrain YAML or a dotted-key mapping."""
    where = f"{path}: warm_start[{i}]"
    if isinstance(entry, str):
        try:
            cfg = config_to_dict(load_config(path.parent / entry))
        except ConfigError as e:
            raise SpaceError(f"{where}: {e}") from None
        values = {k: cfg[k.split(".")[0]][k.split(".")[1]] for k in flat_keys()}
        label = entry
    else:
        unknown = [k for k in entry if k not in spec.space]
        if unknown:
            raise SpaceError(f"{where}.{unknown[0]}: not a searched key; searched: {', '.join(spec.space)}")
        values, label = dict(entry), f"warm_start[{i}]"
    params: dict[str, Any] = {}
    for key, dist in spec.space.items():
        if dist.kind == "fit" or key not in values:
            continue
        if dist.when and not all(_matches(values.get(k), c) for k, c in dist.when.items()):
            continue
        v = values[key]
        if not _inside(dist, v):
            raise SpaceError(f"{where}.{key}: {_show(v)} lies outside the space ({_describe(dist)})")
        params[key] = encode_choice(v)
    return label, params


def _matches(value: Any, cond: Any) -> bool:
    return value in cond if isinstance(cond, list) else value == cond


def _inside(dist: Dist, v: Any) -> bool:
    if dist.kind == "categorical":
        return v in (dist.choices or [])
    assert dist.low is not None and dist.high is not None
    return isinstance(v, (int, float)) and dist.low - 1e-12 <= v <= dist.high + 1e-12 and math.isfinite(v)


def _describe(dist: Dist) -> str:
    if dist.kind == "categorical":
        return "choices " + ", ".join(_show(c) for c in dist.choices or [])
    return f"{dist.kind} in [{dist.low:g}, {dist.high:g}]"



def suggest(space: Space, trial: Any) -> TrainConfig:
    """Sample the space's keys in file order (conditions see earlier values), apply them to the base
    config and, for ``model.width: {type: fit}``, fit the width to the budget."""
    from search.budget import fit_width

    base = config_to_dict(space.base)
    chosen: dict[str, Any] = {}

    def current(key: str) -> Any:
        section, name = key.split(".")
        return chosen.get(key, base[section][name])

    fit: Dist | None = None
    for key, dist in space.spec.space.items():
        if dist.kind == "fit":
            fit = dist
            continue
        if dist.when and not all(_matches(current(k), c) for k, c in dist.when.items()):
            continue
        chosen[key] = _suggest_one(trial, key, dist)
    cfg = with_overrides(space.base, chosen, space.source)
    if fit is not None:
        assert fit.low is not None and fit.high is not None
        width = fit_width(cfg, space.budget, fit.low, fit.high)
        trial.set_user_attr("fitted_width", width)
        if width is not None:
            cfg = with_overrides(cfg, {"model.width": width}, space.source)
        else:  # even the narrowest breaks the budget: keep it, the pre-screen prunes it
            cfg = with_overrides(cfg, {"model.width": fit.low}, space.source)
    return cfg


def _suggest_one(trial: Any, key: str, dist: Dist) -> Any:
    if dist.kind == "categorical":
        choices = dist.choices or []
        return decode_choice(trial.suggest_categorical(key, [encode_choice(c) for c in choices]), choices)
    assert dist.low is not None and dist.high is not None
    if dist.kind == "int":
        return trial.suggest_int(key, int(dist.low), int(dist.high), step=int(dist.step or 1), log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
