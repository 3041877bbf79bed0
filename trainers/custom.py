"""Your own training loop under hps's budgets: ``train.fn`` names a function that hps calls once per
trial (and per retrain) instead of its own loop, as ``fn(ctx, **train.args)``.

    def fit(ctx, **args):                           # spaces/models/ema_loop.py has a whole one
        opt = torch.optim.SGD(ctx.model.parameters(), lr=ctx.config.optimizer.lr, momentum=0.9)
        for epoch in range(1, ctx.epochs + 1):
            for x, y in ctx.batches():              # one epoch: shuffled, augmented, normalised, on the device
                loss = F.cross_entropy(ctx.model(x), y)
                opt.zero_grad(); loss.backward(); opt.step()
            loss, acc = ctx.evaluate()              # the validation split
            ctx.report(epoch, acc, val_loss=loss)   # the pruner and the budget act here
        return ctx.model                            # the trained weights (None: ctx.model)

What hps keeps: the budget pre-screen (``ctx.model`` is built and measured before the function is
called), the pruner and the per-epoch budgets (at :meth:`Context.report`, which raises to stop the
trial), checkpoints (:meth:`Context.checkpoint` / :meth:`Context.resume`), storage, export and
retrain (the function's file is pinned by ``train.fn_sha256``). The function's own mistakes are
one line (:class:`TrainFnError`, with the file:line where they were raised), never a prune.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hps.trainers.augment import Augmenter
from hps.trainers.config import TrainConfig
from hps.trainers.data import Data, Split
from hps.trainers.errors import EpochLimit, ModelError, TrainFnError
from hps.trainers.models._registry import load_reference, sha256_of

Metrics = dict[str, float]


@dataclass
class Context:
    """What a training function gets: the config and its ``args``, the model (built and measured),
    the data as hps loaded it (``data.train.x``: uint8 N x C x S x S on ``device``), and the calls
    that tie the loop to the search."""

    config: TrainConfig
    model: nn.Module
    data: Data
    device: torch.device
    augmenter: Augmenter
    generator: torch.Generator  # every draw hps makes for the loop (order, augmentation)
    cast: contextlib.AbstractContextManager[Any]
    hook: Callable[[int, Metrics], None] | None = None
    store: Any = None  # the checkpoint hook (load / after_epoch), or None
    history: list[Metrics] = field(default_factory=list)
    images: int = 0  # training images drawn since the last report
    _mark: float = field(default_factory=time.perf_counter)
    stop: BaseException | None = None  # what report raised to stop the trial (passed through untouched)

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.config.train.args)

    @property
    def epochs(self) -> int:
        return self.config.train.epochs

    @property
    def last_epoch(self) -> int:
        return int(self.history[-1]["epoch"]) if self.history else 0

    def batches(self, batch_size: int | None = None, augment: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of training batches, shuffled by ``generator``: normalised float images
        (augmented as ``augment.*`` says when ``augment``) and their labels, on the device."""
        split = self.data.train
        bs = min(batch_size or self.config.train.batch_size, len(split))
        order = torch.randperm(len(split), device=self.device, generator=self.generator)
        for i in range(len(split) // bs):
            idx = order[i * bs:(i + 1) * bs]
            x = self.augmenter.batch(idx) if augment else self.augmenter.normalize(split.x[idx])
            self.images += bs
            yield x, split.y[idx]

    def evaluate(self, model: nn.Module | None = None, split: str = "val") -> tuple[float, float]:
        """(loss, accuracy) of ``model`` (default ``ctx.model``) on ``val`` or ``test``, no augmentation."""
        from hps.trainers.loop import evaluate

        data: Split | None = getattr(self.data, split, None) if split in ("val", "test") else None
        if data is None:
            raise TrainFnError(f"ctx.evaluate(split={split!r}): this run has no {split} split" if split in ("val", "test")
                               else f"ctx.evaluate(split={split!r}): choose 'val' or 'test'")
        bs = min(self.config.train.batch_size, len(data))
        return evaluate(model or self.model, data, self.augmenter, self.cast, self.config.train.channels_last, bs)

    def report(self, epoch: int, value: float, **metrics: float) -> None:
        """The epoch's score (the study's objective: val_acc, or val_loss when it minimises) and any
        other figures. The pruner and the epoch, time and memory budgets act here: a trial they stop
        raises out of this call; let it propagate."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch != self.last_epoch + 1:
            raise TrainFnError(f"ctx.report: epoch {epoch!r} after epoch {self.last_epoch}; report epochs 1, 2, 3, ... "
                               "in order, once each")
        figures = {"value": value, **metrics}
        for key, v in figures.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TrainFnError(f"ctx.report: {key}={v!r} at epoch {epoch} is not a finite number")
        if epoch > self.epochs:
            raise EpochLimit(f"reported epoch {epoch} > train.epochs {self.epochs} (the epochs the budget checked)")
        now = time.perf_counter()
        row: Metrics = {"epoch": epoch, **{k: float(v) for k, v in figures.items()}, "epoch_seconds": now - self._mark}
        if self.images:
            row["images_per_s"] = self.images / (now - self._mark)
        self.history.append(row)
        self.images, self._mark = 0, now
        if self.hook is not None:
            try:
                self.hook(epoch, row)
            except BaseException as e:
                self.stop = e
                raise

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Keep ``state`` (tensors and plain types: ``model.state_dict()``, ``opt.state_dict()``, ...)
        as the trial's checkpoint after the last reported epoch; a killed trial's retry gets it back
        from :meth:`resume`. hps adds its own random states, so a resumed run draws what the
        uninterrupted one would have."""
        if self.store is None:
            return
        if not self.history:
            raise TrainFnError("ctx.checkpoint: call it after ctx.report(epoch, ...), with the state at that epoch")
        self.store.after_epoch(self.last_epoch, lambda: {
            "epoch": self.last_epoch, "history": list(self.history), "user": state,
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state(), "device": self.device.type}})

    def resume(self) -> dict[str, Any] | None:
        """The state the killed original of this trial saved with :meth:`checkpoint`, or None. The
        history up to its epoch is restored: go on from ``ctx.last_epoch + 1``."""
        saved = self.store.load() if self.store is not None else None
        if not saved or "user" not in saved:
            return None
        self.history = list(saved["history"])
        torch.set_rng_state(saved["rng"]["torch"])
        if saved["rng"].get("device") == self.device.type:
            self.generator.set_state(saved["rng"]["generator"])
        self._mark = time.perf_counter()
        return dict(saved["user"])


