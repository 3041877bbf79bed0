"""Cost of each augmentation policy: ms per batch of 128 uint8 images, on the trainer's device.

    python bench/augment.py [--device auto --batch 128]

Reported beside the model step time of a small ResNet-18 (width 0.25) at the same batch, measured
in this run, so the cost reads as a fraction of a training step.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from hps.trainers import config_from_dict, create_model, load_data
from hps.trainers.augment import Augmenter
from hps.trainers.device import resolve_device


def per_batch_ms(fn, reps: int = 20) -> float:  # type: ignore[no-untyped-def]
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=128)
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

    step_ms = per_batch_ms(step, 5)
    rows = {}
    setups: dict[str, dict] = {f"{p}@{s}": {"policy": p, "strength": s} for p, s in [
        ("none", 0.0), ("basic", 0.5), ("basic", 1.0), ("randaugment", 0.5), ("trivialaugment", 1.0),
        ("autoaugment", 1.0), ("augmix", 0.5)]}
    setups["report000 (pick_one + grayscale)"] = {"strength": 0.0, "pick_one": ["resized_crop", "affine", "flip"],
                                                  "grayscale": 0.1}
    setups["report003 (basic@0.5 + rotate, translate, perspective, hue, grayscale)"] = {
        "strength": 0.5, "rotate": 30, "translate": 0.25, "perspective": 0.3, "hue": 0.1, "grayscale": 0.2}
    for name, augment in setups.items():
        cfg = config_from_dict({"augment": augment}).augment
        aug = Augmenter(cfg, data.train.x, data.mean, data.std, torch.Generator(device=device).manual_seed(0))
        ms = per_batch_ms(lambda a=aug: a.batch(idx))
        rows[name] = {"ms_per_batch": round(ms, 2), "fraction_of_step": round(ms / step_ms, 3)}
    print(json.dumps({"device": str(device), "batch": args.batch, "resnet18_w0.25_step_ms": round(step_ms, 1),
                      "policies": rows}, indent=2))


if __name__ == "__main__":
    main()
