"""Cost of each augmentation policy: ms per batch of 128 uint8 images, on the trainer's device.

    python bench/augment.py [--device auto --batch 128 --rounds 5]

Reported beside the model step time of a small ResNet-18 (width 0.25) at the same batch, so the
cost reads as a fraction of a training step; and, for the named policies, beside torchvision's v2
policy applied per group of 8 images (what hps ran before its batched policies), as a ratio. Every
setup, the step and the baselines are measured once per round, the order rotating round by round;
reported: medians over the rounds, all from this run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hps.trainers import config_from_dict, create_model, load_data
from hps.trainers.augment import Augmenter
from hps.trainers.device import resolve_device

NAMED = ("randaugment", "trivialaugment", "autoaugment", "augmix")


def per_batch_ms(fn: Callable[[], object], device: torch.device, reps: int = 10) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1000


def torchvision_groups(policy: str, strength: float, group: int = 8) -> Callable[[torch.Tensor], torch.Tensor]:
    """torchvision's v2 policy, one draw per group of ``group`` images (hps before 2026-12-03)."""
    from torchvision.transforms import v2

    t: torch.nn.Module
    if policy == "randaugment":
        t = v2.RandAugment(num_ops=2, magnitude=round(30 * strength), num_magnitude_bins=31)
    elif policy == "augmix":
        t = v2.AugMix(severity=1 + round(9 * strength))
    else:
        inner = v2.TrivialAugmentWide() if policy == "trivialaugment" else v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
        t = v2.RandomApply([inner], p=strength)
    return lambda x: torch.cat([t(c) for c in x.split(group)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    device = resolve_device(args.device)
    data = load_data(config_from_dict({}).data, device)
    idx = torch.arange(args.batch, device=device)
    model = create_model("resnet18", width=0.25).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(args.batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = data.train.y[: args.batch]

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    setups: dict[str, dict] = {f"{p}@{s}": {"policy": p, "strength": s} for p, s in [
        ("none", 0.0), ("basic", 0.5), ("basic", 1.0), ("randaugment", 0.5), ("trivialaugment", 1.0),
        ("autoaugment", 1.0), ("augmix", 0.5)]}
    setups["report000 (pick_one + grayscale)"] = {"strength": 0.0, "pick_one": ["resized_crop", "affine", "flip"],
                                                  "grayscale": 0.1}
    setups["report003 (basic@0.5 + rotate, translate, perspective, hue, grayscale)"] = {
        "strength": 0.5, "rotate": 30, "translate": 0.25, "perspective": 0.3, "hue": 0.1, "grayscale": 0.2}
    work: dict[str, Callable[[], object]] = {"step": step}
    for name, augment in setups.items():
        cfg = config_from_dict({"augment": augment}).augment
        aug = Augmenter(cfg, data.train.x, data.mean, data.std, torch.Generator(device=device).manual_seed(0))
        work[name] = lambda a=aug: a.batch(idx)
        if augment.get("policy") in NAMED:
            old = torchvision_groups(augment["policy"], augment["strength"])
            crop = aug._crop_flip  # the same flip + crop, then torchvision's policy, as before
            work[f"{name} torchvision per 8"] = lambda a=aug, o=old, c=crop: a.normalize(o(c(idx)))
    seen: dict[str, list[float]] = {k: [] for k in work}
    names = list(work)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seen[name].append(per_batch_ms(work[name], device, 3 if name == "step" else 10))
    med = {k: statistics.median(v) for k, v in seen.items()}
    rows = {name: {"ms_per_batch": round(med[name], 2), "fraction_of_step": round(med[name] / med["step"], 3)}
            for name in setups}
    for name in setups:
        if f"{name} torchvision per 8" in med:
            rows[name]["torchvision_per_8_ms"] = round(med[f"{name} torchvision per 8"], 2)
            rows[name]["vs_torchvision_per_8"] = round(med[name] / med[f"{name} torchvision per 8"], 2)
    print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "batch": args.batch,
                      "rounds": args.rounds, "resnet18_w0.25_step_ms": round(med["step"], 1), "policies": rows}, indent=2))


if __name__ == "__main__":
    main()
