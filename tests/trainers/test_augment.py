import random

import pytest
import torch

from hps.trainers import config_from_dict, load_data
from hps.trainers.augment import Augmenter, mix


def augmenter(strength: float, policy: str = "basic", seed: int = 0) -> tuple[Augmenter, torch.Tensor]:
    d = load_data(config_from_dict({"data": {"subset": 500}}).data)
    cfg = config_from_dict({"augment": {"strength": strength, "policy": policy}}).augment
    return Augmenter(cfg, d.train.x, d.mean, d.std, torch.Generator().manual_seed(seed)), d.train.x


def test_strength_zero_is_only_normalisation() -> None:
    aug, x = augmenter(0.0)
    idx = torch.arange(64)
    assert torch.equal(aug.batch(idx), aug.normalize(x[idx]))


def test_flip_and_crop_are_drawn_per_sample() -> None:
    aug, x = augmenter(0.5)
    idx = torch.arange(256)
    out = aug.batch(idx)
    plain = aug.normalize(x[idx])
    same = (out - plain).abs().flatten(1).amax(1) < 1e-5
    flipped = (out - plain.flip(3)).abs().flatten(1).amax(1) < 1e-5
    # every image is transformed on its own: some untouched, some exactly flipped, most shifted
    assert 0 < same.sum() < 64 and 0 < flipped.sum() < 64
    assert (~same & ~flipped).sum() > 128
    assert aug.pad == 4


def test_strong_basic_adds_cutout_and_photometric() -> None:
    aug, _ = augmenter(1.0)
    assert aug.cutout == 16 and aug.gray_p > 0 and aug.jitter > 0
    out = aug.batch(torch.arange(128))
    zeros = (out == 0).all(1).flatten(1).sum(1)  # cut-out pixels are zero after normalisation
    assert (zeros > 0).float().mean() > 0.9


