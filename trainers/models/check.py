"""Checks of a user's builder before anything trains, each failure one :class:`ModelError` line
naming the file and the cause: the knobs it takes, a forward pass on a dummy batch of the data's
shape (output ``(batch, num_classes)``, finite), and the source file's identity (``model.sha256``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from hps.trainers.config import ARGS_PREFIX, ModelConfig, TrainConfig
from hps.trainers.errors import ModelError
from hps.trainers.models._registry import _REGISTRY, model_entry, sha256_of

_DEFAULTS = {"width": 1.0, "depth": 1.0, "dropout": 0.0}
MAX_PARAMS = 2**30  # 4 GiB of fp32 weights: far past a small image classifier, short of a machine's memory


def is_own(name: str) -> bool:
    """A builder that is not one of hps's families (a reference or an entry point)."""
    return name not in _REGISTRY


def check_knobs(model: ModelConfig, searched: Iterable[str] = (), where: str = "") -> None:
    """Refuse a knob the builder does not take, set in the config or searched by a space."""
    if not is_own(model.name):
        if model.args:
            raise ModelError(f"{where}model.args: {model.name} is one of hps's families, which take no arguments beyond "
                             "the knobs; model.args is for your own builder")
        return
    entry = model_entry(model.name, model.sha256)
    names, var_kw = entry.accepts()
    if var_kw:
        return
    searched = set(searched)
    takes = ", ".join(sorted(names)) or "no arguments"
    for knob, default in _DEFAULTS.items():
        if (getattr(model, knob) != default or f"model.{knob}" in searched) and knob not in names:
            how = "searched" if f"model.{knob}" in searched else f"set to {getattr(model, knob):g}"
            raise ModelError(f"{where}model.{knob}: {how}, but {model.name!r} does not take {knob} (it takes {takes}); "
                             f"leave model.{knob} out, or add a {knob} argument to the builder")
    if model.channel_divisor != 8:
        raise ModelError(f"{where}model.channel_divisor: {model.channel_divisor} only applies to hps's families; "
                         f"{model.name!r} rounds its own channels")
    for arg in [*model.args, *(k.removeprefix(ARGS_PREFIX) for k in searched if k.startswith(ARGS_PREFIX))]:
        if arg not in names:
            raise ModelError(f"{where}model.args.{arg}: {model.name!r} does not take {arg} (it takes {takes})")


def check_model(cfg: TrainConfig, num_classes: int, channels: int, side: int) -> None:
    """Build the config's model on the CPU and run a dummy batch of the data's shape through it:
    the output must be ``(batch, num_classes)`` and finite. For a user's builder (hps's families
    are tested)."""
    if not is_own(cfg.model.name):
        return
    name = cfg.model.name
    check_knobs(cfg.model)
    with torch.device("meta"):  # its size first, without memory: arguments can make any builder huge
        n_params = sum(p.numel() for p in cfg.model.build(num_classes, channels, side).parameters())
    if n_params == 0:
        raise ModelError(f"model.name {name!r}: the model has no parameters to train")
    if n_params > MAX_PARAMS:
        raise ModelError(f"model.name {name!r}: {n_params:,} parameters with model.args {cfg.model.args} and width "
                         f"{cfg.model.width:g}, over the {MAX_PARAMS:,} hps builds; check the builder's arguments")
    model = cfg.model.build(num_classes, channels, side)
    x = torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(0))
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ModelError(f"model.name {name!r}: a forward pass on a batch of shape (2, {channels}, {side}, {side}) raised "
                         f"{type(e).__name__}: {first}") from None
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"model.name {name!r}: the model returned {type(out).__name__}; expected a tensor of logits "
                         f"(batch, {num_classes})")
    if tuple(out.shape) != (2, num_classes):
        raise ModelError(f"model.name {name!r}: output shape {tuple(out.shape)} on a batch of shape (2, {channels}, "
                         f"{side}, {side}); expected (2, {num_classes}): (batch, num_classes)")
    if not torch.isfinite(out).all():
        raise ModelError(f"model.name {name!r}: the output holds NaN or inf on a random batch; check the forward pass")


def pin_model(cfg: TrainConfig) -> TrainConfig:
    """The config with ``model.sha256`` set to its builder's source file (a user's own builder), so
    a result says what code it ran; a config that records another sha256 is refused."""
    if not is_own(cfg.model.name):
        return cfg
    entry = model_entry(cfg.model.name, cfg.model.sha256)  # a file of another sha256 is refused here
    if entry.source is None:
        return cfg
    actual = sha256_of(entry.source)
    if cfg.model.sha256 is not None and actual != cfg.model.sha256 and not cfg.model.name.split(":")[0].endswith(".py"):
        raise ModelError(f"model.name {cfg.model.name!r}: {entry.source} has sha256 {actual[:12]}, not the recorded "
                         f"model.sha256 {cfg.model.sha256[:12]}; the model code changed since this config was made "
                         "(retrain with --allow-model-change to build it as it is now)")
    return cfg if cfg.model.sha256 else cfg.replace("model", sha256=actual)
