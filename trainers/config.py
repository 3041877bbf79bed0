"""The trainer's config: one flat pydantic model per YAML section, unknown keys rejected.

The YAML keys are a public contract (``hps retrain`` takes exported files unchanged)::

    model:     {name, width, depth, dropout, channel_divisor, args, sha256}
    data:      {dataset, root, path, sha256, val_fraction, subset, split_seed, download, image_size, test_fraction}
    optimizer: {name, lr, momentum, nesterov, weight_decay, beta1, beta2}
    schedule:  {name, warmup_epochs, eta_min, period, step_size, gamma, milestones, t0, t_mult, pct_start,
                finetune_epochs, finetune_lr, finetune_eta_min}
    augment:   {strength, policy, mixup_alpha, cutmix_alpha, augmix_jsd, pick_one, rotate, translate,
                perspective, hue, grayscale, finetune_mixup_alpha}
    train:     {epochs, batch_size, label_smoothing, precision, channels_last, compile, compile_mode, seed,
               device, fn, args, fn_sha256}

Every error is a :class:`ConfigError` whose message is one line naming the file, the dotted key,
the value and what is allowed (:mod:`trainers.validation` formats it).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from hps.trainers.errors import ConfigError
from hps.trainers.validation import (
    Flag,
    Integer,
    Number,
    OptInteger,
    OptNumber,
    OptText,
    Strict,
    Text,
    error_line,
    one_of,
    show,
)

if TYPE_CHECKING:
    from torch import nn

OPTIMIZERS = ("sgd", "adam", "adamw", "radam")
SCHEDULES = ("none", "step", "multistep", "cosine", "sgdr", "onecycle")
POLICIES = ("none", "basic", "randaugment", "trivialaugment", "autoaugment", "augmix")
PICK_ONE_OPS = ("resized_crop", "affine", "flip")
DATASETS = ("cifar10", "cifar100")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's modes
CHANNEL_DIVISORS = (1, 2, 4, 8)
# Top-level keys that a config file may carry and the trainer ignores (export writes them).
IGNORED_SECTIONS = ("provenance",)


def _model_names() -> tuple[str, ...]:
    from hps.trainers.models import list_models  # late import: the families need torch

    return tuple(list_models())


def _sha256_hex(v: str | None) -> str | None:
    if v is not None and not re.fullmatch(r"[0-9a-f]{64}", v):
        raise PydanticCustomError("hps", "is not allowed; expected 64 lowercase hex digits")
    return v


Sha256 = Annotated[OptText, AfterValidator(_sha256_hex)]  # a file's (or a folder's content) sha256
MODEL_ARG = re.compile(r"^[A-Za-z_]\w*$")
ARGS_PREFIX = "model.args."  # a searchable key per builder argument: model.args.NAME
ARGS_PREFIXES = (ARGS_PREFIX, "train.args.")  # ... and per argument of the user's training function


def args_key(key: str) -> tuple[str, str] | None:
    """``("model", NAME)`` for ``model.args.NAME``, ``("train", NAME)`` for ``train.args.NAME``, else None."""
    for prefix in ARGS_PREFIXES:
        name = key.removeprefix(prefix)
        if name != key and MODEL_ARG.match(name):
            return prefix.split(".")[0], name
    return None


def _check_args(v: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of a user's builder or training function: Python names, plain values."""
    for key, value in v.items():
        if not MODEL_ARG.match(str(key)):
            raise PydanticCustomError("hps", "key {key!r} is not allowed; arguments are Python names", {"key": key})
        if not _plain(value):
            raise PydanticCustomError("hps", "{key}: expected a number, string, bool, null or a list of them",
                                      {"key": key})
    return v


