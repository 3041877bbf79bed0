"""Batched augmentation on the training device, scaled by ``augment.strength`` in [0, 1].

The ``basic`` policy, every op drawn per sample (s = strength):

| op                         | per sample | magnitude at s                          |
|----------------------------|------------|-----------------------------------------|
| horizontal flip            | yes        | p = 0.5 when s > 0                      |
| random crop (reflect pad)  | yes        | pad = round(8 s) px (s = 0.5: pad 4)    |
| colour jitter (b, c, sat.) | yes        | factors in 1 +- 0.8 max(0, s - 0.5)     |
| grayscale                  | yes        | p = 0.4 max(0, s - 0.5)                 |
| cutout (square, zeroed)    | yes        | side = round(32 max(0, s - 0.5)) px     |

So s <= 0.5 is geometric only (the standard flip + pad-4 crop at 0.5); above it photometric ops
and cutout grow. The named policies (``randaugment``, ``trivialaugment``, ``autoaugment``,
``augmix``) run torchvision's v2 transform on top of flip + pad-4 crop. torchvision draws one
random decision per call, so they are applied per group of ``POLICY_GROUP`` images (per-group
randomness; cost measured in BENCHMARKS.md). Their magnitude follows s: RandAugment magnitude
round(30 s), AugMix severity 1 + round(9 s); TrivialAugment and AutoAugment are applied to a
fraction s of the groups. MixUp/CutMix (:func:`mix`) act per batch with lambda ~ Beta(alpha, alpha).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.config import AugmentConfig

POLICY_GROUP = 8


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def _gray(x: Tensor) -> Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


class Augmenter:
    """Holds the (padded) training images; ``batch(idx)`` returns normalised float images."""

    def __init__(self, cfg: AugmentConfig, images: Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                 gen: torch.Generator) -> None:
        self.cfg, self.gen, self.device = cfg, gen, images.device
        s = cfg.strength if cfg.policy != "none" else 0.0
        s_geo = s if cfg.policy in ("none", "basic") else 0.5  # named policies add flip + pad-4 crop
        self.flip = s_geo > 0
        self.pad = round(8 * s_geo)
        extra = max(0.0, s - 0.5) if cfg.policy == "basic" else 0.0
        self.jitter, self.gray_p, self.cutout = 0.8 * extra, 0.4 * extra, round(32 * extra)
        self.images = images
        if self.pad:  # pad once, crop per batch by indexing
            self.images = F.pad(images.float(), (self.pad,) * 4, mode="reflect").to(torch.uint8)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255)
        self.policy = _named_policy(cfg) if cfg.policy not in ("none", "basic") else None
        self._ar = torch.arange(32, device=self.device)

    def batch(self, idx: Tensor) -> Tensor:
        x = self.images[idx]
        n, dev, g = len(idx), self.device, self.gen
        if self.pad:
            dy = torch.randint(0, 2 * self.pad + 1, (n, 1), generator=g, device=dev) + self._ar
            dx = torch.randint(0, 2 * self.pad + 1, (n, 1), generator=g, device=dev) + self._ar
            x = x.gather(2, dy[:, None, :, None].expand(n, 3, 32, x.shape[3]))
            x = x.gather(3, dx[:, None, None, :].expand(n, 3, 32, 32))
        if self.flip:
            flip = torch.rand(n, generator=g, device=dev) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.policy is not None:
            x = torch.cat([self.policy(c) for c in x.split(POLICY_GROUP)])
        x = x.float()
        if self.jitter:
            x = self._photometric(x, n)
        x = (x - self.mean) * self.inv_std
        if self.cutout:
            x = self._cutout(x, n)
        return x

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 images to normalised float, no augmentation (evaluation)."""
        return (x.float() - self.mean) * self.inv_std

    def _photometric(self, x: Tensor, n: int) -> Tensor:
        g, dev, j = self.gen, self.device, self.jitter
        b = _uniform(n, 1 - j, 1 + j, g, dev).view(n, 1, 1, 1)
        c = _uniform(n, 1 - j, 1 + j, g, dev).view(n, 1, 1, 1)
        sat = _uniform(n, 1 - j, 1 + j, g, dev).view(n, 1, 1, 1)
        x = x * b
        m = x.mean((1, 2, 3), keepdim=True)
        x = (x - m) * c + m
        gray = _gray(x)
        x = gray + (x - gray) * sat
        to_gray = (torch.rand(n, generator=g, device=dev) < self.gray_p).view(n, 1, 1, 1)
        x = torch.where(to_gray, _gray(x), x)
        return x.clamp_(0, 255)

    def _cutout(self, x: Tensor, n: int) -> Tensor:
        cy = torch.randint(0, 32, (n, 1, 1), generator=self.gen, device=self.device)
        cx = torch.randint(0, 32, (n, 1, 1), generator=self.gen, device=self.device)
        lo = self.cutout // 2  # the square covers [c - side // 2, c - side // 2 + side): side px when inside
        dy, dx = self._ar.view(1, 32, 1) - cy + lo, self._ar.view(1, 1, 32) - cx + lo
        rows, cols = (dy >= 0) & (dy < self.cutout), (dx >= 0) & (dx < self.cutout)
        return x.masked_fill((rows & cols).unsqueeze(1), 0.0)


def _named_policy(cfg: AugmentConfig) -> torch.nn.Module:
    from torchvision.transforms import v2

    s = cfg.strength
    if cfg.policy == "randaugment":
        return v2.RandAugment(num_ops=2, magnitude=round(30 * s), num_magnitude_bins=31)
    if cfg.policy == "augmix":
        return v2.AugMix(severity=1 + round(9 * s))
    inner = v2.TrivialAugmentWide() if cfg.policy == "trivialaugment" else \
        v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    return v2.RandomApply([inner], p=s)


def mix(x: Tensor, y: Tensor, cfg: AugmentConfig, rng: random.Random,
        gen: torch.Generator) -> tuple[Tensor, Tensor, float]:
    """MixUp or CutMix (one of the enabled, chosen per batch). Returns (x, y_other, lam):
    the loss is ``lam * ce(out, y) + (1 - lam) * ce(out, y_other)``."""
    modes = [m for m, a in (("mixup", cfg.mixup_alpha), ("cutmix", cfg.cutmix_alpha)) if a > 0]
    if not modes:
        return x, y, 1.0
    mode = modes[0] if len(modes) == 1 else rng.choice(modes)
    alpha = cfg.mixup_alpha if mode == "mixup" else cfg.cutmix_alpha
    lam = rng.betavariate(alpha, alpha)
    perm = torch.randperm(len(y), generator=gen, device=y.device)
    if mode == "mixup":
        return x.mul(lam).add_(x[perm], alpha=1 - lam), y[perm], lam
    h, w = x.shape[2:]
    rh, rw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = rng.randrange(h), rng.randrange(w)
    y0, y1, x0, x1 = max(cy - rh // 2, 0), min(cy + rh // 2, h), max(cx - rw // 2, 0), min(cx + rw // 2, w)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    return x, y[perm], 1 - (y1 - y0) * (x1 - x0) / (h * w)
