"""Optimizers with decay/no-decay groups, and learning-rate schedules stepped per iteration."""

from __future__ import annotations

import math

import torch
from torch import nn

from hps.trainers.config import OptimizerConfig, ScheduleConfig


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Weight decay applies to conv/linear weights only, never to norm weights or biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    betas = (cfg.beta1, cfg.beta2)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)
    if cfg.name == "radam":
        return torch.optim.RAdam(groups, lr=cfg.lr, betas=betas)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def _cosine(t: float, lo: float) -> float:
    return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def sgdr_periods(span: float, t0: float, t_mult: float) -> list[float]:
    """SGDR's periods fitted to a run of ``span`` epochs, so the run ends annealed: as many whole
    periods t0, t0 * t_mult, ... as fit, the last one stretched to end at the last epoch (a t0
    longer than the run gives one cosine period). 100 epochs at t0 10, t_mult 2: 10, 20, 70."""
    periods, total, p = [], 0.0, t0
    while total + p <= span + 1e-9:
        periods.append(p)
        total += p
        p *= t_mult
    if not periods:
        return [span]
    periods[-1] += span - total
    return periods


def lr_at(epoch: float, epochs: int, lr: float, cfg: ScheduleConfig) -> float:
    """The learning rate at a fractional epoch (``step / steps_per_epoch``) of an ``epochs`` run.
    With ``finetune_epochs`` F, the schedule spans the first ``epochs - F`` epochs and the last F
    anneal (cosine) from ``finetune_lr`` to ``finetune_eta_min``."""
    ft = cfg.finetune_epochs
    if ft:
        epochs -= ft
        if epoch >= epochs:
            assert cfg.finetune_lr is not None  # the config's cross-check
            return cfg.finetune_lr * _cosine((epoch - epochs) / ft, min(cfg.finetune_eta_min / cfg.finetune_lr, 1.0))
    w = cfg.warmup_epochs
    warm = min(1.0, (epoch + 1e-12) / w) if w > 0 else 1.0
    lo = min(cfg.eta_min / lr, 1.0)
    t_epoch = max(epoch - w, 0.0)  # the schedule proper starts after warmup
    span = max(epochs - w, 1e-12)
    name = cfg.name
    if name == "none":
        f = 1.0
    elif name == "step":
        f = cfg.gamma ** math.floor(epoch / cfg.step_size)
    elif name == "multistep":
        f = cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    elif name == "cosine" and cfg.period is not None:  # CosineAnnealingLR's closed form: periodic past T_max
        f = lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t_epoch / cfg.period))
    elif name == "cosine":
        f = _cosine(t_epoch / span, lo)
    elif name == "sgdr":
        start = 0.0
        for period in sgdr_periods(span, cfg.t0, cfg.t_mult):
            if t_epoch < start + period:
                break
            start += period
        f = _cosine((t_epoch - start) / period, lo)
    elif name == "onecycle":
        rise = cfg.pct_start
        t = t_epoch / span
        f = 0.04 + 0.96 * t / rise if t < rise else _cosine((t - rise) / (1 - rise), lo)
    else:
        raise ValueError(f"unknown schedule {name!r}")
    return lr * f * warm
