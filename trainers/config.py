"""The trainer's config: one dataclass per YAML section, strict keys, one-line errors.

The YAML keys are a public contract (``hps retrain`` takes exported files unchanged)::

    model:     {name, width, depth, dropout}
    data:      {dataset, root, path, val_fraction, subset, split_seed, download}
    optimizer: {name, lr, momentum, nesterov, weight_decay, beta1, beta2}
    schedule:  {name, warmup_epochs, eta_min, step_size, gamma, milestones, t0, t_mult, pct_start}
    augment:   {strength, policy, mixup_alpha, cutmix_alpha}
    train:     {epochs, batch_size, label_smoothing, precision, channels_last, compile, seed, device}

Every error is a :class:`ConfigError` whose message is one line naming the file, the dotted key,
the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

OPTIMIZERS = ("sgd", "adam", "adamw", "radam")
SCHEDULES = ("none", "step", "multistep", "cosine", "sgdr", "onecycle")
POLICIES = ("none", "basic", "randaugment", "trivialaugment", "autoaugment", "augmix")
DATASETS = ("cifar10", "cifar100")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Top-level keys that a config file may carry and the trainer ignores (export writes them).
IGNORED_SECTIONS = ("provenance",)


class ConfigError(ValueError):
    """A bad config value; the message is one line: ``file: key: value ... allowed``."""


def _model_names() -> tuple[str, ...]:
    from trainers.models import list_models  # late import: models import nothing from here

    return tuple(list_models())


def _opt(default: Any, *, choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
         ge: float | None = None, gt: float | None = None, le: float | None = None,
         lt: float | None = None, doc: str = "") -> Any:
    meta = {"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    name: str = _opt("resnet18", choices=_model_names, doc="registered model family")
    width: float = _opt(1.0, gt=0.0, le=8.0, doc="multiplier of the family's standard channels")
    depth: float = _opt(1.0, gt=0.0, le=4.0, doc="multiplier of the family's block repeats")
    dropout: float = _opt(0.0, ge=0.0, lt=1.0, doc="dropout before the classifier")


@dataclass
class DataConfig:
    dataset: str = _opt("cifar10", choices=DATASETS)
    root: str = _opt("~/.cache/hps", doc="torchvision dataset folder")
    path: str | None = _opt(None, doc="an .npz like cifar10-mini.npz; else $HPS_DATA; else root")
    val_fraction: float = _opt(0.1, ge=0.0, lt=1.0, doc="validation carved from train")
    subset: int | None = _opt(None, ge=10, doc="keep this many training images (stratified)")
    split_seed: int = _opt(0, ge=0, doc="seed of the subset and validation split")
    download: bool = _opt(True, doc="download torchvision CIFAR if missing")


@dataclass
class OptimizerConfig:
    name: str = _opt("sgd", choices=OPTIMIZERS)
    lr: float = _opt(0.1, gt=0.0, le=10.0)
    momentum: float = _opt(0.9, ge=0.0, lt=1.0, doc="sgd only")
    nesterov: bool = _opt(True, doc="sgd only")
    weight_decay: float = _opt(5e-4, ge=0.0, le=1.0, doc="not applied to norm and bias params")
    beta1: float = _opt(0.9, ge=0.0, lt=1.0, doc="adam, adamw, radam")
    beta2: float = _opt(0.999, ge=0.0, lt=1.0, doc="adam, adamw, radam")


@dataclass
class ScheduleConfig:
    name: str = _opt("cosine", choices=SCHEDULES)
    warmup_epochs: float = _opt(0.0, ge=0.0, doc="linear warmup, any schedule")
    eta_min: float = _opt(0.0, ge=0.0, doc="cosine/sgdr/onecycle floor (absolute lr)")
    step_size: float = _opt(30.0, gt=0.0, doc="step: epochs between decays")
    gamma: float = _opt(0.1, gt=0.0, le=1.0, doc="step/multistep decay factor")
    milestones: list[float] = _opt([], doc="multistep: increasing epochs")
    t0: float = _opt(10.0, gt=0.0, doc="sgdr: first period in epochs")
    t_mult: float = _opt(2.0, ge=1.0, doc="sgdr: period growth")
    pct_start: float = _opt(0.3, gt=0.0, lt=1.0, doc="onecycle: rising fraction")


@dataclass
class AugmentConfig:
    strength: float = _opt(0.5, ge=0.0, le=1.0, doc="scales the policy's magnitudes")
    policy: str = _opt("basic", choices=POLICIES)
    mixup_alpha: float = _opt(0.0, ge=0.0, le=10.0)
    cutmix_alpha: float = _opt(0.0, ge=0.0, le=10.0)


@dataclass
class TrainSection:
    epochs: int = _opt(30, ge=1, le=10_000)
    batch_size: int = _opt(128, ge=1, le=65_536)
    label_smoothing: float = _opt(0.0, ge=0.0, lt=1.0)
    precision: str = _opt("auto", choices=PRECISIONS, doc="auto: bf16 on CUDA, fp32 on CPU")
    channels_last: bool = _opt(True)
    compile: bool = _opt(False)
    seed: int = _opt(0, ge=0)
    device: str = _opt("auto", doc="auto, cpu, cuda or cuda:N")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainSection = field(default_factory=TrainSection)


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))
_BOUNDS = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return value as type tp (str, int, float, bool, X | None, list[float]) or raise."""
    text = tp.__name__ if isinstance(tp, type) else str(tp)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{where}: null is not allowed; expected {text.replace(' | None', '')}")
    base = text.replace(" | None", "")
    if base == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {_fmt(value)} is not allowed; expected true or false")
    if base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: {_fmt(value)} is not allowed; expected an integer")
    if base == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):  # YAML 1.1 reads 5e-4 as str
            return float(value)
        raise ConfigError(f"{where}: {_fmt(value)} is not allowed; expected a number")
    if base == "str":
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: {_fmt(value)} is not allowed; expected a string")
    if base == "list[float]":
        if isinstance(value, (list, tuple)):
            return [_coerce(v, float, f"{where}[{i}]") for i, v in enumerate(value)]
        raise ConfigError(f"{where}: {_fmt(value)} is not allowed; expected a list of numbers")
    raise TypeError(f"unsupported config type {text}")  # pragma: no cover - programming error


