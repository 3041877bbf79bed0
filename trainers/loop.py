"""``train(cfg, report) -> TrainResult``: the one trainer every trial and every retrain runs.

Data lives on the device as uint8; each step indexes a batch, augments it there and steps the
model. ``report(epoch, metrics)`` is called after every epoch; an exception it raises stops
training and propagates (the search prunes this way). A non-finite loss raises
:class:`TrainingDiverged`.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hps.trainers.augment import JSD_WEIGHT, Augmenter, jsd_loss, mix
from hps.trainers.config import TrainConfig, config_to_dict, dump_config, load_config, read_yaml, with_overrides
from hps.trainers.custom import Context, load_fn, pin_fn, run_fn
from hps.trainers.data import Data, DataMismatch, Split, data_identity, load_data, pin_data
from hps.trainers.device import autocast_dtype, resolve_device
from hps.trainers.errors import ModelError, TrainingDiverged
from hps.trainers.meter import Measured, check_measured, save_state, state_dict_at, state_dict_from
from hps.trainers.models.check import check_model, pin_model
from hps.trainers.optim import build_optimizer, lr_at

Metrics = dict[str, float]
Report = Callable[[int, Metrics], None]
CHECK_EVERY = 32  # steps between finiteness checks of the running loss (one host sync each)


class Checkpoint(Protocol):
    """Where a run keeps its training state (the caller decides where; the trainer knows no store).
    ``load()``: a state to resume from, or None. ``after_epoch(epoch, state)``: called after each
    reported epoch; ``state()`` builds the full state (model, optimizer, scaler, step, epoch,
    history and every RNG the trainer draws from) when the hook decides to save."""

    def load(self) -> dict[str, Any] | None: ...

    def after_epoch(self, epoch: int, state: Callable[[], dict[str, Any]]) -> None: ...


@dataclass
class TrainResult:
    config: TrainConfig
    history: list[Metrics]
    params: int
    seconds: float
    test_acc: float | None = None
    model: nn.Module | None = field(default=None, repr=False)

    @property
    def val_acc(self) -> float | None:
        return self.history[-1].get("val_acc") if self.history else None

    def to_dict(self) -> dict[str, Any]:
        return {"config": config_to_dict(self.config), "history": self.history, "params": self.params,
                "seconds": self.seconds, "val_acc": self.val_acc, "test_acc": self.test_acc}


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, aug: Augmenter, cast: contextlib.AbstractContextManager[Any],
             channels_last: bool, batch_size: int) -> tuple[float, float]:
    """(loss, accuracy) over a split, no augmentation, at the training batch size: a larger one
    could be the trial's memory peak (branchnet at 128 px and 1,000 images: about 10 GiB)."""
    model.eval()
    loss, correct = torch.zeros((), device=split.x.device), torch.zeros((), device=split.x.device)
    for i in range(0, len(split), batch_size):
        x = aug.normalize(split.x[i:i + batch_size])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = split.y[i:i + batch_size]
        with cast:
            out = model(x).float()
        loss += F.cross_entropy(out, y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    return loss.item() / len(split), correct.item() / len(split)


def train(cfg: TrainConfig, report: Report | None = None, *, test: bool = False,
          data: Data | None = None, checkpoint: Checkpoint | None = None, measured: Measured | None = None) -> TrainResult:
    """Train ``cfg`` from scratch, or from ``checkpoint``'s state; deterministic on the CPU for a
    given ``train.seed`` (a resumed run ends with the metrics of an uninterrupted one). ``measured``:
    the meter's figures the budget judged; a network that differs is refused before training."""
    t_start = time.perf_counter()
    tc = cfg.train
    device = resolve_device(tc.device)
    cfg = pin_fn(pin_model(pin_data(cfg)))  # the result records the data and the code it ran on
    data = data or load_data(cfg.data, device, test=test)
    channels, side = data.train.x.shape[1], cfg.data.image_size or data.train.x.shape[-1]
    check_model(cfg, data.num_classes, channels, side)  # a user's builder: refused before training
    if tc.fn is not None:  # the user's own loop, under the same budget, pruner and checkpoints
        return _train_fn(cfg, data, device, report, checkpoint, test, t_start, measured)
    if device.type == "cuda":  # shapes are fixed within a trial: cuDNN times its kernels once and keeps the fastest
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(tc.seed)
    gen = torch.Generator(device=device).manual_seed(tc.seed)
    rng = random.Random(tc.seed)

    built = cfg.model.build(data.num_classes, channels, side)
    if measured is not None:
        check_measured(built, measured, cfg.model.name)
    model = _on_device(built, device, tc.channels_last)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if tc.compile:  # each trial compiles anew: a long-lived worker would reach dynamo's recompile limit after a
        torch._dynamo.reset()  # few trials, and later trials would run uncompiled without a word
    step_model: nn.Module = torch.compile(model, mode=tc.compile_mode) if tc.compile else model  # type: ignore[assignment]
    opt = build_optimizer(model, cfg.optimizer)
    dtype, cast = _autocast(tc.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    aug = Augmenter(cfg.augment, data.train.x, data.mean, data.std, gen, side)
    jsd = cfg.augment.augmix_jsd

    n, bs = len(data.train), min(tc.batch_size, len(data.train))
    steps = n // bs  # drop the last partial batch
    history: list[Metrics] = []
    step, first = 0, 1
    if checkpoint is not None and (saved := checkpoint.load()) is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        _restore_rng(saved["rng"], device, gen, rng, tc.seed + saved["step"])
        history, step, first = saved["history"], saved["step"], saved["epoch"] + 1

    def state() -> dict[str, Any]:  # tensors and plain values only: a resume loads it with weights_only=True
        return {"epoch": epoch, "step": step, "history": history, "config": config_to_dict(cfg),
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                "rng": _rng_state(device, gen, rng)}

    for epoch in range(first, tc.epochs + 1):
        augment = cfg.stage_augment(epoch)  # the fine-tuning stage may mix with another alpha
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(n, device=device, generator=gen)
        loss_sum = torch.zeros((), device=device)
        for i in range(steps):
            lr = lr_at(step / steps, tc.epochs, cfg.optimizer.lr, cfg.schedule)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = order[i * bs:(i + 1) * bs]
            y = data.train.y[idx]
            if jsd:  # AugMix: clean + two views in one pass
                x, y2, lam = torch.cat(aug.views(idx)), y, 1.0
            else:
                x, y2, lam = mix(aug.batch(idx), y, augment, rng, gen)
            if tc.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with cast:
                loss = _loss(step_model(x), y, y2, lam, jsd, tc.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.detach()
            step += 1
            if (i + 1) % CHECK_EVERY == 0 or i + 1 == steps:
                _check_finite(loss_sum, epoch, lr)
        train_seconds = time.perf_counter() - t0
        metrics: Metrics = {"epoch": epoch, "train_loss": loss_sum.item() / steps, "lr": lr}
        if data.val is not None:
            metrics["val_loss"], metrics["val_acc"] = evaluate(step_model, data.val, aug, cast, tc.channels_last, bs)
        metrics["epoch_seconds"] = time.perf_counter() - t0
        metrics["images_per_s"] = steps * bs / train_seconds
        history.append(metrics)
        if report is not None:
            report(epoch, metrics)
        if checkpoint is not None:
            checkpoint.after_epoch(epoch, state)

    test_acc = None
    if test and data.test is not None:
        test_acc = evaluate(step_model, data.test, aug, cast, tc.channels_last, bs)[1]
    return TrainResult(cfg, history, params, time.perf_counter() - t_start, test_acc, model)


def _loss(out: torch.Tensor, y: torch.Tensor, y2: torch.Tensor, lam: float, jsd: bool, smoothing: float) -> torch.Tensor:
    """Cross-entropy on the batch: with AugMix's JSD, on the clean third plus 12 x the consistency
    term over the three views; with a mixed batch, weighted between both labels."""
    if jsd:
        clean, aug1, aug2 = out.chunk(3)
        return F.cross_entropy(clean, y, label_smoothing=smoothing) + JSD_WEIGHT * jsd_loss(clean, aug1, aug2)
    loss = F.cross_entropy(out, y, label_smoothing=smoothing)
    if lam < 1.0:
        loss = lam * loss + (1 - lam) * F.cross_entropy(out, y2, label_smoothing=smoothing)
    return loss


def score(cfg: TrainConfig, weights: dict[str, torch.Tensor], *, test: bool = False) -> Metrics:
    """Score stored weights (any storage dtype) on the validation split, and the test split if
    asked, without training: ``val_loss``, ``val_acc`` (and ``test_loss``, ``test_acc``)."""
    tc = cfg.train
    device = resolve_device(tc.device)
    data = load_data(pin_data(cfg).data, device, test=test)
    channels, side = data.train.x.shape[1], cfg.data.image_size or data.train.x.shape[-1]
    model = pin_model(cfg).model.build(data.num_classes, channels, side)
    try:
        model.load_state_dict(state_dict_from(weights))
    except RuntimeError as e:  # weights of another model or size
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ModelError(f"the weights do not fit {cfg.model.name} at width {cfg.model.width:g}: {first}") from None
    model = _on_device(model, device, tc.channels_last)
    _, cast = _autocast(tc.precision, device)
    aug = Augmenter(cfg.augment, data.train.x, data.mean, data.std, torch.Generator(device=device), side)
    out: Metrics = {}
    for name, split in (("val", data.val), ("test", data.test)):
        if split is not None:
            out[f"{name}_loss"], out[f"{name}_acc"] = evaluate(model, split, aug, cast, tc.channels_last,
                                                               min(tc.batch_size, len(split)))
    return out


def _train_fn(cfg: TrainConfig, data: Data, device: torch.device, report: Report | None,
              checkpoint: Checkpoint | None, test: bool, t_start: float, measured: Measured | None) -> TrainResult:
    """``train.fn``'s run: the model built as hps's loop builds it, the data and hps's augmentation
    handed over in a :class:`Context`, the function's reports made the result's history."""
    fn, source = load_fn(cfg)
    tc = cfg.train
    channels, side = data.train.x.shape[1], cfg.data.image_size or data.train.x.shape[-1]
    torch.manual_seed(tc.seed)
    gen = torch.Generator(device=device).manual_seed(tc.seed)
    built = cfg.model.build(data.num_classes, channels, side)
    if measured is not None:
        check_measured(built, measured, cfg.model.name)
    model = _on_device(built, device, tc.channels_last)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _, cast = _autocast(tc.precision, device)
    aug = Augmenter(cfg.augment, data.train.x, data.mean, data.std, gen, side)
    ctx = Context(cfg, model, data, device, aug, gen, cast, report, checkpoint)
    trained = run_fn(ctx, fn, source)
    test_acc = ctx.evaluate(trained, "test")[1] if test and data.test is not None else None
    return TrainResult(cfg, ctx.history, params, time.perf_counter() - t_start, test_acc, trained)


def _rng_state(device: torch.device, gen: torch.Generator, rng: random.Random) -> dict[str, Any]:
    """Every RNG a step draws from, as tensors and lists (nothing :func:`torch.load` would refuse
    with ``weights_only=True``): the augmentation generator, torch's, CUDA's, Python's, NumPy's."""
    version, words, gauss = rng.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"device": device.type, "augment": gen.get_state(), "torch": torch.get_rng_state(),
            "python": [version, list(words), gauss],
            "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _restore_rng(saved: dict[str, Any], device: torch.device, gen: torch.Generator, rng: random.Random,
                 fallback_seed: int) -> None:
    if saved.get("device", "cpu") == device.type:
        gen.set_state(saved["augment"])
    else:  # saved on another kind of device (a retry landed elsewhere): that generator's state does not fit
        gen.manual_seed(fallback_seed)
    torch.set_rng_state(saved["torch"])
    if device.type == "cuda" and saved.get("cuda") is not None:
        torch.cuda.set_rng_state(saved["cuda"], device)
    version, words, gauss = saved["python"]
    rng.setstate((version, tuple(words), gauss))
    if (n := saved.get("numpy")) is not None:  # (checkpoints from before it was saved have none)
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def _on_device(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _autocast(precision: str, device: torch.device) -> tuple[torch.dtype | None, contextlib.AbstractContextManager[Any]]:
    """The autocast dtype a config trains at on ``device`` (None: fp32) and its context."""
    dtype = autocast_dtype(precision, device)
    return dtype, (torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext())


def _check_finite(loss_sum: torch.Tensor, epoch: int, lr: float) -> None:
    value = loss_sum.item()
    if not math.isfinite(value):
        raise TrainingDiverged(f"training loss became {value} in epoch {epoch} (lr {lr:.3g}); training stopped")


IDENTITY_KEYS = ("dataset", "source", "sha256", "version", "split_seed", "val_fraction", "subset")


def check_identity(cfg: TrainConfig, recorded: dict[str, Any] | None) -> TrainConfig:
    """Refuse to train on other data than ``recorded`` (an export's ``provenance.data``) or than the
    config's own ``data.sha256``: raises :class:`DataMismatch` saying what differs."""
    here = data_identity(cfg)  # raises DataMismatch on a sha256 that differs
    if recorded:
        diff = [f"{k} {recorded.get(k)!r} -> {here.get(k)!r}" for k in IDENTITY_KEYS if recorded.get(k) != here.get(k)]
        if diff:
            where = here.get("path") or here.get("root")
            raise DataMismatch(f"data differs from the data this config was exported from ({'; '.join(diff)}; here: "
                               f"{where})")
    return cfg


def retrain(config_path: str | Path, out_dir: str | Path | None = None, *, test: bool = False,
            report: Report | None = None, allow_data_mismatch: bool = False, allow_model_change: bool = False,
            overrides: dict[str, Any] | None = None) -> TrainResult:
    """Train a config file and write ``config.yaml`` (resolved), ``metrics.json`` and ``model.pt``
    (at the export's ``provenance.storage_dtype``, the budget's; fp32 without one).

    The data must be the data the config was made on (its ``data.sha256``, and the export's
    ``provenance.data``); ``allow_data_mismatch`` trains on what is here instead, and the written
    config records that. A user's model file must be the one recorded (``model.sha256``);
    ``allow_model_change`` builds the file as it is now. ``overrides``: dotted keys set on top of
    the file (``--set``)."""
    cfg = load_config(config_path)
    if overrides:
        cfg = with_overrides(cfg, overrides, f"{config_path}: --set")
    raw = read_yaml(config_path)
    prov = raw.get("provenance") if isinstance(raw, dict) else None
    recorded = prov.get("data") if isinstance(prov, dict) else None
    try:
        check_identity(cfg, recorded)
    except DataMismatch as e:
        if not allow_data_mismatch:
            raise DataMismatch(f"{config_path}: {e}; retrain with --allow-data-mismatch to train on it anyway") from None
        path = cfg.data.path if cfg.data.path and Path(cfg.data.path).expanduser().exists() else None
        cfg = cfg.replace("data", sha256=None, path=path)
    if allow_model_change:
        cfg = cfg.replace("model", sha256=None).replace("train", fn_sha256=None)
    try:
        result = train(cfg, report, test=test)
    except ModelError as e:
        raise ModelError(f"{config_path}: {e}") from None
    out = Path(out_dir) if out_dir else Path("runs") / Path(config_path).stem
    out.mkdir(parents=True, exist_ok=True)
    dump_config(result.config, out / "config.yaml")
    (out / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    assert result.model is not None
    dtype = str(prov.get("storage_dtype") or "fp32") if isinstance(prov, dict) else "fp32"
    save_state(state_dict_at(result.model, dtype), out / "model.pt")  # at the budget's storage dtype
    return result
