"""``train(cfg, report) -> TrainResult``: the one trainer every trial and every retrain runs.

Data lives on the device as uint8; each step indexes a batch, augments it there and steps the
model. ``report(epoch, metrics)`` is called after every epoch; an exception it raises stops
training and propagates (the search prunes this way). A non-finite loss raises
:class:`TrainingDiverged`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainers.augment import Augmenter, mix
from trainers.config import TrainConfig, config_to_dict, dump_config, load_config
from trainers.data import Data, Split, load_data, resolve_path
from trainers.meter import state_dict_at
from trainers.models import create_model
from trainers.optim import build_optimizer, lr_at

Metrics = dict[str, float]
Report = Callable[[int, Metrics], None]
CHECK_EVERY = 32  # steps between finiteness checks of the running loss (one host sync each)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means plain fp32. ``auto`` is bf16 on CUDA devices that support it, fp32 elsewhere."""
    if precision == "auto":
        ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if ok else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, aug: Augmenter, cast: contextlib.AbstractContextManager[Any],
             channels_last: bool, batch_size: int = 1000) -> tuple[float, float]:
    """(loss, accuracy) over a split, no augmentation."""
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
          data: Data | None = None) -> TrainResult:
    """Train ``cfg`` from scratch; deterministic on the CPU for a given ``train.seed``."""
    t_start = time.perf_counter()
    tc = cfg.train
    device = resolve_device(tc.device)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=resolve_path(cfg.data)))
    data = data or load_data(cfg.data, device, test=test)
    torch.manual_seed(tc.seed)
    gen = torch.Generator(device=device).manual_seed(tc.seed)
    rng = random.Random(tc.seed)

    m = cfg.model
    model: nn.Module = create_model(m.name, num_classes=data.num_classes, width=m.width, depth=m.depth,
                                    dropout=m.dropout).to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    step_model: nn.Module = torch.compile(model) if tc.compile else model  # type: ignore[assignment]
    opt = build_optimizer(model, cfg.optimizer)
    dtype = autocast_dtype(tc.precision, device)
    cast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    aug = Augmenter(cfg.augment, data.train.x, data.mean, data.std, gen)

    n, bs = len(data.train), min(tc.batch_size, len(data.train))
    steps = n // bs  # drop the last partial batch
    history: list[Metrics] = []
    step = 0
    for epoch in range(1, tc.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(n, device=device, generator=gen)
        loss_sum = torch.zeros((), device=device)
        for i in range(steps):
            lr = lr_at(step / steps, tc.epochs, cfg.optimizer.lr, cfg.schedule)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = order[i * bs:(i + 1) * bs]
            x, y = aug.batch(idx), data.train.y[idx]
            x, y2, lam = mix(x, y, cfg.augment, rng, gen)
            if tc.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with cast:
                out = step_model(x)
                loss = F.cross_entropy(out, y, label_smoothing=tc.label_smoothing)
                if lam < 1.0:
                    loss = lam * loss + (1 - lam) * F.cross_entropy(out, y2, label_smoothing=tc.label_smoothing)
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
            metrics["val_loss"], metrics["val_acc"] = evaluate(step_model, data.val, aug, cast, tc.channels_last)
        metrics["epoch_seconds"] = time.perf_counter() - t0
        metrics["images_per_s"] = steps * bs / train_seconds
        history.append(metrics)
        if report is not None:
            report(epoch, metrics)

    test_acc = None
    if test and data.test is not None:
        test_acc = evaluate(step_model, data.test, aug, cast, tc.channels_last)[1]
    return TrainResult(cfg, history, params, time.perf_counter() - t_start, test_acc, model)


def _check_finite(loss_sum: torch.Tensor, epoch: int, lr: float) -> None:
    value = loss_sum.item()
    if not math.isfinite(value):
        raise TrainingDiverged(f"training loss became {value} in epoch {epoch} (lr {lr:.3g}); training stopped")


def retrain(config_path: str | Path, out_dir: str | Path | None = None, *, test: bool = False,
            report: Report | None = None) -> TrainResult:
    """Train a config file and write ``config.yaml`` (resolved), ``metrics.json`` and ``model.pt``."""
    cfg = load_config(config_path)
    result = train(cfg, report, test=test)
    out = Path(out_dir) if out_dir else Path("runs") / Path(config_path).stem
    out.mkdir(parents=True, exist_ok=True)
    dump_config(result.config, out / "config.yaml")
    (out / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    assert result.model is not None
    torch.save(state_dict_at(result.model, "fp32"), out / "model.pt")
    return result
