"""The named augmentation policies, batched on the training device: ``randaugment``,
``trivialaugment`` (TrivialAugment Wide), ``autoaugment`` (AutoAugment's CIFAR-10 policy) and
``augmix``.

Ops, magnitude tables and uint8 arithmetic are torchvision's (``transforms.v2``), but every image
draws its own ops, magnitudes and signs from the trial's generator, and the batch goes through
each op once: an image's choice is a ``torch.where`` selection, so nothing waits on the host (a
torchvision policy draws once per call with ``int(torch.randint(...))``, a host sync on a GPU,
and transforms every image of the call alike). The geometric ops of one draw are one
``grid_sample`` with a per-image matrix (nearest, zeros outside; AugMix: bilinear).

How ``augment.strength`` s sets them: RandAugment takes 2 ops at magnitude bin round(30 s) of 31;
AugMix severity 1 + round(9 s) (3 chains of depth 1-3, alpha 1); TrivialAugment and AutoAugment
apply to each image with probability s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
       "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
_SIGNED = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness")
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")

# AutoAugmentPolicy.CIFAR10: 25 sub-policies of two (op, probability, magnitude bin of 10)
_CIFAR10 = (
    (("Invert", 0.1, 0), ("Contrast", 0.2, 6)), (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)), (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 0), ("Equalize", 0.9, 0)), (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)), (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 0), ("Equalize", 0.5, 0)), (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)), (("Equalize", 0.3, 0), ("AutoContrast", 0.4, 0)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)), (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 0)), (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 0), ("Equalize", 0.6, 0)), (("Color", 0.9, 9), ("Equalize", 0.6, 0)),
    (("AutoContrast", 0.8, 0), ("Solarize", 0.2, 8)), (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 0)), (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 0), ("Solarize", 0.8, 3)), (("Equalize", 0.8, 0), ("Invert", 0.1, 0)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 0)),
)


def magnitudes(policy: str, bins: int, side: int) -> Tensor:
    """(len(OPS), bins): torchvision's magnitude of each op at each bin (0 for ops without one)."""
    wide, augmix = policy == "trivialaugment", policy == "augmix"
    shear, color = (0.99, 0.99) if wide else (0.3, 0.9)
    translate = 32.0 if wide else side / 3.0 if augmix else 150.0 / 331.0 * side
    rows = {"ShearX": shear, "ShearY": shear, "TranslateX": translate, "TranslateY": translate,
            "Rotate": 135.0 if wide else 30.0, "Brightness": color, "Color": color, "Contrast": color, "Sharpness": color}
    table = torch.zeros(len(OPS), bins)
    for op, top in rows.items():
        table[OPS.index(op)] = torch.linspace(0.0, top, bins)
    bits_from, bits_steps = (4, 4) if augmix else (8, 6) if wide else (8, 4)
    table[OPS.index("Posterize")] = (bits_from - torch.arange(bins) / ((bins - 1) / bits_steps)).round()
    table[OPS.index("Solarize")] = torch.linspace(1.0, 0.0, bins)
    return table