def reference_of(fn: Any) -> str:
    """``/abs/path/file.py:name`` of a function defined at the top level of a Python file (what
    ``train.fn`` holds; a string is taken as it is): workers, export and retrain find it there."""
    if isinstance(fn, str):
        return fn
    name = getattr(fn, "__qualname__", "") or ""
    try:
        path = inspect.getsourcefile(fn) if callable(fn) else None
    except TypeError:
        path = None
    if path is None or not name.isidentifier() or not Path(path).is_file():
        raise ModelError(f"train={fn!r}: hps runs a training function by its file and name, so define it at the top "
                         "level of a .py file (not in a notebook cell or inside another function), or pass "
                         "'path/to/file.py:function'")
    return f"{Path(path).resolve()}:{name}"


def load_fn(cfg: TrainConfig) -> tuple[Callable[..., Any], str | None]:
    """The function ``train.fn`` names (its file pinned by ``train.fn_sha256``) and its source file;
    one line (:class:`ModelError`) when it cannot be called as ``fn(ctx, **train.args)``."""
    name = cfg.train.fn
    assert name is not None
    fn, source = load_reference(name, cfg.train.fn_sha256, "train.fn")
    if not callable(fn):
        raise ModelError(f"train.fn {name!r}: a {type(fn).__name__} is not callable; name a function that takes "
                         "the context")
    try:
        inspect.signature(fn).bind(None, **cfg.train.args)
    except TypeError as e:
        raise ModelError(f"train.fn {name!r} cannot be called as fn(ctx, **train.args) with train.args "
                         f"{sorted(cfg.train.args)}: {e}") from None
    except ValueError:  # no signature to read (a builtin): it is called and judged then
        pass
    return fn, source


def pin_fn(cfg: TrainConfig) -> TrainConfig:
    """The config with ``train.fn_sha256`` set to its function's source file."""
    if cfg.train.fn is None:
        return cfg
    _, source = load_fn(cfg)
    if source is None or cfg.train.fn_sha256:
        return cfg
    return cfg.replace("train", fn_sha256=sha256_of(source))


def run_fn(ctx: Context, fn: Callable[[Context], Any], source: str | None) -> nn.Module:
    """Call the user's function; its exceptions become one line with the file:line they came
    from, what :meth:`Context.report` raised to stop the trial passes through untouched."""
    name = ctx.config.train.fn
    try:
        out = fn(ctx, **ctx.args)
    except BaseException as e:
        if e is ctx.stop or isinstance(e, (KeyboardInterrupt, TrainFnError, EpochLimit)):
            raise
        raise TrainFnError(f"train.fn {name!r} raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                           f" ({_where(e, source)})") from None
    if not ctx.history:
        raise TrainFnError(f"train.fn {name!r} returned without calling ctx.report(epoch, value): hps scores a trial "
                           "by the values it reports")
    if out is None:
        return ctx.model
    if not isinstance(out, nn.Module):
        raise TrainFnError(f"train.fn {name!r} returned a {type(out).__name__}; return the trained nn.Module, or None "
                           "for ctx.model")
    measured = sum(p.numel() for p in ctx.model.parameters())
    returned = sum(p.numel() for p in out.parameters())
    if returned != measured:
        raise TrainFnError(f"train.fn {name!r} returned a network of {returned:,} params, not the {measured:,} the "
                           "budget measured; return ctx.model (or a copy of it, e.g. its EMA)")
    return out


def _where(e: BaseException, source: str | None) -> str:
    """file:line where ``e`` was raised: the innermost frame in the user's file, else the innermost."""
    frames = traceback.extract_tb(e.__traceback__)
    mine = [f for f in frames if source and f.filename == source] or frames[-1:]
    return f"{mine[-1].filename}:{mine[-1].lineno}" if mine else "unknown place"