def test_named_policies_run_on_uint8_batches() -> None:
    for policy in ("randaugment", "trivialaugment", "autoaugment", "augmix"):
        aug, _ = augmenter(0.7, policy)
        out = aug.batch(torch.arange(32))
        assert out.shape == (32, 3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_same_seed_same_batches() -> None:
    a, _ = augmenter(1.0, seed=3)
    b, _ = augmenter(1.0, seed=3)
    idx = torch.arange(100)
    assert torch.equal(a.batch(idx), b.batch(idx))


def test_mixup_and_cutmix() -> None:
    x = torch.randn(16, 3, 32, 32)
    y = torch.arange(16)
    cfg = config_from_dict({"augment": {"mixup_alpha": 0.2}}).augment
    g = torch.Generator().manual_seed(0)
    xm, y2, lam = mix(x, y, cfg, random.Random(0), g)
    assert 0 <= lam <= 1 and sorted(y2.tolist()) == list(range(16))
    assert torch.allclose(xm, lam * x + (1 - lam) * x[y2], atol=1e-5)  # y is arange, so y2 is the permutation
    cut = config_from_dict({"augment": {"cutmix_alpha": 1.0}}).augment
    xc, y2, lam = mix(x, y, cut, random.Random(1), g)
    changed = (xc != x).any(1).float().mean().item()
    assert abs((1 - lam) - changed) < 0.05  # lam is the kept area
    none = config_from_dict({"augment": {}}).augment
    assert mix(x, y, none, random.Random(0), g)[2] == 1.0


def test_cutout_square_has_the_documented_side() -> None:
    """strength 1.0 documents a 16 px square: exactly 256 pixels when it lies inside the image."""
    aug, _ = augmenter(1.0)
    n = 64
    x = aug._cutout(torch.ones(n, 3, 32, 32), n)
    cut = (x == 0).all(1).flatten(1).sum(1)
    assert aug.cutout == 16
    assert cut.max().item() == 256 and (cut <= 256).all()  # centres near the border clip the square
    gen = torch.Generator().manual_seed(0)  # the same draws as aug._cutout: which centres are inside
    cy = torch.randint(0, 32, (n, 1, 1), generator=gen)
    cx = torch.randint(0, 32, (n, 1, 1), generator=gen)
    inside = ((cy >= 8) & (cy <= 24) & (cx >= 8) & (cx <= 24)).flatten()
    assert inside.any() and (cut[inside] == 256).all()


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment", "augmix"])
def test_named_policies_draw_per_image(policy: str) -> None:
    """Each named policy transforms images beyond flip + crop, each image with its own draw: 64
    copies of one image come out as many different images, and another seed draws others."""
    aug, x = augmenter(1.0, policy, seed=1)
    aug.pad, aug.flip, aug.images = 0, False, x  # isolate the policy
    idx = torch.full((64,), 5)
    out = aug.batch(idx)
    plain = aug.normalize(x[idx])
    changed = (out - plain).abs().flatten(1).amax(1) > 1e-3
    assert changed.float().mean() > 0.6, changed.float().mean()
    assert _distinct(out) >= 20, _distinct(out)  # (draws per group of 8 images gave at most 8)
    again, _ = augmenter(1.0, policy, seed=2)
    again.pad, again.flip, again.images = 0, False, x
    assert not torch.equal(again.batch(idx), out)


def _torchvision_op(name: str, img: torch.Tensor, mag: float) -> torch.Tensor:
    """What torchvision's v2 auto-augment classes do for op ``name`` at magnitude ``mag``."""
    import math

    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    nearest = InterpolationMode.NEAREST
    if name in ("ShearX", "ShearY"):
        shear = [math.degrees(math.atan(mag)), 0.0] if name == "ShearX" else [0.0, math.degrees(math.atan(mag))]
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=nearest, center=[0, 0])
    if name in ("TranslateX", "TranslateY"):
        move = [int(mag), 0] if name == "TranslateX" else [0, int(mag)]
        return TF.affine(img, angle=0.0, translate=move, scale=1.0, shear=[0.0, 0.0], interpolation=nearest)
    kernels = {"Identity": lambda: img, "Rotate": lambda: TF.rotate(img, angle=mag, interpolation=nearest),
               "Brightness": lambda: TF.adjust_brightness(img, 1.0 + mag),
               "Color": lambda: TF.adjust_saturation(img, 1.0 + mag), "Contrast": lambda: TF.adjust_contrast(img, 1.0 + mag),
               "Sharpness": lambda: TF.adjust_sharpness(img, 1.0 + mag), "Posterize": lambda: TF.posterize(img, int(mag)),
               "Solarize": lambda: TF.solarize(img, 255.0 * mag), "AutoContrast": lambda: TF.autocontrast(img),
               "Equalize": lambda: TF.equalize(img), "Invert": lambda: TF.invert(img)}
    return kernels[name]()


@pytest.mark.parametrize("channels", [3, 1])
def test_each_op_is_torchvisions_to_the_bit(channels: int) -> None:
    """Every op of the batched policies gives torchvision's uint8 result exactly, at magnitudes of
    both signs, for colour and gray images: on the per-op path (CPU) and the selecting path (GPU)."""
    from hps.trainers.policies import OPS, Policy, magnitudes

    x = load_data(config_from_dict({"data": {"subset": 500}}).data).train.x[:48]
    x = x if channels == 3 else (x.float().mean(1, keepdim=True)).to(torch.uint8)
    table = magnitudes("trivialaugment", 31, 32)
    for select in (False, True):
        p = Policy("autoaugment", 1.0, 32, channels, torch.Generator().manual_seed(0), torch.device("cpu"))
        p.select = select  # autoaugment has every op but Identity
        p._signed[:] = False  # the signs are the test's
        for name in OPS:
            for b in (3, 17, 30):
                mag = float(table[OPS.index(name), b])
                for sign in (1, -1) if name in ("ShearX", "Rotate", "TranslateY", "Brightness", "Color", "Sharpness") else (1,):
                    ours = p._apply(x, torch.full((48,), OPS.index(name)), torch.full((48,), sign * mag))
                    assert torch.equal(ours, _torchvision_op(name, x, sign * mag)), (name, sign * mag, select)


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment", "augmix"])
def test_the_gpu_path_selects_what_the_cpu_path_computes(policy: str) -> None:
    """On an accelerator every op runs on the whole batch and each image's result is picked with
    ``torch.where`` (no host sync); on the CPU each op runs on the images that drew it. Same draws,
    same images."""
    a, _ = augmenter(0.8, policy, seed=4)
    b, _ = augmenter(0.8, policy, seed=4)
    assert a.policy is not None and b.policy is not None and not a.policy.select
    b.policy.select = True
    idx = torch.arange(96)
    assert torch.equal(a.batch(idx), b.batch(idx))