def _check(value: Any, meta: Mapping[str, Any], where: str, shown: Any = None) -> None:
    """Validate choices and bounds; messages show ``shown`` (the value as written) if given."""
    if value is None:
        return
    text = _fmt(value if shown is None else shown)
    choices = meta.get("choices")
    if choices is not None:
        allowed = choices() if callable(choices) else choices
        if value not in allowed:
            raise ConfigError(f"{where}: {text} is not allowed; choose one of {', '.join(allowed)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: {text} is not allowed; expected a finite number")
        for key, op in _BOUNDS.items():
            bound = meta.get(key)
            if bound is not None and not op(value, bound):
                raise ConfigError(f"{where}: {text} is out of range; allowed {_range_text(meta)}")


def _range_text(meta: Mapping[str, Any]) -> str:
    parts = [f"{op} {meta[k]:g}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
             if meta.get(k) is not None]
    return " and ".join(parts)


def _build_section(cls: type, raw: Any, source: str, section: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: {section}: expected a mapping of keys, got {_fmt(raw)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: {section}.{unknown[0]}: unknown key; allowed keys: {', '.join(fields)}")
    values = {}
    for name, value in raw.items():
        where = f"{source}: {section}.{name}"
        coerced = _coerce(value, hints[name], where)
        _check(coerced, fields[name].metadata, where, shown=value)
        values[name] = coerced
    return cls(**values)


def _cross_check(cfg: TrainConfig, source: str) -> None:
    ms = cfg.schedule.milestones
    if any(b <= a for a, b in itertools.pairwise(ms)) or any(m <= 0 for m in ms):
        raise ConfigError(f"{source}: schedule.milestones: {_fmt(ms)} is not allowed; "
                          "expected increasing positive epochs")
    if cfg.schedule.name == "multistep" and not ms:
        raise ConfigError(f"{source}: schedule.milestones: [] is not allowed with schedule.name 'multistep'; "
                          "give at least one epoch")
    dev = cfg.train.device
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", dev):
        raise ConfigError(f"{source}: train.device: {_fmt(dev)} is not allowed; "
                          "choose one of auto, cpu, cuda, cuda:N, mps")


def config_from_dict(raw: Mapping[str, Any] | None, source: str = "<config>") -> TrainConfig:
    """Build a validated config from nested dicts (missing keys take defaults)."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping with sections {', '.join(SECTIONS)}, "
                          f"got {_fmt(raw)}")
    unknown = sorted(set(raw) - set(SECTIONS) - set(IGNORED_SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: unknown section; allowed sections: {', '.join(SECTIONS)}")
    hints = get_type_hints(TrainConfig)
    cfg = TrainConfig(**{s: _build_section(hints[s], raw.get(s), source, s) for s in SECTIONS})
    _cross_check(cfg, source)
    return cfg


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def read_yaml(path: str | Path, error: type[Exception] = ConfigError) -> Any:
    """Parse a YAML file; a missing file or bad YAML raises ``error`` with one line."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise error(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None


def load_config(path: str | Path) -> TrainConfig:
    """Read a retrain YAML file; a ``provenance`` block, if present, is ignored."""
    return config_from_dict(read_yaml(path), str(path))


def dump_config(cfg: TrainConfig, path: str | Path | None = None, extra: Mapping[str, Any] | None = None) -> str:
    """YAML text of the config (sections in contract order), optionally written to path."""
    data: dict[str, Any] = config_to_dict(cfg)
    if extra:
        data.update(extra)
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    if path is not None:
        Path(path).write_text(text)
    return text


def flat_keys() -> list[str]:
    """Every dotted key a config has, e.g. ``optimizer.lr``."""
    hints = get_type_hints(TrainConfig)
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(hints[s])]


def with_overrides(cfg: TrainConfig | Mapping[str, Any], overrides: Mapping[str, Any],
                   source: str = "<overrides>") -> TrainConfig:
    """Apply dotted-key overrides (``{"optimizer.lr": 0.05}``) and validate the result."""
    data = config_to_dict(cfg) if isinstance(cfg, TrainConfig) else _deep_copy(cfg)
    allowed = flat_keys()
    for key, value in overrides.items():
        if key not in allowed:
            raise ConfigError(f"{source}: {key}: not a trainer key; allowed: {', '.join(allowed)}")
        section, name = key.split(".", 1)
        sec = data.setdefault(section, {})
        if sec is None:
            sec = data[section] = {}
        sec[name] = value
    return config_from_dict(data, source)


def check_value(key: str, value: Any, source: str = "<value>") -> Any:
    """Validate one dotted key's value on its own (type, choices, range); returns it coerced."""
    if key not in flat_keys():
        raise ConfigError(f"{source}: {key}: not a trainer key; allowed: {', '.join(flat_keys())}")
    section, name = key.split(".", 1)
    cls = get_type_hints(TrainConfig)[section]
    fld = {f.name: f for f in dataclasses.fields(cls)}[name]
    where = f"{source}: {key}"
    coerced = _coerce(value, get_type_hints(cls)[name], where)
    _check(coerced, fld.metadata, where, shown=value)
    return coerced


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}


def describe_keys() -> Iterable[tuple[str, str, str, str]]:
    """(key, type, default, allowed) for every key: used by docs and ``hps models``."""
    hints = get_type_hints(TrainConfig)
    for s in SECTIONS:
        sub = hints[s]
        sub_hints = get_type_hints(sub)
        for f in dataclasses.fields(sub):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            choices = f.metadata.get("choices")
            allowed = ", ".join(choices() if callable(choices) else choices) if choices else _range_text(f.metadata)
            yield f"{s}.{f.name}", str(sub_hints[f.name]), _fmt(default), allowed
