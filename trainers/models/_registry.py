"""Model registry (timm style): a family is a function registered by name, or a user's own builder.

``model.name`` is one of:

- a registered family (``resnet18``: ``hps models`` lists them), or one a package registers through
  the ``hps.models`` entry point group (``[project.entry-points."hps.models"] mycnn = "pkg.mod:build"``);
- ``package.module:function``: an importable builder;
- ``path/to/file.py:function``: a builder in a file (relative to the config file that names it).

A builder takes the knobs it wants among ``num_classes``, ``in_channels``, ``image_size``,
``width``, ``depth``, ``dropout`` (the data gives the first three), plus ``model.args``; it returns
an ``nn.Module`` mapping ``(batch, in_channels, side, side)`` to ``(batch, num_classes)`` logits.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from hps.trainers.config import CHANNEL_DIVISORS
from hps.trainers.errors import ModelError

ModelFn = Callable[..., nn.Module]
ENTRY_POINTS = "hps.models"
_REFERENCE = re.compile(r"^(?P<where>.+?):(?P<fn>[A-Za-z_]\w*)$")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: ModelFn
    summary: str
    source: str | None = None  # the file a user builder lives in (None: hps's own families)

    def accepts(self) -> tuple[set[str], bool]:
        """(the keyword arguments the builder names, whether it takes ``**kwargs``)."""
        params = inspect.signature(self.fn).parameters.values()
        names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        return names, any(p.kind == p.VAR_KEYWORD for p in params)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(summary: str) -> Callable[[ModelFn], ModelFn]:
    """Register ``fn(num_classes, in_channels, width, depth, dropout) -> nn.Module`` under its own name."""

    def deco(fn: ModelFn) -> ModelFn:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, fn, summary)
        return fn

    return deco


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINTS)}


def list_models() -> list[str]:
    """hps's families and those packages register under the ``hps.models`` entry point group."""
    return sorted({*_REGISTRY, *_entry_points()})


def is_reference(name: str) -> bool:
    """``pkg.module:function`` or ``file.py:function``: a user's own builder."""
    return _REFERENCE.match(name) is not None


# sha256 -> a copy of a model file's source (Ray ships a space's model files with it; a worker
# whose disk lacks the file, or holds another version, builds from the copy)
_COPIES: dict[str, str] = {}


def install_sources(sources: Mapping[str, tuple[str, str]]) -> None:
    """Keep copies of model files shipped with a space (sha256 -> (file name, text)) under
    ``~/.cache/hps/models/<sha256>/``: a builder whose file this machine lacks, or holds in another
    version, is built from the copy of the version the study was started with."""
    from hps.trainers.data import cache_dir

    for sha, (name, text) in sources.items():
        if sha in _COPIES:
            continue
        if hashlib.sha256(text.encode()).hexdigest() != sha:
            raise ModelError(f"the shipped copy of {name} does not match its sha256 {sha[:12]}")
        path = cache_dir() / "models" / sha / name
        if not path.is_file() or sha256_of(path) != sha:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        _COPIES[sha] = str(path)


def sha256_of(path: str | Path) -> str:
    """The file's sha256, read now (a user's code may change between two reads)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_file(path: Path, sha256: str | None, name: str, key: str = "model.name") -> tuple[ModuleType, Path]:
    """The module of a user's file (one per content: the same code loaded once) and the file it
    was read from here: its source for pinning, which another copy of the same code must not stand in for."""
    here = path if path.is_file() else None
    if sha256 is not None and (here is None or sha256_of(here) != sha256):
        copy = _COPIES.get(sha256)
        if copy is None:
            found = f"has sha256 {sha256_of(here)[:12]}" if here else "is missing"
            pinned, code = ("model.sha256", "model") if key == "model.name" else ("train.fn_sha256", "training")
            raise ModelError(f"{key} {name!r}: {path} {found}, not the recorded {pinned} {sha256[:12]}; "
                             f"the {code} code changed since this config was made (retrain with --allow-model-change "
                             "to run the file as it is now)")
        here = Path(copy)
    if here is None:
        raise ModelError(f"{key} {name!r}: {path}: no such file")
    digest = sha256_of(here)
    module_name = f"hps_user_model_{digest[:16]}"
    if module_name in sys.modules:
        return sys.modules[module_name], here
    spec = importlib.util.spec_from_file_location(module_name, here)
    if spec is None or spec.loader is None:
        raise ModelError(f"{key} {name!r}: {here}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise ModelError(f"{key} {name!r}: importing {here} failed: {_cause(e)}") from None
    return module, here


def _cause(e: BaseException) -> str:
    where = ""
    if isinstance(e, SyntaxError) and e.lineno:
        where = f" (line {e.lineno})"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}{where}: {text}" if text else type(e).__name__


def model_entry(name: str, sha256: str | None = None) -> ModelEntry:
    """The builder ``name`` stands for; a user file must have ``sha256`` when one is given."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    eps = _entry_points()
    if name in eps:
        try:
            fn = eps[name].load()
        except Exception as e:
            raise ModelError(f"model.name {name!r}: its entry point {eps[name].value} failed to load: {_cause(e)}") from None
        return ModelEntry(name, _callable(fn, name), f"entry point {eps[name].value}", _module_file(fn))
    if _REFERENCE.match(name) is None:
        raise ModelError(f"model.name {name!r} is not allowed; choose one of {', '.join(list_models())}, or give your own "
                         "builder as package.module:function or path/to/file.py:function")
    fn, source = load_reference(name, sha256)
    return ModelEntry(name, _callable(fn, name), (inspect.getdoc(fn) or "your builder").splitlines()[0], source)