class _HostSyncs(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the ops that make a GPU wait for the host or the host for the GPU: a tensor read as
    a Python number or bool, ``nonzero`` (boolean indexing), host data turned into a tensor, a
    checked solve."""

    SYNCING = frozenset({"_local_scalar_dense", "nonzero", "masked_select", "lift_fresh", "_linalg_check_errors", "equal",
                         "is_nonzero", "item"})

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func.overloadpacket.__name__ in self.SYNCING:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("augment", [{"policy": "randaugment", "strength": 0.5}, {"policy": "trivialaugment", "strength": 1.0},
                                     {"policy": "autoaugment", "strength": 1.0}, {"policy": "augmix", "strength": 0.5},
                                     {"policy": "basic", "strength": 1.0, "rotate": 20.0, "perspective": 0.3, "hue": 0.1,
                                      "grayscale": 0.2, "pick_one": ["resized_crop", "affine", "flip"]}])
def test_a_batch_on_the_gpu_path_never_waits_for_the_host(augment: dict) -> None:
    """Every policy and op, as it runs on an accelerator, builds a batch without one host sync
    (torchvision's policies took one per draw: 16 per batch of 128)."""
    d = load_data(config_from_dict({"data": {"subset": 500}}).data)
    cfg = config_from_dict({"augment": augment}).augment
    aug = Augmenter(cfg, d.train.x, d.mean, d.std, torch.Generator().manual_seed(0))
    if aug.policy is not None:
        aug.policy.select = True
    with _HostSyncs() as syncs:
        out = aug.batch(torch.arange(128))
    assert syncs.seen == [] and out.shape == (128, 3, 32, 32)
    cpu = Augmenter(cfg, d.train.x, d.mean, d.std, torch.Generator().manual_seed(0))
    if cpu.policy is not None:
        with _HostSyncs() as syncs:
            cpu.batch(torch.arange(128))
        assert syncs.seen  # the detector sees the CPU path's nonzero


def geo(seed: int = 0, **augment: object) -> tuple[Augmenter, torch.Tensor]:
    """An Augmenter with only the given ops (strength 0: no crop, flip or jitter)."""
    d = load_data(config_from_dict({"data": {"subset": 500}}).data)
    cfg = config_from_dict({"augment": {"strength": 0.0, "policy": "basic", **augment}}).augment
    return Augmenter(cfg, d.train.x, d.mean, d.std, torch.Generator().manual_seed(seed)), d.train.x


def _distinct(out: torch.Tensor) -> int:
    """How many different images a batch holds (all made from one source image)."""
    return len({tuple(v.flatten()[::97].round(decimals=3).tolist()) for v in out})


@pytest.mark.parametrize("op", [{"rotate": 30.0}, {"translate": 0.25}, {"perspective": 0.3}, {"hue": 0.2},
                                {"pick_one": ["resized_crop", "affine", "flip"]}])
def test_geometric_and_hue_ops_are_random_per_sample(op: dict) -> None:
    """Report 003's rotation / translate / perspective / hue and report 000's one-of-N choice: 32
    copies of one image come out as (nearly) 32 different images, each drawn on its own."""
    aug, x = geo(**op)
    idx = torch.full((32,), 7)
    out = aug.batch(idx)
    plain = aug.normalize(x[idx])
    changed = (out - plain).abs().flatten(1).amax(1) > 1e-3
    floor = {"perspective": 8, "pick_one": 12}.get(next(iter(op)), 28)  # perspective is applied with p 0.5
    assert _distinct(out) >= floor and changed.sum() >= floor - 1


def test_no_op_values_leave_images_alone() -> None:
    aug, x = geo(rotate=0.0, translate=0.0, perspective=0.0, hue=0.0, grayscale=0.0)
    idx = torch.arange(16)
    assert torch.equal(aug.batch(idx), aug.normalize(x[idx]))


def test_pick_one_flip_alone_flips_about_half_exactly() -> None:
    aug, x = geo(pick_one=["flip"])
    idx = torch.arange(200)
    out, plain = aug.batch(idx), aug.normalize(x[idx])
    same = (out - plain).abs().flatten(1).amax(1) < 1e-4
    mirrored = (out - plain.flip(3)).abs().flatten(1).amax(1) < 1e-4
    assert bool((same | mirrored).all()) and 60 < int(mirrored.sum()) < 140


def test_hue_keeps_luma_and_grays() -> None:
    aug, x = geo(hue=0.5)
    img = x[:64].float()
    out = aug._hue(img.clone(), 64)
    luma = lambda t: 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]  # noqa: E731
    inside = (out > 0.5).all(1) & (out < 254.5).all(1)  # pixels the clamp left alone
    assert torch.allclose(luma(out)[inside], luma(img)[inside], atol=1e-2)
    gray = img.mean(1, keepdim=True).expand_as(img).clone()
    assert torch.allclose(aug._hue(gray.clone(), 64), gray, atol=1e-2)  # no chroma, nothing to turn


def test_grayscale_probability_one_grays_every_image() -> None:
    aug, _ = geo(grayscale=1.0)
    back = aug.batch(torch.arange(16)) / aug.inv_std + aug.mean  # undo the normalisation
    assert torch.allclose(back[:, 0], back[:, 1], atol=1e-2) and torch.allclose(back[:, 1], back[:, 2], atol=1e-2)


def test_augmix_views_are_clean_plus_two_independent_draws() -> None:
    d = load_data(config_from_dict({"data": {"subset": 500}}).data)
    cfg = config_from_dict({"augment": {"strength": 0.5, "policy": "augmix", "augmix_jsd": True}}).augment
    aug = Augmenter(cfg, d.train.x, d.mean, d.std, torch.Generator().manual_seed(0))
    clean, a1, a2 = aug.views(torch.arange(64))
    assert clean.shape == a1.shape == a2.shape == (64, 3, 32, 32)
    assert not torch.equal(a1, a2) and not torch.equal(clean, a1)


def test_jsd_loss_is_the_augmix_papers() -> None:
    """Hendrycks et al. 2020, eq. (the reference code): JS(p_clean; p_aug1; p_aug2) =
    (KL(p_clean || M) + KL(p_aug1 || M) + KL(p_aug2 || M)) / 3, M the mean of the three."""
    from hps.trainers.augment import jsd_loss

    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(8, 10, generator=g) * 3 for _ in range(3)]
    p = [torch.softmax(v.double(), 1) for v in logits]
    m = (p[0] + p[1] + p[2]) / 3
    expected = sum((q * (q.log() - m.log())).sum(1).mean() for q in p) / 3
    assert float(jsd_loss(*logits)) == pytest.approx(float(expected), rel=1e-5)
    assert float(jsd_loss(logits[0], logits[0], logits[0])) == pytest.approx(0.0, abs=1e-6)  # agreeing views cost nothing
    assert float(jsd_loss(*logits)) > 0


