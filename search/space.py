"""A space file: the study, a base trainer config, distributions over trainer keys, a budget.

Everything is checked when the file loads, before any trial runs; each problem is one
:class:`SpaceError` line naming the file, the key, the value and what is allowed (the same
formatter as the trainer's config: :mod:`trainers.validation`). Checks that need more than one
key run on the whole space: the distributions against the trainer's types and ranges, the
smallest config against the budget, the sampler and pruner in a rehearsal of a few trials.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from hps.search.algorithms import (
    PACKAGES,
    PRUNERS,
    SAMPLERS,
    TrialSeeded,
    build_pruner,
    check_args,
    pruner_class,
    rehearse,
    sampler_class,
)
from hps.search.budget import Budget, check_fit, check_smallest, fit_width
from hps.search.errors import SpaceError
from hps.search.record import FITTED_WIDTH, WIDTH
from hps.trainers import (
    ConfigError,
    DataError,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    with_overrides,
)
from hps.trainers.augment import check_augment
from hps.trainers.config import (
    ARGS_PREFIX,
    ARGS_PREFIXES,
    args_key,
    check_value,
    flat_keys,
    key_type,
    read_yaml,
    resolve_paths,
)
from hps.trainers.custom import load_fn, pin_fn
from hps.trainers.data import data_identity, data_shape, pin_data
from hps.trainers.models.check import check_knobs, check_model, pin_model
from hps.trainers.validation import Flag, Integer, OptNumber, OptText, Strict, Text, error_line, show

METRICS = {"val_acc": "maximize", "val_loss": "minimize"}
SECOND_OBJECTIVES = ("params", "macs", "flops", "model_bytes")
# Keys that pick the data or the machine: searching them would score trials on different data.
NOT_SEARCHABLE = ("data.", "train.device")
SEARCHABLE_DATA = ("data.image_size",)  # the model's input side: the same images, scored alike
KINDS = ("float", "int", "categorical", "fit")
Scalar = bool | int | float | str | None


class Named(Strict):
    """A sampler or pruner: a name plus keyword arguments of its Optuna class."""

    name: Text
    args: dict[str, Any] = Field(default_factory=dict)


class StudySection(Strict):
    name: Annotated[Text, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")]
    trials: Integer = Field(20, ge=1, le=100_000)
    timeout: OptNumber = Field(None, gt=0)
    seed: Integer = Field(0, ge=0)
    sampler: Named = Named(name="tpe")
    pruner: Named = Named(name="asha")
    recheck: Integer = Field(0, ge=0, le=20)  # the best few trained again with another seed before export

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        for key in ("metric", "direction"):
            if isinstance(data, Mapping) and key in data:
                raise PydanticCustomError("hps", f"{key} is not a study key; the objective is the top-level "
                                                 "objectives list (objectives: [val_loss] minimizes val_loss; its "
                                                 "direction follows the metric)")
        return data

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: Named) -> Named:
        return _check_named(v, SAMPLERS, sampler_class)

    @field_validator("pruner")
    @classmethod
    def _pruner(cls, v: Named) -> Named:
        return _check_named(v, PRUNERS, pruner_class)


def _check_named(v: Named, allowed: tuple[str, ...], cls_of: Any) -> Named:
    if v.name not in allowed:
        raise PydanticCustomError("hps", f"name {v.name!r} is not allowed; choose one of {', '.join(allowed)}")
    try:
        check_args(cls_of(v.name), v.args, v.name)
    except ValueError as e:
        raise PydanticCustomError("hps", str(e)) from None
    return v


class Dist(Strict):
    """``{type: float|int, low, high, log, step}``, ``{choices: [...]}`` or ``{type: fit, low, high}``
    (the largest value in [low, high] that meets the budget; for ``model.width``). ``when`` makes
    the parameter conditional on earlier keys: ``{schedule.name: multistep}`` or a list of values.
    Without ``type``, a range takes the key's own type (int for ``train.epochs``)."""

    type: OptText = None
    low: OptNumber = None
    high: OptNumber = None
    log: Flag = False
    step: OptNumber = Field(None, gt=0)
    choices: Any = None
    when: Any = None

    @field_validator("type")
    @classmethod
    def _type(cls, v: str | None) -> str | None:
        if v is not None and v not in KINDS:
            raise PydanticCustomError("hps", f"is not allowed; choose one of {', '.join(KINDS)}")
        return v

    @field_validator("choices")
    @classmethod
    def _choices(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, list):
            raise PydanticCustomError("hps", "is not allowed; expected a list of values")
        return v

    @field_validator("when")
    @classmethod
    def _when(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, Mapping):
            raise PydanticCustomError("hps", "is not allowed; expected a mapping of earlier keys to values")
        return v

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
        if kind == "fit" and (self.log or self.step is not None or self.when is not None):
            raise ValueError("type 'fit' takes low and high only")
        if self.step is not None:
            n = (self.high - self.low) / self.step
            if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
                raise ValueError(f"step {self.step:g} does not divide high - low ({self.high - self.low:g}); "
                                 "Optuna would move high")
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