class Policy:
    """``policy(x)``: a uint8 batch (n, c, h, w), h == w, transformed image by image; uint8 out."""

    def __init__(self, name: str, strength: float, side: int, channels: int, gen: torch.Generator,
                 device: torch.device) -> None:
        if name not in ("randaugment", "trivialaugment", "autoaugment", "augmix"):
            raise ValueError(f"no named policy {name!r}")
        self.name, self.strength, self.side, self.channels, self.gen, self.device = name, strength, side, channels, gen, device
        # on an accelerator, choosing images by op (nonzero) would wait for the device
        self.select = device.type != "cpu"
        self.bins = 31 if name in ("randaugment", "trivialaugment") else 10
        ops = {"randaugment": OPS[:-1], "trivialaugment": OPS[:-1], "augmix": OPS[1:-1], "autoaugment": OPS[1:]}[name]
        self.ops = ops
        self._colors = [OPS.index(o) for o in ops if o not in _GEOMETRIC and o != "Identity"]  # one kernel each
        self._choices = torch.tensor([OPS.index(o) for o in ops], device=device)
        self._table = magnitudes(name, self.bins, side).to(device)
        self._signed = torch.tensor([o in _SIGNED for o in OPS], device=device)
        self._geometric = torch.tensor([o in _GEOMETRIC for o in OPS], device=device)
        self.magnitude = round(30 * strength)  # randaugment's bin
        self.severity = 1 + round(9 * strength)  # augmix's
        sub = [[(OPS.index(o), p, b) for o, p, b in pair] for pair in _CIFAR10]
        self._sub_op = torch.tensor([[o for o, _, _ in pair] for pair in sub], device=device)
        self._sub_p = torch.tensor([[p for _, p, _ in pair] for pair in sub], device=device)
        self._sub_bin = torch.tensor([[b for _, _, b in pair] for pair in sub], device=device)
        self._blur = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=device).div(13).expand(
            channels, 1, 3, 3).contiguous()

    def __call__(self, x: Tensor) -> Tensor:
        n = len(x)
        if self.name == "augmix":
            return self._augmix(x)
        if self.name == "randaugment":
            for _ in range(2):
                op = self._draw_op(n)
                x = self._apply(x, op, self._table[op, self.magnitude])
            return x
        on = self._rand(n) < self.strength  # trivialaugment / autoaugment: on a fraction s of the images
        if self.name == "trivialaugment":
            op = torch.where(on, self._draw_op(n), 0)
            return self._apply(x, op, self._table[op, self._randint(self.bins, n)])
        sub = self._randint(len(_CIFAR10), n)
        for j in range(2):
            op = torch.where(on & (self._rand(n) <= self._sub_p[sub, j]), self._sub_op[sub, j], 0)
            x = self._apply(x, op, self._table[op, self._sub_bin[sub, j]])
        return x

    def _rand(self, n: int) -> Tensor:
        return torch.rand(n, generator=self.gen, device=self.device)

    def _randint(self, high: int, n: int) -> Tensor:
        return torch.randint(0, high, (n,), generator=self.gen, device=self.device)

    def _draw_op(self, n: int) -> Tensor:
        return self._choices[self._randint(len(self._choices), n)]

    def _augmix(self, x: Tensor) -> Tensor:
        """m x + (1 - m) sum_i w_i chain_i(x), m ~ Beta(1, 1), w ~ Dirichlet(1, 1, 1), each chain
        1-3 ops (drawn per image and chain) at a magnitude bin below the severity; truncated to uint8."""
        n = len(x)
        m = self._rand(n)
        e = -torch.log1p(-torch.rand(n, 3, generator=self.gen, device=self.device))  # Exp(1): Dirichlet(1, 1, 1)
        w = e / e.sum(1, keepdim=True).clamp_min(1e-12) * (1 - m)[:, None]
        mixed = m.view(n, 1, 1, 1) * x.float()
        for i in range(3):
            aug, depth = x, self._randint(3, n) + 1  # each chain's depth drawn on its own, as torchvision's
            for k in range(3):
                op = torch.where(depth > k, self._draw_op(n), 0)
                aug = self._apply(aug, op, self._table[op, self._randint(self.severity, n)])
            mixed += w[:, i].view(n, 1, 1, 1) * aug.float()
        return mixed.to(torch.uint8)

    def _apply(self, x: Tensor, op: Tensor, magnitude: Tensor) -> Tensor:
        """Image i through op ``op[i]`` at ``magnitude[i]`` (negated with probability 1/2 for signed ops)."""
        n = len(x)
        flip = (self._rand(n) <= 0.5) & self._signed[op]
        mag = torch.where(flip, -magnitude, magnitude)
        m, xf = mag.view(n, 1, 1, 1), x.float()
        if self.select:  # every op on the whole batch, each image's result picked on the device
            out = torch.where(self._geometric[op].view(n, 1, 1, 1), self._warp(xf, op, mag), x)
            for k in self._colors:
                out = torch.where((op == k).view(n, 1, 1, 1), self._color(OPS[k], x, xf, m), out)
            return out
        out = x.clone()  # on the CPU a host sync costs nothing: each op on the images that drew it
        for k, i in [(-1, self._geometric[op].nonzero()[:, 0])] + [(k, (op == k).nonzero()[:, 0]) for k in self._colors]:
            if len(i):
                out[i] = self._warp(xf[i], op[i], mag[i]) if k < 0 else self._color(OPS[k], x[i], xf[i], m[i])
        return out

    def _warp(self, xf: Tensor, op: Tensor, mag: Tensor) -> Tensor:
        """One grid_sample for the batch: shears about the top-left corner (torchvision's
        ``center=[0, 0]``), translations by whole pixels, rotations in degrees about the centre."""
        def on(name: str) -> Tensor:
            return op == OPS.index(name)

        zero = torch.zeros_like(mag)
        angle = torch.where(on("Rotate"), mag * (math.pi / 180), zero)
        shift = -2 * mag.trunc() / self.side
        cos, sin = angle.cos(), angle.sin()
        a01 = torch.where(on("ShearX"), mag, -sin)
        a10 = torch.where(on("ShearY"), mag, sin)
        a02 = torch.where(on("ShearX"), mag, torch.where(on("TranslateX"), shift, zero))
        a12 = torch.where(on("ShearY"), mag, torch.where(on("TranslateY"), shift, zero))
        theta = torch.stack([cos, a01, a02, a10, cos, a12], 1).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(xf.shape), align_corners=False)
        bilinear = self.name == "augmix"
        out = F.grid_sample(xf, grid, mode="bilinear" if bilinear else "nearest", padding_mode="zeros", align_corners=False)
        return (out.round_() if bilinear else out).clamp_(0, 255).to(torch.uint8)

    def _color(self, name: str, x: Tensor, xf: Tensor, m: Tensor) -> Tensor:
        """torchvision's uint8 kernel of ``name`` with a per-image magnitude ``m`` (n, 1, 1, 1)."""
        if name == "Brightness":
            return (xf * (1 + m)).clamp_(0, 255).to(torch.uint8)
        if name == "Color":
            if self.channels == 1:
                return x
            return _blend(xf, _luma(xf).to(torch.uint8).float(), m)
        if name == "Contrast":
            gray = _luma(xf).floor_() if self.channels == 3 else xf
            return _blend(xf, gray.mean((1, 2, 3), keepdim=True), m)
        if name == "Sharpness":
            if self.side <= 2:
                return x
            blurred = F.conv2d(xf, self._blur, groups=self.channels).round_()
            out = xf.clone()
            inner = out[..., 1:-1, 1:-1]
            inner.addcmul_(blurred - inner, _factors(m)[1])  # x + (1 - f)(blur - x)
            return out.clamp_(0, 255).to(torch.uint8)
        if name == "Posterize":
            step = torch.pow(2.0, 8 - m)
            return (xf / step).floor_().mul_(step).to(torch.uint8)
        if name == "Solarize":
            return torch.where(xf >= 255 * m, 255 - x, x)
        if name == "AutoContrast":
            lo, hi = xf.amin((2, 3), keepdim=True), xf.amax((2, 3), keepdim=True)
            flat = hi == lo
            lo = torch.where(flat, 0.0, lo)
            scale = torch.where(flat, 1.0, (hi - lo) * (1.0 / 255))
            return ((xf - lo) / scale).clamp_(0, 255).to(torch.uint8)
        if name == "Equalize":
            from torchvision.transforms.v2.functional import equalize

            return equalize(x)
        if name == "Invert":
            return 255 - x
        raise ValueError(f"no op {name!r}")


def _luma(xf: Tensor) -> Tensor:
    """torchvision's grayscale, summed in its order (its uint8 result is exact to the last bit)."""
    return xf[:, 0:1].mul(0.2989).add_(xf[:, 1:2], alpha=0.587).add_(xf[:, 2:3], alpha=0.114)


def _factors(m: Tensor) -> tuple[Tensor, Tensor]:
    """(f, 1 - f) for factor f = 1 + m, rounded to float32 as torchvision's Python floats are."""
    f = 1 + m.double()
    return f.float(), (1 - f).float()


def _blend(a: Tensor, b: Tensor, m: Tensor) -> Tensor:
    """torchvision's ``_blend`` at factor 1 + m: a f + b (1 - f), clamped, truncated to uint8."""
    f, rest = _factors(m)
    return (a * f).addcmul_(b, rest).clamp_(0, 255).to(torch.uint8)