def test_image_size_resizes_on_the_device_after_augmentation() -> None:
    """``data.image_size``: training batches, AugMix views and evaluation images are the 32 px
    result resized (bilinear); the augmentation draws are the same at any size."""
    import torch.nn.functional as F

    d = load_data(config_from_dict({"data": {"subset": 500}}).data)
    cfg = config_from_dict({"augment": {"strength": 1.0, "rotate": 20, "hue": 0.1}}).augment
    small, big = (Augmenter(cfg, d.train.x, d.mean, d.std, torch.Generator().manual_seed(3), size=s) for s in (32, 128))
    idx = torch.arange(16)
    up = F.interpolate(small.batch(idx), size=(128, 128), mode="bilinear", align_corners=False)
    assert torch.allclose(big.batch(idx), up, atol=1e-5)
    assert big.normalize(d.train.x[idx]).shape == (16, 3, 128, 128)
    jsd = config_from_dict({"augment": {"policy": "augmix", "augmix_jsd": True}}).augment
    views = Augmenter(jsd, d.train.x, d.mean, d.std, torch.Generator(), size=64).views(idx)
    assert [v.shape[-1] for v in views] == [64, 64, 64]


@pytest.mark.parametrize(("side", "pad", "channels"), [(32, 4, 3), (28, 3, 1), (8, 7, 3)])
def test_padding_keeps_uint8_and_equals_reflect(monkeypatch: pytest.MonkeyPatch, side: int, pad: int, channels: int) -> None:
    """The training set is padded without a float copy of it (on a GPU that copy was a 1.7-2.1 GB
    one-off peak): no float conversion happens, and the result is reflect padding's."""
    images = torch.randint(0, 256, (5, channels, side, side), dtype=torch.uint8)
    expected = torch.nn.functional.pad(images.float(), (pad,) * 4, mode="reflect").to(torch.uint8)

    def no_float(*_: object, **__: object) -> None:
        raise AssertionError("a float copy of the training set")

    monkeypatch.setattr(torch.Tensor, "float", no_float)
    strength = pad * 32 / (8 * side)  # the strength whose pad is `pad`
    aug = Augmenter(config_from_dict({"augment": {"policy": "basic", "strength": min(strength, 0.5)}}).augment,
                    images, (0.5,) * channels, (0.25,) * channels, torch.Generator().manual_seed(0))
    monkeypatch.undo()
    assert aug.images.dtype == torch.uint8 and torch.equal(aug.images, torch.nn.functional.pad(
        images.float(), (aug.pad,) * 4, mode="reflect").to(torch.uint8))
    from hps.trainers.augment import reflect_pad

    assert torch.equal(reflect_pad(images, pad), expected)


