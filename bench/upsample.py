"""Cost of training at ``data.image_size`` 128 (report 003): the on-device resize, and the model.

    python bench/upsample.py [--device auto --batch 16 --repeats 5]

Measured in one run, interleaved (A, B, A, B, ...), medians of the repeats:
- report 003's augmentation of a batch at 32 px, and the same with the resize to 128 px: the
  difference is the resize. It is reported as a fraction of a branchnet training step at 128 px;
- a branchnet training step (forward, backward, AdamW) at 32 px and at 128 px: their ratio is what
  the 128 px inputs cost (16x the pixels in every conv).
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

REPORT003_AUGMENT = {"strength": 0.5, "rotate": 30, "translate": 0.25, "perspective": 0.3, "hue": 0.1,
                     "grayscale": 0.2}


def timed(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    """ms per call, over ``calls`` calls."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1000 / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=16, help="16 keeps a 128 px step to seconds on a CPU")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    device = resolve_device(args.device)
    data = load_data(config_from_dict({}).data, device)
    idx = torch.arange(args.batch, device=device)
    cfg = config_from_dict({"augment": REPORT003_AUGMENT}).augment
    aug = {s: Augmenter(cfg, data.train.x, data.mean, data.std, torch.Generator(device=device).manual_seed(0), s)
           for s in (32, 128)}
    model = create_model("branchnet").to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    y = data.train.y[: args.batch]
    x = {s: aug[s].batch(idx).contiguous(memory_format=torch.channels_last) for s in (32, 128)}

    def step(size: int) -> None:
        opt.zero_grad()
        F.cross_entropy(model(x[size]), y).backward()
        opt.step()

    runs: dict[str, tuple[Callable[[], object], int]] = {  # (what, calls per measurement)
        "augment_32": (lambda: aug[32].batch(idx), 50), "augment_128": (lambda: aug[128].batch(idx), 50),
        "step_32": (lambda: step(32), 1), "step_128": (lambda: step(128), 1)}
    for fn, _ in runs.values():  # warm-up: the first call of each is not measured
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, (fn, calls) in runs.items():
            times[name].append(timed(fn, device, calls))
    med = {k: statistics.median(v) for k, v in times.items()}
    resize = med["augment_128"] - med["augment_32"]
    print(json.dumps({
        "device": str(device), "batch": args.batch, "repeats": args.repeats,
        "median_ms": {k: round(v, 3) for k, v in med.items()},
        "resize_ms": round(resize, 3),
        "resize_fraction_of_step_128": round(resize / med["step_128"], 4),
        "step_128_over_step_32": round(med["step_128"] / med["step_32"], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