class SpaceFile(Strict):
    study: StudySection
    base: Any = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Dist] = Field(default_factory=dict)
    budget: Budget = Budget()
    objectives: list[Text] = Field(default_factory=lambda: ["val_acc"])
    warm_start: list[Any] = Field(default_factory=list)

    @field_validator("base")
    @classmethod
    def _base(cls, v: Any) -> Any:
        if not isinstance(v, (str, Mapping)):
            raise PydanticCustomError("hps", "is not allowed; expected a retrain YAML's name or a mapping of trainer sections")
        return v

    @field_validator("warm_start")
    @classmethod
    def _warm(cls, v: list[Any]) -> list[Any]:
        for i, entry in enumerate(v):
            if not isinstance(entry, (str, Mapping)):
                raise ValueError(f"warm_start[{i}]: {show(entry)} is not allowed; expected a retrain YAML's file name "
                                 "or a mapping of searched keys to values")
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[str]) -> list[str]:
        if not 1 <= len(v) <= 2:
            raise PydanticCustomError("hps", f"is not allowed; give 1 or 2 objectives, got {len(v)}")
        if v[0] not in METRICS:
            raise PydanticCustomError("hps", f"is not allowed; the first objective must be one of {', '.join(METRICS)}")
        if len(v) == 2 and v[1] not in SECOND_OBJECTIVES:
            allowed = ", ".join(SECOND_OBJECTIVES)
            raise PydanticCustomError("hps", f"is not allowed; the second objective must be one of {allowed}")
        return v