def test_padding_goes_through_the_set_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Padding the rows of the whole set first left an intermediate 0.67x the padded set's size
    (207 MB beside its 311 MB on 45,000 images, seen on an H200): each step pads a chunk, and the
    chunks, boundaries included, give reflect padding's result."""
    import hps.trainers.augment as augment

    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    seen: list[int] = []
    index_select = torch.Tensor.index_select

    def counted(self: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
        seen.append(len(self))
        return index_select(self, dim, index)

    monkeypatch.setattr(augment, "REFLECT_CHUNK", 2)
    monkeypatch.setattr(torch.Tensor, "index_select", counted)
    out = augment.reflect_pad(images, 3)
    monkeypatch.undo()
    assert seen == [2, 2, 2, 2, 1, 1]
    assert torch.equal(out, torch.nn.functional.pad(images.float(), (3,) * 4, mode="reflect").to(torch.uint8))


@pytest.mark.parametrize("op", [{"perspective": 0.3}, {"hue": 0.2}, {"rotate": 30.0, "grayscale": 0.2}])
def test_a_step_copies_nothing_from_the_host(monkeypatch: pytest.MonkeyPatch, op: dict) -> None:
    """On CUDA a host tensor copied to the device, or an op that checks its result on the host
    (``linalg.solve``), waits for the GPU: a batch builds no tensor from host data and moves none."""
    aug, _ = geo(**op)
    idx = torch.arange(64)
    aug.gen.manual_seed(0)
    reference = aug.batch(idx)

    def host(*_: object, **__: object) -> None:
        raise AssertionError("host data copied in during a step")

    monkeypatch.setattr(torch, "tensor", host)
    monkeypatch.setattr(torch.Tensor, "to", host)
    monkeypatch.setattr(torch.linalg, "solve", host)
    aug.gen.manual_seed(0)
    out = aug.batch(idx)
    monkeypatch.undo()
    assert torch.equal(out, reference)
