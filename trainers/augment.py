"""Batched augmentation on the training device, scaled by ``augment.strength`` in [0, 1].

The ``basic`` policy, every op drawn per sample (s = strength; S = the images' side, 32 for CIFAR):

| op                         | per sample | magnitude at s                             |
|----------------------------|------------|--------------------------------------------|
| horizontal flip            | yes        | p = 0.5 when s > 0                         |
| random crop (reflect pad)  | yes        | pad = round(8 s S / 32) px (32 px, 0.5: 4) |
| colour jitter (b, c, sat.) | yes        | factors in 1 +- 0.8 max(0, s - 0.5)        |
| grayscale                  | yes        | p = 0.4 max(0, s - 0.5)                    |
| cutout (square, zeroed)    | yes        | side = round(S max(0, s - 0.5)) px         |

Images of one channel take every op but ``hue`` (refused: :func:`check_augment`); saturation and
grayscale leave them as they are.

So s <= 0.5 is geometric only (the standard flip + pad-4 crop at 0.5); above it photometric ops
and cutout grow. The named policies (``randaugment``, ``trivialaugment``, ``autoaugment``,
``augmix``) run on top of flip + pad-4 crop, each image drawing its own ops, batched on the
device (:mod:`hps.trainers.policies`; cost measured in BENCHMARKS.md). Their magnitude follows s:
RandAugment magnitude round(30 s), AugMix severity 1 + round(9 s); TrivialAugment and AutoAugment
are applied to a fraction s of the images. MixUp/CutMix (:func:`mix`) act per batch with
lambda ~ Beta(alpha, alpha).

Explicit ops, each drawn per image after the policy (0 / empty: off): ``pick_one`` (one of
resized_crop / affine / flip per image), ``rotate`` and ``translate`` (one batched affine
``grid_sample``; with ``pick_one`` they are its ``affine`` op's ranges), ``perspective`` (p 0.5),
``hue`` (a chroma rotation in YIQ, luma kept), ``grayscale``. ``views`` gives AugMix's clean +
two views for ``augmix_jsd``; :func:`jsd_loss` is the paper's consistency term.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import Tensor

from hps.trainers.config import AugmentConfig
from hps.trainers.errors import ConfigError
from hps.trainers.policies import Policy


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = torch.linalg.inv(_YIQ)


def _affine(n: int, degrees: float, translate: float, gen: torch.Generator, device: torch.device) -> Tensor:
    """(n, 3, 3) per-image rotations in +- ``degrees`` and shifts in +- ``translate`` of the side."""
    a = _uniform(n, -degrees, degrees, gen, device) * math.pi / 180
    t = _uniform(2 * n, -translate, translate, gen, device).view(n, 2) * 2  # normalised coords span 2
    m = torch.zeros(n, 3, 3, device=device)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    m[:, :2, 2] = t
    m[:, 2, 2].fill_(1.0)  # (`m[...] = 1.0` copies a host scalar in: a sync on CUDA)
    return m


def _resized_crop(n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """(n, 3, 3) RandomResizedCrop as an affine zoom: area in [0.08, 1], aspect in [3/4, 4/3]."""
    area = _uniform(n, 0.08, 1.0, gen, device)
    ratio = torch.exp(_uniform(n, math.log(3 / 4), math.log(4 / 3), gen, device))
    w, h = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    cx = _uniform(n, -1.0, 1.0, gen, device) * (1 - w)
    cy = _uniform(n, -1.0, 1.0, gen, device) * (1 - h)
    m = torch.zeros(n, 3, 3, device=device)
    m[:, 0, 0], m[:, 1, 1], m[:, 0, 2], m[:, 1, 2] = w, h, cx, cy
    m[:, 2, 2].fill_(1.0)
    return m


def _gray(x: Tensor) -> Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def check_augment(cfg: AugmentConfig, channels: int) -> None:
    """Refuse, in one line, an op the data cannot take (before anything trains)."""
    if channels == 1 and cfg.hue:
        raise ConfigError(f"augment.hue: {cfg.hue:g} shifts colours, but the images have one channel; set it to 0")


REFLECT_CHUNK = 4096


_PADDED: list[tuple[Tensor, int, Tensor]] = []  # the last (images, pad, padded): a worker's next trial reuses it


def padded(images: Tensor, pad: int) -> Tensor:
    """:func:`reflect_pad`, kept for the next trial in this process on the same training images
    (:func:`~hps.trainers.data.load_data` gives it the same tensor) and the same pad."""
    if _PADDED and _PADDED[0][0] is images and _PADDED[0][1] == pad:
        return _PADDED[0][2]
    _PADDED.clear()  # the previous one is freed before the new one is made
    out = reflect_pad(images, pad)
    _PADDED.append((images, pad, out))
    return out


def reflect_pad(images: Tensor, pad: int) -> Tensor:
    """``F.pad(images, (pad,) * 4, mode="reflect")`` for uint8 images, by gathering rows and
    columns: no float copy of the training set (4x its size: 1.7-2.1 GB of one-off peak on a GPU,
    which the caching allocator then keeps and ``max_gpu_memory_mb`` would measure). Chunks of
    4,096 images: the rows-padded intermediate of the whole set was another 0.67x the result
    (207 MB on 45,000 images padded by 8, seen on an H200)."""
    side = images.shape[-1]
    i = torch.arange(-pad, side + pad, device=images.device).abs()
    i = torch.where(i > side - 1, 2 * (side - 1) - i, i)
    out = images.new_empty((*images.shape[:-2], side + 2 * pad, side + 2 * pad))
    for a in range(0, len(images), REFLECT_CHUNK):
        out[a:a + REFLECT_CHUNK] = images[a:a + REFLECT_CHUNK].index_select(-2, i).index_select(-1, i)
    return out


class Augmenter:
    """Holds the (padded) training images; ``batch(idx)`` returns normalised float images."""

    def __init__(self, cfg: AugmentConfig, images: Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                 gen: torch.Generator, size: int | None = None) -> None:
        self.channels, self.side = images.shape[1], images.shape[-1]
        check_augment(cfg, self.channels)
        self.cfg, self.gen, self.device, self.size = cfg, gen, images.device, size or self.side
        s = cfg.strength if cfg.policy != "none" else 0.0
        s_geo = s if cfg.policy in ("none", "basic") else 0.5  # named policies add flip + pad-4 crop
        self.flip = s_geo > 0
        self.pad = round(8 * s_geo * self.side / 32)
        extra = max(0.0, s - 0.5) if cfg.policy == "basic" else 0.0
        self.jitter, self.gray_p, self.cutout = 0.8 * extra, 0.4 * extra, round(self.side * extra)
        self.images = images
        if self.pad:  # pad once, crop per batch by indexing
            self.images = padded(images, self.pad)
        shape = (1, self.channels, 1, 1)
        self.mean = torch.tensor(mean, device=self.device).view(shape) * 255
        self.inv_std = 1 / (torch.tensor(std, device=self.device).view(shape) * 255)
        self.policy = Policy(cfg.policy, cfg.strength, self.side, self.channels, gen, self.device) \
            if cfg.policy not in ("none", "basic") else None
        self._ar = torch.arange(self.side, device=self.device)
        # constants on the device once: a host tensor copied in per step is a host sync on CUDA
        self._yiq, self._yiq_inv = _YIQ.to(self.device), _YIQ_INV.to(self.device)
        self._corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], device=self.device)
        self.warp = bool(cfg.pick_one or cfg.rotate or cfg.translate)

    def _crop_flip(self, idx: Tensor) -> Tensor:
        x = self.images[idx]
        n, dev, g, c, s = len(idx), self.device, self.gen, self.channels, self.side
        if self.pad:
            dy = torch.randint(0, 2 * self.pad + 1, (n, 1), generator=g, device=dev) + self._ar
            dx = torch.randint(0, 2 * self.pad + 1, (n, 1), generator=g, device=dev) + self._ar
            x = x.gather(2, dy[:, None, :, None].expand(n, c, s, x.shape[3]))
            x = x.gather(3, dx[:, None, None, :].expand(n, c, s, s))
        if self.flip:
            flip = torch.rand(n, generator=g, device=dev) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x

    def batch(self, idx: Tensor) -> Tensor:
        return self._finish(self._crop_flip(idx))

    def views(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """AugMix's three views of the same cropped and flipped images: clean (no policy, no
        further ops) and two with the policy drawn independently (``augmix_jsd``)."""
        x = self._crop_flip(idx)
        return self.normalize(x), self._finish(x), self._finish(x)

    def _finish(self, x: Tensor) -> Tensor:
        n = len(x)
        if self.policy is not None:
            x = self.policy(x)
        x = x.float()
        if self.warp:
            x = self._warp(x, n)
        if self.cfg.perspective:
            x = self._perspective(x, n)
        if self.jitter:
            x = self._photometric(x, n)
        if self.cfg.hue:
            x = self._hue(x, n)
        if self.cfg.grayscale:
            x = self._maybe_gray(x, n, self.cfg.grayscale)
        x = (x - self.mean) * self.inv_std
        if self.cutout:
            x = self._cutout(x, n)
        return self._resize(x)

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 images to normalised float, no augmentation (evaluation)."""
        return self._resize((x.float() - self.mean) * self.inv_std)

    def _resize(self, x: Tensor) -> Tensor:
        """To the model's input side (``data.image_size``), bilinear, on the device."""
        if self.size == x.shape[-1]:
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def _photometric(self, x: Tensor, n: int) -> Tensor:
        g, dev, j = self.gen, self.device, self.jitter
        b = _uniform(n, 1 - j, 1 + j, g, dev).view(n, 1, 1, 1)
        c = _uniform(n, 1 - j, 1 + j, g, dev).view(n, 1, 1, 1)
        sat = _uniform(n, 1 - j, 1 + j, g, dev).view(n, 1, 1, 1)
        x = x * b
        m = x.mean((1, 2, 3), keepdim=True)
        x = (x - m) * c + m
        if self.channels == 1:  # saturation and grayscale leave gray images as they are
            return x.clamp_(0, 255)
        gray = _gray(x)
        x = gray + (x - gray) * sat
        return self._maybe_gray(x, n, self.gray_p).clamp_(0, 255)

    def _maybe_gray(self, x: Tensor, n: int, p: float) -> Tensor:
        """Each image grayscale with probability ``p``."""
        if self.channels == 1:
            return x
        to_gray = (torch.rand(n, generator=self.gen, device=self.device) < p).view(n, 1, 1, 1)
        return torch.where(to_gray, _gray(x), x)

    def _warp(self, x: Tensor, n: int) -> Tensor:
        """``rotate``/``translate`` on every image, or, with ``pick_one``, one op per image drawn from
        it (``affine`` then takes ``rotate``/``translate``, default 15 deg / 0.1): one affine
        ``grid_sample`` for the batch, bilinear, zeros outside."""
        c, g, dev = self.cfg, self.gen, self.device
        eye = torch.eye(3, device=dev).expand(n, 3, 3)
        affine = _affine(n, c.rotate or (15.0 if c.pick_one else 0.0), c.translate or (0.1 if c.pick_one else 0.0), g, dev)
        if not c.pick_one:
            m = affine
        else:
            pick = torch.randint(0, len(c.pick_one), (n,), generator=g, device=dev).view(n, 1, 1)
            m = eye
            for i, op in enumerate(c.pick_one):
                if op == "affine":
                    t = affine
                elif op == "flip":  # RandomHorizontalFlip: p 0.5
                    sx = torch.where(torch.rand(n, generator=g, device=dev) < 0.5, -1.0, 1.0)
                    t = torch.diag_embed(torch.stack([sx, torch.ones_like(sx), torch.ones_like(sx)], 1))
                else:
                    t = _resized_crop(n, g, dev)
                m = torch.where(pick == i, t, m)
        grid = F.affine_grid(m[:, :2], list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _perspective(self, x: Tensor, n: int) -> Tensor:
        """torchvision's RandomPerspective (p 0.5) per image: each corner moves inwards by up to
        ``perspective`` x half the side; the homography maps output to input pixels."""
        g, dev, d = self.gen, self.device, self.cfg.perspective
        start = self._corners.expand(n, 4, 2)
        on = (torch.rand(n, generator=g, device=dev) < 0.5).view(n, 1, 1)
        end = start - start * torch.rand(n, 4, 2, generator=g, device=dev) * d * on  # towards the centre
        a = torch.zeros(n, 8, 8, device=dev)
        xs, ys, us, vs = start[..., 0], start[..., 1], end[..., 0], end[..., 1]
        a[:, 0::2, 0], a[:, 0::2, 1], a[:, 1::2, 3], a[:, 1::2, 4] = xs, ys, xs, ys
        a[:, 0::2, 2].fill_(1.0)
        a[:, 1::2, 5].fill_(1.0)
        a[:, 0::2, 6], a[:, 0::2, 7] = -xs * us, -ys * us
        a[:, 1::2, 6], a[:, 1::2, 7] = -xs * vs, -ys * vs
        h = torch.linalg.solve_ex(a, torch.stack([us, vs], 2).reshape(n, 8))[0]  # solve() syncs to check for errors
        h = torch.cat([h, torch.ones(n, 1, device=dev)], 1).view(n, 3, 3)
        lin = (self._ar.float() + 0.5) / (self.side / 2) - 1  # pixel centres in [-1, 1]
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        pts = torch.stack([xx, yy, torch.ones_like(xx)], -1).view(1, -1, 3)
        mapped = pts @ h.transpose(1, 2)
        grid = (mapped[..., :2] / mapped[..., 2:]).view(n, self.side, self.side, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _hue(self, x: Tensor, n: int) -> Tensor:
        """Hue shift of +- ``hue`` of a turn per image: a rotation of the chroma plane in YIQ."""
        angle = _uniform(n, -self.cfg.hue, self.cfg.hue, self.gen, self.device) * 2 * math.pi
        cos, sin = angle.cos(), angle.sin()
        rot = torch.zeros(n, 3, 3, device=self.device)
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        rot[:, 0, 0].fill_(1.0)
        m = self._yiq_inv @ rot @ self._yiq
        return torch.einsum("nij,njhw->nihw", m, x).clamp_(0, 255)

    def _cutout(self, x: Tensor, n: int) -> Tensor:
        s = self.side
        cy = torch.randint(0, s, (n, 1, 1), generator=self.gen, device=self.device)
        cx = torch.randint(0, s, (n, 1, 1), generator=self.gen, device=self.device)
        lo = self.cutout // 2  # the square covers [c - side // 2, c - side // 2 + side): side px when inside
        dy, dx = self._ar.view(1, s, 1) - cy + lo, self._ar.view(1, 1, s) - cx + lo
        rows, cols = (dy >= 0) & (dy < self.cutout), (dx >= 0) & (dx < self.cutout)
        return x.masked_fill((rows & cols).unsqueeze(1), 0.0)


def jsd_loss(clean: Tensor, aug1: Tensor, aug2: Tensor) -> Tensor:
    """AugMix's Jensen-Shannon consistency term over the logits of the three views, as the paper's
    reference code: mean over views of KL(p_view || M), M the views' mean distribution (clamped at
    1e-7 before its log), batch-averaged. The trainer adds 12 x this to the clean view's CE."""
    p = [F.softmax(v.float(), dim=1) for v in (clean, aug1, aug2)]
    log_m = torch.clamp((p[0] + p[1] + p[2]) / 3.0, 1e-7, 1.0).log()
    return sum(F.kl_div(log_m, q, reduction="batchmean") for q in p) / 3.0  # type: ignore[return-value]


JSD_WEIGHT = 12.0


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