class Space:
    """A loaded, validated space; ``base`` has ``fixed`` applied. ``overrides``: the dotted keys set
    on top of the file or dict (``--set``), recorded with the space on its study."""

    def __init__(self, spec: SpaceFile, base: TrainConfig, source: str, warm: list[tuple[str, dict[str, Any]]],
                 overrides: dict[str, Any] | None = None, sources: dict[str, tuple[str, str]] | None = None):
        self.spec, self.base, self.source, self.warm_start = spec, base, source, warm
        self.callbacks: list[Any] = []  # the run's (hps.run(callbacks=...), --log): not part of the definition
        self.overrides = overrides or {}
        self.sources = sources or {}  # the user's model file, shipped with the space to Ray workers
        self.definition_hash: str | None = None  # set by the driver: each trial records it

    def __repr__(self) -> str:
        return f"<Space {self.name!r} from {self.source}: {len(self.spec.space)} searched keys, {self.spec.study.trials} trials>"

    @property
    def name(self) -> str:
        return self.spec.study.name

    @property
    def budget(self) -> Budget:
        return self.spec.budget

    @property
    def metric(self) -> str:
        """The one source of truth for what a trial is scored on: ``objectives[0]``."""
        return self.spec.objectives[0]

    @property
    def directions(self) -> list[str]:
        return [METRICS[self.metric]] + ["minimize"] * (len(self.spec.objectives) - 1)

    @property
    def multi_objective(self) -> bool:
        return len(self.spec.objectives) > 1

    def make_sampler(self) -> Any:
        """The space's sampler, seeded per trial (:class:`TrialSeeded`): no two workers or runs draw alike."""
        s = self.spec.study
        return TrialSeeded(s.sampler.name, s.sampler.args, s.trials, s.seed)

    def make_pruner(self) -> Any:
        s = self.spec.study
        return build_pruner(s.pruner.name, s.pruner.args, self.base.train.epochs)

    def definition(self) -> dict[str, Any]:
        """What defines the study's trials: the searched distributions, the base config with
        ``fixed`` applied, the budget, the objectives and the data's identity. Not the study's
        settings (trials, timeout, sampler, pruner), the compute budget (``max_device_hours``), the
        device or where the data lies. Reads the data's sha256 (the driver calls it once)."""
        base = config_to_dict(self.base)
        for key in ("path", "root", "download", "sha256"):
            base["data"].pop(key, None)  # where the data lies: its identity below says what it is
        base["train"].pop("device", None)
        data = {k: v for k, v in data_identity(pin_data(self.base)).items() if k not in ("path", "root")}
        return {"space": {k: d.model_dump(mode="json", exclude_none=True) for k, d in self.spec.space.items()},
                "base": base, "budget": self.spec.budget.model_dump(mode="json", exclude_none=True,
                                                                      exclude={"max_device_hours"}),
                "objectives": list(self.spec.objectives), "data": data}

    def to_dict(self) -> dict[str, Any]:
        data = self.spec.model_dump(mode="json", exclude_none=True)
        data["base"] = config_to_dict(self.base)
        if self.overrides:
            data["overrides"] = self.overrides
        return data


def encode_choice(value: Any) -> Scalar:
    """Optuna stores scalars only; lists (e.g. milestones) are stored as JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def decode_choice(value: Any, choices: list[Any]) -> Any:
    for c in choices:
        if encode_choice(c) == value:
            return c
    return value


Overrides = Mapping[str, Any] | Iterable[str]


def parse_overrides(items: Overrides | None, source: str = "--set") -> dict[str, Any]:
    """``{"study.trials": 8}`` as it is, or ``["study.trials=8", ...]`` (the command line's
    ``--set``; each value read as YAML: ``8`` is a number, ``[a, b]`` a list, ``null`` none)."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = str(item).partition("=")
        if not eq or not key.strip():
            raise SpaceError(f"{source} {item!r}: expected KEY=VALUE, e.g. study.trials=8 or fixed.train.epochs=2")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            raise SpaceError(f"{source} {key.strip()}: {text!r} is not a YAML value ({getattr(e, 'problem', e)})") from None
    return out