def load_reference(name: str, sha256: str | None = None, key: str = "model.name") -> tuple[Any, str | None]:
    """The object ``package.module:function`` or ``path/to/file.py:function`` names, and its source
    file; a file must have ``sha256`` when one is given (else its shipped copy is used). Errors are
    one line naming ``key``."""
    m = _REFERENCE.match(name)
    if m is None:
        raise ModelError(f"{key} {name!r} is not allowed; expected package.module:function or path/to/file.py:function")
    where, fn_name = m.group("where"), m.group("fn")
    source: str | None = None
    if where.endswith(".py"):
        module, here = _load_file(Path(where).expanduser(), sha256, name, key)
        source = str(here)
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise ModelError(f"{key} {name!r}: cannot import {where}: {_cause(e)}") from None
    if not hasattr(module, fn_name):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:8]
        raise ModelError(f"{key} {name!r}: {getattr(module, '__file__', where)} has no {fn_name!r}; "
                         f"callables there: {', '.join(found) or 'none'}")
    return getattr(module, fn_name), source or getattr(module, "__file__", None)


def _callable(fn: Any, name: str) -> ModelFn:
    if not callable(fn):
        raise ModelError(f"model.name {name!r}: {type(fn).__name__} is not callable; name a function that returns an "
                         "nn.Module")
    return fn


def _module_file(fn: Any) -> str | None:
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    return getattr(module, "__file__", None)


CHANNEL_DIVISOR: ContextVar[int] = ContextVar("channel_divisor", default=8)


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: float = 1.0,
                 depth: float = 1.0, dropout: float = 0.0, channel_divisor: int = 8,
                 args: Mapping[str, Any] | None = None, sha256: str | None = None) -> nn.Module:
    """Build a model. hps's families take ``width`` (every channel count, rounded by
    :func:`round_channels` to multiples of ``channel_divisor``) and ``depth`` (every repeat count,
    :func:`round_repeats`); a user builder gets the knobs its signature names, plus ``args``."""
    if width <= 0 or depth <= 0:
        raise ValueError(f"width and depth must be > 0, got width={width}, depth={depth}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if channel_divisor not in CHANNEL_DIVISORS:
        raise ValueError(f"channel_divisor must be one of {CHANNEL_DIVISORS}, got {channel_divisor}")
    entry = model_entry(name, sha256)
    if args and name in _REGISTRY:
        raise ModelError(f"model.args: {name} is one of hps's families, which take no arguments beyond the knobs; "
                         "model.args is for your own builder")
    names, var_kw = entry.accepts()
    knobs = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size, "width": width,
             "depth": depth, "dropout": dropout}
    kwargs = {k: v for k, v in knobs.items() if var_kw or k in names}
    kwargs.update(args or {})
    token = CHANNEL_DIVISOR.set(channel_divisor)
    try:
        model = entry.fn(**kwargs)
    except Exception as e:
        if entry.source is None and name in _REGISTRY:
            raise
        raise ModelError(f"model.name {name!r}: the builder raised {_cause(e)}") from None
    finally:
        CHANNEL_DIVISOR.reset(token)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.name {name!r}: the builder returned {type(model).__name__}, not a torch.nn.Module")
    return model


def materialize(model: nn.Module, in_channels: int, side: int, name: str) -> nn.Module:
    """Give a model with lazy modules (``nn.LazyLinear``, ...) its parameters: one forward pass of a
    dummy batch, in eval mode, on the device its parameters are on (the meta device for the meter)."""
    from torch.nn.modules.lazy import LazyModuleMixin

    if not any(isinstance(m, LazyModuleMixin) for m in model.modules()):
        return model
    import torch

    device = next((b.device for b in model.buffers()), torch.get_default_device())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, in_channels, side, side, device=device))
    except Exception as e:
        raise ModelError(f"model.name {name!r}: a forward pass on a batch of shape (2, {in_channels}, {side}, {side}) "
                         f"raised {_cause(e)}") from None
    finally:
        model.train(was_training)
    return model


def round_channels(channels: float, width: float = 1.0, divisor: int | None = None, min_value: int | None = None) -> int:
    """The one rounding helper for every width: ``channels * width`` to a multiple of ``divisor``
    (default: the ``channel_divisor`` the model is being built with, 8 unless asked), never below
    ``min_value`` (default ``divisor``) nor more than 10% below the exact value. Divisor 1 gives
    exact counts (report 001's 42/84/168/336 is width 0.65625 at divisor 1)."""
    divisor = CHANNEL_DIVISOR.get() if divisor is None else divisor
    v = channels * width
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


def round_repeats(repeats: int, depth: float = 1.0) -> int:
    """Block repeats scaled by the depth multiplier, at least one."""
    return max(1, round(repeats * depth))