class ModelConfig(Strict):
    name: Text = Field("resnet18", description="a family (hps models), or your builder: package.module:function or "
                       "path/to/file.py:function (relative to the config file)")
    width: Number = Field(1.0, gt=0.0, le=8.0, description="multiplier of the family's standard channels")
    depth: Number = Field(1.0, gt=0.0, le=4.0, description="multiplier of the family's block repeats")
    dropout: Number = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classifier")
    channel_divisor: Integer = Field(8, description="channels * width round to multiples of this: 1, 2, 4 or 8 "
                                     "(1: exact counts)")
    args: dict[str, Any] = Field(default_factory=dict, description="more keyword arguments of your builder "
                                 "(searchable as model.args.NAME)")
    sha256: Sha256 = Field(None, description="the sha256 of your builder's file; set, a changed file is refused")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from hps.trainers.models._registry import is_reference

        if not is_reference(v) and v not in _model_names():
            raise PydanticCustomError("hps", "is not allowed; choose one of {allowed}, or your own builder as "
                                      "package.module:function or path/to/file.py:function",
                                      {"allowed": ", ".join(_model_names())})
        return v

    @field_validator("args")
    @classmethod
    def _args(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_args(v)


    @field_validator("channel_divisor")
    @classmethod
    def _divisor(cls, v: int) -> int:
        if v not in CHANNEL_DIVISORS:
            raise PydanticCustomError("hps", "is not allowed; choose one of {allowed}",
                                      {"allowed": ", ".join(map(str, CHANNEL_DIVISORS))})
        return v

    def build(self, num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
        """The ``torch.nn.Module`` this section describes (every knob passed to ``create_model``)."""
        from hps.trainers.models import create_model
        from hps.trainers.models._registry import materialize

        model = create_model(self.name, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                             width=self.width, depth=self.depth, dropout=self.dropout,
                             channel_divisor=self.channel_divisor, args=self.args, sha256=self.sha256)
        return materialize(model, in_channels, image_size, self.name)


def _plain(value: Any) -> bool:
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


class DataConfig(Strict):
    dataset: Annotated[OptText, one_of(DATASETS)] = Field(None, description="CIFAR by name (default cifar10 when "
                                                          "data.path is not set); with data.path, the file must hold it")
    root: Text = Field("~/.cache/hps", description="torchvision dataset folder (downloads land here)")
    path: OptText = Field(None, description="your images: an .npz (x_train N x H x W [x C] uint8, y_train, ...) or a "
                          "folder of <class>/<image> (ImageFolder); relative to the config file")
    sha256: Sha256 = Field(None, description="the data's sha256 (an .npz's bytes, a folder's content hash); set, other "
                            "data is refused")
    val_fraction: Number = Field(0.1, ge=0.0, lt=1.0, description="validation carved from train")
    subset: OptInteger = Field(None, ge=10, description="keep this many training images (stratified)")
    split_seed: Integer = Field(0, ge=0, description="seed of the subset and validation split")
    download: Flag = Field(True, description="download torchvision CIFAR if missing")
    image_size: OptInteger = Field(None, ge=8, le=512, description="side the model sees (default: the images' own): "
                                   "images are augmented at their side, then resized on the device (bilinear); a "
                                   "folder of mixed sizes is resized to it when decoded; report 003 trains at 128")
    test_fraction: Number = Field(0.2, gt=0.0, lt=1.0, description="a folder without test/: this fraction of each "
                                  "class is held out as the test split")

    @property
    def name(self) -> str | None:
        """The CIFAR named by the config: ``dataset``, else cifar10 when no ``path`` is given."""
        return self.dataset or (None if self.path else "cifar10")



class OptimizerConfig(Strict):
    name: Annotated[Text, one_of(OPTIMIZERS)] = "sgd"
    lr: Number = Field(0.1, gt=0.0, le=10.0)
    momentum: Number = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    nesterov: Flag = Field(True, description="sgd only")
    weight_decay: Number = Field(5e-4, ge=0.0, le=1.0, description="not applied to norm and bias params")
    beta1: Number = Field(0.9, ge=0.0, lt=1.0, description="adam, adamw, radam")
    beta2: Number = Field(0.999, ge=0.0, lt=1.0, description="adam, adamw, radam")


class ScheduleConfig(Strict):
    name: Annotated[Text, one_of(SCHEDULES)] = "cosine"
    warmup_epochs: Number = Field(0.0, ge=0.0, description="linear warmup, any schedule")
    eta_min: Number = Field(0.0, ge=0.0, description="cosine/sgdr/onecycle floor (absolute lr)")
    period: OptNumber = Field(None, gt=0.0, description="cosine: T_max in epochs (default: the whole run); "
                              "past it the lr rises again, as PyTorch's CosineAnnealingLR")
    step_size: Number = Field(30.0, gt=0.0, description="step: epochs between decays")
    gamma: Number = Field(0.1, gt=0.0, le=1.0, description="step/multistep decay factor")
    milestones: list[Number] = Field(default_factory=list, description="multistep: increasing epochs")
    t0: Number = Field(10.0, gt=0.0, description="sgdr: first period in epochs (cycles are fitted to end at the last epoch)")
    t_mult: Number = Field(2.0, ge=1.0, description="sgdr: period growth")
    pct_start: Number = Field(0.3, gt=0.0, lt=1.0, description="onecycle: rising fraction")
    finetune_epochs: Integer = Field(0, ge=0, description="the last N of train.epochs are a fine-tuning stage: "
                                     "cosine from finetune_lr to finetune_eta_min; the schedule above spans the epochs before")
    finetune_lr: OptNumber = Field(None, gt=0.0, le=10.0, description="the fine-tuning stage's starting lr")
    finetune_eta_min: Number = Field(0.0, ge=0.0, description="the fine-tuning stage's final lr")

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, ms: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(ms)) or any(m <= 0 for m in ms):
            raise PydanticCustomError("hps", "is not allowed; expected increasing positive epochs")
        return ms


class AugmentConfig(Strict):
    strength: Number = Field(0.5, ge=0.0, le=1.0, description="scales the policy's magnitudes")
    policy: Annotated[Text, one_of(POLICIES)] = "basic"
    mixup_alpha: Number = Field(0.0, ge=0.0, le=10.0)
    cutmix_alpha: Number = Field(0.0, ge=0.0, le=10.0)
    augmix_jsd: Flag = Field(False, description="augmix: train on the clean image and two AugMix views with "
                             "the Jensen-Shannon consistency loss (weight 12), as the AugMix paper")
    pick_one: list[Annotated[Text, one_of(PICK_ONE_OPS)]] = Field(
        default_factory=list, description="per image, one op drawn from these: resized_crop, affine, flip")
    rotate: Number = Field(0.0, ge=0.0, le=180.0, description="random rotation, +- degrees, per image")
    translate: Number = Field(0.0, ge=0.0, le=0.5, description="random shift, +- this fraction of the side, per image")
    perspective: Number = Field(0.0, ge=0.0, le=1.0, description="random perspective distortion (p 0.5), per image")
    hue: Number = Field(0.0, ge=0.0, le=0.5, description="random hue shift, +- this fraction of a turn, per image")
    grayscale: Number = Field(0.0, ge=0.0, le=1.0, description="probability of grayscale, per image (after the policy)")
    finetune_mixup_alpha: OptNumber = Field(None, ge=0.0, le=10.0, description="mixup alpha in the fine-tuning "
                                            "stage (schedule.finetune_epochs); default: mixup_alpha")


class TrainSection(Strict):
    epochs: Integer = Field(30, ge=1, le=10_000)
    batch_size: Integer = Field(128, ge=1, le=65_536)
    label_smoothing: Number = Field(0.0, ge=0.0, lt=1.0)
    precision: Annotated[Text, one_of(PRECISIONS)] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    channels_last: Flag = True
    compile: Flag = False
    compile_mode: Annotated[Text, one_of(COMPILE_MODES)] = Field(
        "default", description="torch.compile's mode when compile is on: reduce-overhead captures the step in CUDA "
        "graphs (a small net on a fast GPU is bound by launching its kernels), at a compile cost a short trial may not repay")
    seed: Integer = Field(0, ge=0)
    device: Text = Field("auto", description="auto, cpu, cuda or cuda:N")
    fn: OptText = Field(None, description="your own training function instead of hps's loop: package.module:function "
                        "or path/to/file.py:function (relative to the config file); called with a context (ctx.model, "
                        "ctx.data, ctx.report, ctx.checkpoint)")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of your training function "
                                 "(ctx.args; searchable as train.args.NAME)")
    fn_sha256: Sha256 = Field(None, description="the sha256 of your training function's file; set, a changed file "
                              "is refused")

    @field_validator("fn")
    @classmethod
    def _fn(cls, v: str | None) -> str | None:
        from hps.trainers.models._registry import is_reference

        if v is not None and not is_reference(v):
            raise PydanticCustomError("hps", "is not allowed; name your training function as package.module:function "
                                      "or path/to/file.py:function")
        return v

    @field_validator("args")
    @classmethod
    def _train_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_args(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
            raise PydanticCustomError("hps", "is not allowed; choose one of auto, cpu, cuda, cuda:N, mps")
        return v

    @field_validator("compile_mode")
    @classmethod
    def _compile_mode(cls, v: str, info: ValidationInfo) -> str:
        if v != "default" and not info.data.get("compile"):
            raise PydanticCustomError("hps", "has no effect unless train.compile is true")
        return v


class TrainConfig(Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainSection = Field(default_factory=TrainSection)

    @model_validator(mode="after")
    def _cross_check(self) -> TrainConfig:
        if self.schedule.name == "multistep" and not self.schedule.milestones:
            raise ValueError("schedule.milestones: [] is not allowed with schedule.name 'multistep'; give at least one epoch")
        a = self.augment
        if a.augmix_jsd and a.policy != "augmix":
            raise ValueError(f"augment.augmix_jsd: true needs augment.policy 'augmix', not {a.policy!r}")
        if a.augmix_jsd and (a.mixup_alpha or a.cutmix_alpha or a.finetune_mixup_alpha):
            raise ValueError("augment.augmix_jsd: true does not combine with augment.mixup_alpha / cutmix_alpha / "
                             "finetune_mixup_alpha; set them to 0")
        s, ft = self.schedule, self.schedule.finetune_epochs
        if ft and s.finetune_lr is None:
            raise ValueError(f"schedule.finetune_lr: null is not allowed with schedule.finetune_epochs {ft}; give the "
                             "fine-tuning stage's starting lr")
        if ft >= self.train.epochs:
            raise ValueError(f"schedule.finetune_epochs: {ft} is not allowed with train.epochs {self.train.epochs}; "
                             "the fine-tuning stage is the last epochs of the run: allowed < train.epochs")
        return self

    def stage_augment(self, epoch: int) -> AugmentConfig:
        """The augment section in force at ``epoch`` (1-based): the fine-tuning stage's mixup alpha
        over its epochs."""
        ft, a = self.schedule.finetune_epochs, self.augment
        if ft and epoch > self.train.epochs - ft and a.finetune_mixup_alpha is not None:
            return a.model_copy(update={"mixup_alpha": a.finetune_mixup_alpha})
        return a

    def replace(self, section: str, **values: Any) -> TrainConfig:
        """A copy with some keys of one section changed (not validated: for values already checked)."""
        sec: BaseModel = getattr(self, section)
        return self.model_copy(update={section: sec.model_copy(update=values)})


SECTIONS: tuple[str, ...] = tuple(TrainConfig.model_fields)


def _section(name: str) -> type[Strict]:
    return TrainConfig.model_fields[name].annotation  # type: ignore[return-value]


def config_from_dict(raw: Mapping[str, Any] | None, source: str = "<config>") -> TrainConfig:
    """Build a validated config from nested dicts (missing keys take defaults)."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping with sections {', '.join(SECTIONS)}, got {show(raw)}")
    raw = {k: v for k, v in raw.items() if k not in IGNORED_SECTIONS}
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(error_line(source, e, TrainConfig, raw=raw)) from None


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="python")


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (YAML would keep the last
    one silently: a budget.max_params written twice loosened the budget without a word)."""


def _mapping(loader: _UniqueKeys, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)):
            continue
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is written twice in one mapping (lines {seen[key]} and {line}); keep one",
                key_node.start_mark)
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(path: str | Path, error: type[Exception] = ConfigError) -> Any:
    """Parse a YAML file; a missing file, bad YAML or a key written twice raises ``error`` with one line."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeys)
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, expected a YAML file") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise error(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None


def load_config(path: str | Path) -> TrainConfig:
    """Read a retrain YAML file; a ``provenance`` block, if present, is ignored. A relative
    ``data.path`` is relative to the file."""
    return resolve_paths(config_from_dict(read_yaml(path), str(path)), Path(path).parent)


def resolve_paths(cfg: TrainConfig, folder: str | Path) -> TrainConfig:
    """The config with a relative ``data.path`` and a relative model or training-function file
    (``file.py:function``) made absolute against ``folder`` (the folder of the file that names them), so a config means the
    same wherever it is run from."""
    if cfg.data.path is not None:
        path = Path(cfg.data.path).expanduser()
        if not path.is_absolute():
            cfg = cfg.replace("data", path=str((Path(folder) / path).resolve()))
    for section, key in (("model", "name"), ("train", "fn")):
        ref = getattr(getattr(cfg, section), key)
        where, colon, fn = (ref or "").rpartition(":")
        if colon and where.endswith(".py"):
            path = Path(where).expanduser()
            if not path.is_absolute():
                cfg = cfg.replace(section, **{key: f"{(Path(folder) / path).resolve()}:{fn}"})
    return cfg


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
    return [f"{s}.{f}" for s in SECTIONS for f in _section(s).model_fields]


def key_type(key: str) -> str:
    """The value type of a dotted key: ``int``, ``float``, ``bool``, ``str`` or ``list``."""
    section, name = key.split(".", 1)
    ann = str(_section(section).model_fields[name].annotation)
    for kind in ("list", "bool", "int", "float", "str"):
        if kind in ann:
            return kind
    raise TypeError(f"unsupported config type {ann}")  # pragma: no cover - programming error


def _unknown_key(key: str, source: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: not a trainer key; allowed: {', '.join(flat_keys())}, model.args.NAME, "
                       "train.args.NAME")


def with_overrides(cfg: TrainConfig | Mapping[str, Any], overrides: Mapping[str, Any],
                   source: str = "<overrides>") -> TrainConfig:
    """Apply dotted-key overrides (``{"optimizer.lr": 0.05}``) and validate the result."""
    data = config_to_dict(cfg) if isinstance(cfg, TrainConfig) else {
        k: (dict(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}
    allowed = flat_keys()
    for key, value in overrides.items():
        if (arg := args_key(key)) is not None:
            section, name = arg
            if not isinstance(data.get(section), dict):
                data[section] = {}
            data[section]["args"] = {**(data[section].get("args") or {}), name: value}
            continue
        if key not in allowed:
            raise _unknown_key(key, source)
        section, name = key.split(".", 1)
        if not isinstance(data.get(section), dict):
            data[section] = {}
        data[section][name] = value
    return config_from_dict(data, source)


def check_value(key: str, value: Any, source: str = "<value>") -> Any:
    """Validate one dotted key's value on its own (type, choices, range); returns it coerced."""
    if key.startswith(ARGS_PREFIXES):  # a builder's or training function's argument: any plain value
        if args_key(key) is None or not _plain(value):
            raise ConfigError(f"{source}: {key}: {show(value)} is not allowed; expected a number, string, bool or list")
        return value
    if key not in flat_keys():
        raise _unknown_key(key, source)
    section, name = key.split(".", 1)
    cls = _section(section)
    try:
        return getattr(cls.model_validate({name: value}), name)
    except ValidationError as e:
        raise ConfigError(error_line(source, e, cls, prefix=section, raw={name: value})) from None