def _set(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Apply one dotted override to the raw space (as read, before validation)."""
    top, _, rest = key.partition(".")
    where = f"{source}: --set {key}"
    if top not in SpaceFile.model_fields:
        raise SpaceError(f"{where}: {top!r} is not a space section; allowed: {', '.join(SpaceFile.model_fields)}")
    if top in ("objectives", "warm_start"):
        if rest:
            raise SpaceError(f"{where}: {top} is set whole, e.g. {top}=[...]")
        raw[top] = value
        return
    if not rest:
        raise SpaceError(f"{where}: name a key inside {top}, e.g. {top}.{_EXAMPLES[top]}")
    section = raw.setdefault(top, {})
    if top == "base" and isinstance(section, str):
        raise SpaceError(f"{where}: base is the file {section!r}; set fixed.{rest} instead")
    if not isinstance(section, dict):
        raise SpaceError(f"{where}: {top} is {show(section)}, not a mapping")
    if top in ("fixed", "space"):
        parts = rest.split(".")
        n = 3 if rest.startswith(ARGS_PREFIXES) else 2  # model.args.NAME and train.args.NAME are one key each
        trainer_key, field = ".".join(parts[:n]), ".".join(parts[n:])
        if trainer_key not in flat_keys() and args_key(trainer_key) is None:
            raise SpaceError(f"{where}: {trainer_key!r} is not a trainer key; allowed: {', '.join(flat_keys())}")
        if top == "fixed" or not field:
            if top == "space" and value is None:
                section.pop(trainer_key, None)  # --set space.KEY=null: stop searching it
            else:
                section[trainer_key] = value
            return
        if not isinstance(section.get(trainer_key), dict):
            raise SpaceError(f"{where}: {trainer_key} is not searched in this space; set space.{trainer_key} whole, "
                             "e.g. space.optimizer.lr={low: 0.001, high: 0.1, log: true}")
        section, parts = section[trainer_key], field.split(".")
    else:
        parts = rest.split(".")
    for part in parts[:-1]:
        nxt = section.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise SpaceError(f"{where}: {part} is {show(nxt)}, not a mapping")
        section = nxt
    section[parts[-1]] = value


_EXAMPLES = {"study": "trials=8", "base": "optimizer.lr=0.05", "fixed": "train.epochs=2",
             "space": "optimizer.lr.high=0.1", "budget": "max_params=5000000"}


def load_space(space: str | Path | Mapping[str, Any], overrides: Overrides | None = None) -> Space:
    """Read and validate a space from a YAML file or a plain dict, with dotted ``overrides``
    (``{"study.trials": 8, "fixed.train.epochs": 2}`` or ``["study.trials=8"]``) applied on top;
    raises :class:`SpaceError` with one line. Relative paths in a file (``base``, ``warm_start``,
    ``data.path``) are relative to the file; in a dict, to the working folder."""
    if isinstance(space, Mapping):
        source, folder = "<space dict>", Path.cwd()
        raw: Any = copy.deepcopy(dict(space))
    else:
        path = Path(space)
        source, folder = str(path), path.parent
        raw = read_yaml(path, SpaceError)
    if not isinstance(raw, Mapping):
        raise SpaceError(f"{source}: expected a mapping with keys {', '.join(SpaceFile.model_fields)}")
    sets = parse_overrides(overrides)
    raw = dict(raw)
    for key, value in sets.items():
        _set(raw, key, value, source)
    try:
        spec = SpaceFile.model_validate(raw)
    except ValidationError as e:
        raise SpaceError(error_line(source, e, SpaceFile, raw=raw)) from None
    base = _load_base(spec.base, source, folder)
    try:
        base = with_overrides(base, spec.fixed, f"{source}: fixed")
    except ConfigError as e:
        raise SpaceError(str(e)) from None
    base = resolve_paths(base, folder)
    spec = spec.model_copy(update={"space": _check_space(spec, base, source)})
    base = _check_model_and_data(spec, base, source)
    warm = [_warm_params(w, spec, base, source, folder, i) for i, w in enumerate(spec.warm_start)]
    space_ = Space(spec, base, source, warm, sets, model_sources(base))
    check_smallest(base, spec.budget, _smallest_candidates(spec, base), source)
    fit = spec.space.get("model.width")
    if fit is not None and fit.kind == "fit":
        assert fit.low is not None and fit.high is not None
        check_fit(base, spec.budget, fit.low, fit.high, source)
    _rehearse(space_)
    return space_


def _check_model_and_data(spec: SpaceFile, base: TrainConfig, source: str) -> TrainConfig:
    """The model against the data, before any trial: a user's builder takes every knob the space
    sets or searches, builds, and maps a dummy batch of the data's shape to (batch, classes); every
    augmentation op fits the images. Returns the base with the builder's file pinned (sha256)."""
    try:
        shape = data_shape(base.data)
        check_knobs(base.model, searched=spec.space, where=f"{source}: ")
        side = base.data.image_size or shape.side
        check_model(base, shape.num_classes, shape.channels, side)
        check_augment(base.augment, shape.channels)
        if base.train.fn is not None:  # the user's training function: found, and callable with every argument searched
            searched = {k.removeprefix("train.args."): d.values_to_check()[0] for k, d in spec.space.items()
                        if k.startswith("train.args.")}
            load_fn(base.replace("train", args={**base.train.args, **searched}))
            base = pin_fn(base)
        hue = spec.space.get("augment.hue")
        if hue is not None and shape.channels == 1 and any(v for v in hue.values_to_check()):
            raise ConfigError("space.augment.hue: hue shifts colours, but the images have one channel; do not search it")
        return pin_model(base)
    except (ConfigError, DataError) as e:
        text = str(e)
        raise SpaceError(text if text.startswith(source) else f"{source}: {text}") from None


def model_sources(base: TrainConfig) -> dict[str, tuple[str, str]]:
    """sha256 -> (file name, text) of the user's model file and training function's file: shipped
    with the space to Ray workers, which run them when their disk lacks a file (or holds another version)."""
    out = {}
    for ref, sha in ((base.model.name, base.model.sha256), (base.train.fn, base.train.fn_sha256)):
        where, colon, _ = (ref or "").rpartition(":")
        if colon and where.endswith(".py") and sha is not None:
            out[sha] = (Path(where).name, Path(where).read_text())
    return out


def _load_base(base: str | Mapping[str, Any], source: str, folder: Path) -> TrainConfig:
    if isinstance(base, str):  # the file's own error, behind the space file and key that named it
        try:
            return load_config(folder / base)
        except ConfigError as e:
            raise SpaceError(f"{source}: base: {e}") from None
    try:
        return config_from_dict(base, f"{source}: base")
    except ConfigError as e:
        raise SpaceError(str(e)) from None


def _typed(key: str, dist: Dist, where: str) -> Dist:
    """The distribution with the key's own type: ranges over int keys are int ranges; bool, str and
    list keys take choices only."""
    kt = key_type(key)
    kind = dist.kind
    if kt in ("bool", "str", "list") and kind != "categorical":
        raise SpaceError(f"{where}: a {kt} key takes choices only, e.g. {{choices: [...]}}")
    if kt == "int" and kind in ("float", "int"):
        if dist.type == "float":
            raise SpaceError(f"{where}: type 'float' is not allowed for an integer key; use type 'int' or leave type out")
        bounds = [dist.low, dist.high] + ([dist.step] if dist.step is not None else [])
        if not all(b is not None and float(b).is_integer() for b in bounds):
            raise SpaceError(f"{where}: an integer key needs integer low, high and step, got "
                             + ", ".join(f"{b:g}" for b in bounds if b is not None))
        return dist.model_copy(update={"type": "int"})
    if kind == "int":
        bounds = [dist.low, dist.high] + ([dist.step] if dist.step is not None else [])
        if not all(b is not None and float(b).is_integer() for b in bounds):
            raise SpaceError(f"{where}: type 'int' needs integer low, high and step, got "
                             + ", ".join(f"{b:g}" for b in bounds if b is not None))
    return dist


def _check_space(spec: SpaceFile, base: TrainConfig, source: str) -> dict[str, Dist]:
    keys = flat_keys()
    checked: dict[str, Dist] = {}
    for key, dist in spec.space.items():
        where = f"{source}: space.{key}"
        if key.startswith(ARGS_PREFIXES):  # an argument of the user's builder or training function
            if args_key(key) is None or dist.kind == "fit" or dist.when is not None:
                raise SpaceError(f"{where}: a builder's or training function's argument takes a range or choices "
                                 "(no fit, no when), named as a Python argument")
            if key.startswith("train.args.") and base.train.fn is None:
                raise SpaceError(f"{where}: train.args are the arguments of your training function; set train.fn "
                                 "in base first")
            kind = dist.type or dist.kind
            if dist.type is None and kind == "float" and all(b is None or float(b).is_integer()
                                                             for b in (dist.low, dist.high, dist.step)):
                kind = "int"  # {low: 32, high: 128}: whole numbers, as a range over an int key; type: float says otherwise
            checked[key] = dist.model_copy(update={"type": kind})
            continue
        if key not in keys:
            raise SpaceError(f"{where}: not a trainer key; allowed: {', '.join(keys)}, {ARGS_PREFIX}NAME, train.args.NAME")
        if key.startswith(NOT_SEARCHABLE) and key not in SEARCHABLE_DATA:
            raise SpaceError(f"{where}: not searchable (it decides the data or the machine, so trials would be scored "
                             "on different terms); set it in base or fixed")
        dist = _typed(key, dist, where)
        if dist.kind == "fit" and key != "model.width":
            raise SpaceError(f"{where}: type 'fit' is only for model.width")
        if dist.kind == "fit" and not spec.budget.model_dump(exclude_none=True).keys() & {
                "max_params", "max_model_bytes", "max_macs", "max_flops"}:
            raise SpaceError(f"{where}: type 'fit' needs a size budget (max_params, max_model_bytes, max_macs or max_flops)")
        for cond_key, cond in (dist.when or {}).items():
            if cond_key not in keys:
                raise SpaceError(f"{where}.when.{cond_key}: not a trainer key; allowed: {', '.join(keys)}")
            if cond_key == key:
                raise SpaceError(f"{where}.when.{cond_key}: a key cannot depend on itself")
            if cond_key in spec.space and cond_key not in checked:
                raise SpaceError(f"{where}.when.{cond_key}: must come before {key} in the space")
            values = cond if isinstance(cond, list) else [cond]
            if not values:
                raise SpaceError(f"{where}.when.{cond_key}: [] is not allowed; give a value or a list of values")
            for v in values:
                _trainer_value(cond_key, v, f"{where}.when.{cond_key}")
            _can_hold(cond_key, values, checked, base, f"{where}.when.{cond_key}")
        for v in dist.values_to_check():
            _trainer_value(key, v, where)
        checked[key] = dist
    if base.data.val_fraction <= 0:
        raise SpaceError(f"{source}: base.data.val_fraction: 0 leaves no validation split to score trials on; "
                         "set it > 0 (e.g. 0.1)")
    epochs = spec.budget.max_epochs
    if epochs is not None and "train.epochs" not in checked and base.train.epochs > epochs:
        raise SpaceError(f"{source}: base.train.epochs: {base.train.epochs} breaks budget.max_epochs {epochs}; lower one of them")
    if len(spec.objectives) > 1 and spec.study.pruner.name != "none":
        raise SpaceError(f"{source}: study.pruner: {spec.study.pruner.name!r} cannot prune a study of 2 objectives "
                         "(Optuna prunes single-objective studies only); use pruner: {name: none}")
    if len(spec.objectives) > 1 and spec.study.recheck:
        raise SpaceError(f"{source}: study.recheck: {spec.study.recheck} compares one objective's runs; a study of "
                         "2 objectives hands over its Pareto front instead: use recheck: 0")
    return checked


def _can_hold(cond_key: str, values: list[Any], checked: dict[str, Dist], base: TrainConfig, where: str) -> None:
    """Refuse a condition that cannot select: on a key no trial draws a value of (fitted, or a
    continuous range: a float is never exactly the value), with a value the key never takes (its
    key would never be searched, or that value never), or on a fixed key set to another value."""
    if cond_key in checked:
        d = checked[cond_key]
        if d.kind == "fit":
            raise SpaceError(f"{where}: {cond_key} is fitted to the budget (type fit), not drawn, so a condition on it "
                             "cannot select; condition on a key searched over choices")
        if d.kind == "float" and d.step is None:
            raise SpaceError(f"{where}: {cond_key} is searched over a continuous range ({_describe(d)}): no trial draws "
                             f"exactly {show(values[0])}, so the condition cannot select; condition on a key searched "
                             "over choices, an int range or a float range with step")
        never = [v for v in values if not _inside(d, check_value(cond_key, v))]
        if len(never) == len(values):
            raise SpaceError(f"{where}: {show(values if len(values) > 1 else values[0])} never holds: {cond_key} is "
                             f"searched over {_describe(d)}, so the key would never be searched")
        if never:
            raise SpaceError(f"{where}: {show(never[0])} never holds: {cond_key} is searched over {_describe(d)}; "
                             "drop it from the list")
        return
    section, name = cond_key.split(".")
    fixed = getattr(getattr(base, section), name)
    if not any(_matches(fixed, check_value(cond_key, v)) for v in values):
        raise SpaceError(f"{where}: {show(values if len(values) > 1 else values[0])} never holds: {cond_key} is "
                         f"{show(fixed)} (not searched), so the key would never be searched")


def _trainer_value(key: str, value: Any, where: str) -> None:
    try:
        check_value(key, value, "x")
    except ConfigError as e:
        detail = str(e).split(": ", 2)[-1]  # drop the synthetic "x: key: " prefix
        raise SpaceError(f"{where}: {detail}") from None


def _values_of(space: dict[str, Dist], base: TrainConfig, chosen: Mapping[str, Any]) -> dict[str, Any]:
    """Every key's value as :func:`suggest` sees it: the chosen one, else the base's."""
    cfg = config_to_dict(base)
    values = {k: cfg[k.split(".")[0]][k.split(".")[1]] for k in flat_keys()}
    values.update(chosen)
    return values


def _warm_params(entry: str | Mapping[str, Any], spec: SpaceFile, base: TrainConfig, source: str, folder: Path,
                 i: int) -> tuple[str, dict[str, Any]]:
    """Param values for the searched keys, from a retrain YAML or a dotted-key mapping. A condition
    is read as a trial reads it: the warm start's value of a searched key, else the base's."""
    where = f"{source}: warm_start[{i}]"
    if isinstance(entry, str):
        try:
            cfg = config_to_dict(load_config(folder / entry))
        except ConfigError as e:
            raise SpaceError(f"{where}: {e}") from None
        given = {k: cfg[k.split(".")[0]][k.split(".")[1]] for k in flat_keys() if k in spec.space}
        label = entry
    else:
        unknown = [k for k in entry if k not in spec.space]
        if unknown:
            raise SpaceError(f"{where}.{unknown[0]}: not a searched key; searched: {', '.join(spec.space)}")
        given, label = dict(entry), f"warm_start[{i}]"
    values = _values_of(spec.space, base, given)
    params: dict[str, Any] = {}
    for key, dist in spec.space.items():
        if dist.kind == "fit" or key not in given:
            continue
        if dist.when and not all(_matches(values.get(k), c) for k, c in dist.when.items()):
            continue
        v = given[key]
        if not _inside(dist, v):
            raise SpaceError(f"{where}.{key}: {show(v)} lies outside the space ({_describe(dist)})")
        params[key] = encode_choice(v)
    return label, params


def _matches(value: Any, cond: Any) -> bool:
    return value in cond if isinstance(cond, list) else value == cond


def _inside(dist: Dist, v: Any) -> bool:
    """Whether ``v`` is a value the distribution can draw (a range's bounds, on its step's grid)."""
    if dist.kind == "categorical":
        return v in (dist.choices or [])
    assert dist.low is not None and dist.high is not None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return False
    if dist.kind == "int" and not float(v).is_integer():
        return False
    if dist.step is not None and not _on_grid(v, dist.low, dist.step):
        return False
    return dist.low - 1e-12 <= v <= dist.high + 1e-12


def _on_grid(v: float, low: float, step: float) -> bool:
    n = (v - low) / step
    return abs(n - round(n)) <= 1e-9 * max(1.0, abs(n))


def _describe(dist: Dist) -> str:
    if dist.kind == "categorical":
        return "choices " + ", ".join(show(c) for c in dist.choices or [])
    step = f" step {dist.step:g}" if dist.step is not None else ""
    return f"{dist.kind} in [{dist.low:g}, {dist.high:g}]{step}"


def _smallest_candidates(spec: SpaceFile, base: TrainConfig, pick: Any = min) -> list[dict[str, Any]]:
    """Overrides giving the smallest config of every model family the space can pick. A key that
    is searched only under a condition keeps its base value when the condition is off, so its
    smallest value is the least of the base's and every range's. ``pick=max``: the largest."""
    fixed: dict[str, Any] = {}
    for key in ("model.width", "model.depth", "data.image_size", "train.epochs"):
        dist = spec.space.get(key)
        if dist is None:
            continue
        section, name = key.split(".")
        options = dist.values_to_check()
        if dist.when:
            options.append(getattr(getattr(base, section), name))
        options = [o for o in options if o is not None]  # data.image_size unset: the images' own side
        if options:
            fixed[key] = pick(options)
    names = [base.model.name]
    d = spec.space.get("model.name")
    if d is not None:
        names = list(d.choices or []) + ([base.model.name] if d.when else [])
    return [dict(fixed, **{"model.name": n}) for n in dict.fromkeys(names)]


def _rehearse(space: Space) -> None:
    """Build the sampler and pruner and drive them through a few trials of this space (no
    training): an argument Optuna rejects, when built or when used, fails here as one line."""
    study = space.spec.study

    def fail(part: str, exc: BaseException) -> SpaceError:
        named = getattr(study, part)
        if isinstance(exc, ImportError) and getattr(exc, "name", None):  # cmaes needs its own package
            module = str(exc.name).split(".")[0]
            return SpaceError(f"{space.source}: study.{part}: {named.name} needs the package {module!r}, which is not "
                              f"installed: pip install {module}, or choose another {part}")
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return SpaceError(f"{space.source}: study.{part}: {named.name} with args {show(named.args)} fails: {line}")

    if (package := PACKAGES.get(study.sampler.name)) is not None:
        try:
            importlib.import_module(package)  # GP imports scipy only after its random start-up trials
        except ImportError as e:
            raise fail("sampler", e) from None
    parts = {}
    for part, make in (("sampler", space.make_sampler), ("pruner", space.make_pruner)):
        try:
            parts[part] = make()
        except Exception as e:
            raise fail(part, e) from None
    try:
        rehearse(space.directions, lambda trial: _suggest_params(space, trial), parts["sampler"], parts["pruner"])
    except RuntimeError as e:
        if len(e.args) == 2 and e.args[0] in ("sampler", "pruner"):
            raise fail(e.args[0], e.args[1]) from None
        raise


def _suggest_params(space: Space, trial: Any) -> dict[str, Any]:
    """Sample the searched keys in file order; a conditional key only when its condition holds."""
    chosen: dict[str, Any] = {}
    for key, dist in space.spec.space.items():
        if dist.kind == "fit":
            continue
        values = _values_of(space.spec.space, space.base, chosen)
        if dist.when and not all(_matches(values.get(k), c) for k, c in dist.when.items()):
            continue
        chosen[key] = _suggest_one(trial, key, dist)
    return chosen


def suggest(space: Space, trial: Any) -> TrainConfig:
    """Sample the space's keys in file order (conditions see earlier values), apply them to the base
    config and, for ``model.width: {type: fit}``, fit the width to the budget."""
    chosen = _suggest_params(space, trial)
    cfg = with_overrides(space.base, chosen, space.source)
    fit = next((d for d in space.spec.space.values() if d.kind == "fit"), None)
    if fit is not None:
        assert fit.low is not None and fit.high is not None
        width = fit_width(cfg, space.budget, fit.low, fit.high)
        trial.storage.set_trial_system_attr(trial._trial_id, FITTED_WIDTH, width)
        trial.set_user_attr(WIDTH, width)  # a dashboard column
        # even the narrowest breaks the budget: keep it, the pre-screen prunes it
        cfg = with_overrides(cfg, {"model.width": width if width is not None else fit.low}, space.source)
    return cfg


def _suggest_one(trial: Any, key: str, dist: Dist) -> Any:
    if dist.kind == "categorical":
        choices = dist.choices or []
        return decode_choice(trial.suggest_categorical(key, [encode_choice(c) for c in choices]), choices)
    assert dist.low is not None and dist.high is not None
    if dist.kind == "int":
        return trial.suggest_int(key, int(dist.low), int(dist.high), step=int(dist.step or 1), log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


__all__ = ["METRICS", "Budget", "Dist", "Space", "SpaceFile", "load_space", "suggest"]
