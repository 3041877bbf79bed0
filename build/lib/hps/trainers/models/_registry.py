"""Model registry (timm style): a family is a function registered by name."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from torch import nn

from hps.trainers.config import CHANNEL_DIVISORS

ModelFn = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: ModelFn
    summary: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(summary: str) -> Callable[[ModelFn], ModelFn]:
    """Register ``fn(num_classes, width, depth, dropout) -> nn.Module`` under its own name."""

    def deco(fn: ModelFn) -> ModelFn:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, fn, summary)
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}") from None


_DIVISOR: ContextVar[int] = ContextVar("channel_divisor", default=8)


def create_model(name: str, *, num_classes: int = 10, width: float = 1.0, depth: float = 1.0,
                 dropout: float = 0.0, channel_divisor: int = 8) -> nn.Module:
    """Build a registered family. ``width`` multiplies every channel count (rounded by
    :func:`round_channels` to multiples of ``channel_divisor``), ``depth`` every block repeat count
    (:func:`round_repeats`)."""
    if width <= 0 or depth <= 0:
        raise ValueError(f"width and depth must be > 0, got width={width}, depth={depth}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if channel_divisor not in CHANNEL_DIVISORS:
        raise ValueError(f"channel_divisor must be one of {CHANNEL_DIVISORS}, got {channel_divisor}")
    token = _DIVISOR.set(channel_divisor)
    try:
        return model_entry(name).fn(num_classes=num_classes, width=width, depth=depth, dropout=dropout)
    finally:
        _DIVISOR.reset(token)


def round_channels(channels: float, width: float = 1.0, divisor: int | None = None, min_value: int | None = None) -> int:
    """The one rounding helper for every width: ``channels * width`` to a multiple of ``divisor``
    (default: the ``channel_divisor`` the model is being built with, 8 unless asked), never below
    ``min_value`` (default ``divisor``) nor more than 10% below the exact value. Divisor 1 gives
    exact counts (report 001's 42/84/168/336 is width 0.65625 at divisor 1)."""
    divisor = _DIVISOR.get() if divisor is None else divisor
    v = channels * width
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


def round_repeats(repeats: int, depth: float = 1.0) -> int:
    """Block repeats scaled by the depth multiplier, at least one."""
    return max(1, round(repeats * depth))
