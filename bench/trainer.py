"""Trainer throughput vs (a) the compute floor and (b) a plain torchvision DataLoader trainer.

    python bench/trainer.py [--model resnet18 --width 0.5 --batch 128 --epochs 2 --rounds 5 --device auto]

All three step the same model (same width, batch size, optimizer, channels_last, precision) over
the same real CIFAR images ($HPS_DATA or data.path). Each round measures the three one after the
other, the order rotating round by round (floor, hps, dataloader; hps, dataloader, floor; ...), so
no method always runs first in a warm or cold process; each measurement is the images/s of the
last of ``--epochs`` epochs. Reported: the medians over the rounds and each as a ratio of the
floor's median, all measured in this run.
- floor: pre-made normalised batches already on the device, no data pipeline at all.
- hps: ``hps.trainers.train`` (uint8 on the device, batched per-sample flip + pad-4 crop).
- dataloader: torchvision Dataset + RandomCrop/RandomHorizontalFlip/ToTensor/Normalize + DataLoader.
On a GPU measure ``--methods floor,hps`` on their own: a small net's step is bound by the host
launching kernels, and the DataLoader's worker processes slow whatever runs beside them (airnet on
an H200: hps/floor 1.15 with them interleaved, 1.03 without).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hps.trainers import config_from_dict, create_model, load_data, train
from hps.trainers.device import autocast_dtype, resolve_device
from hps.trainers.optim import build_optimizer


def floor_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cast: Any,
               channels_last: bool) -> None:
    """One step of the floor: a batch made elsewhere through the model and optimizer, nothing else
    (``bench/gpu.py profile`` steps the same)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with cast:
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _step_loop(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: Any, device: torch.device,
               cast: Any, channels_last: bool) -> float:
    model.train()
    n, t0 = 0, time.perf_counter()
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        floor_step(model, opt, x, y, cast, channels_last)
        n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2, help="epochs per measurement (the last one counts)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the three, interleaved")
    p.add_argument("--methods", default="floor,hps,dataloader", help="which to measure (hps alone: A/B runs of two versions)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    args = p.parse_args()

    raw = {"model": {"name": args.model, "width": args.width}, "data": {"val_fraction": 0.1},
           "train": {"epochs": args.epochs, "batch_size": args.batch, "device": args.device,
                     "precision": args.precision, "channels_last": args.channels_last}}
    cfg = config_from_dict(raw, "bench")
    device = resolve_device(args.device)
    data = load_data(cfg.data, device)
    n = len(data.train) // args.batch * args.batch
    dtype = autocast_dtype(args.precision, device)
    cast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        m = create_model(args.model, width=args.width).to(device)
        if args.channels_last:
            m = m.to(memory_format=torch.channels_last)
        return m, build_optimizer(m, cfg.optimizer)

    # (a) floor: normalised float batches made once, on the device
    mean = torch.tensor(data.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(data.std, device=device).view(1, 3, 1, 1) * 255
    xs = ((data.train.x[:n].float() - mean) / std).split(args.batch)
    ys = data.train.y[:n].split(args.batch)

    def floor() -> float:
        model, opt = fresh()
        return [_step_loop(model, opt, zip(xs, ys, strict=True), device, cast, args.channels_last)
                for _ in range(args.epochs)][-1]

    def hps() -> float:
        return float(train(cfg, data=data).history[-1]["images_per_s"])

    # (b) torchvision DataLoader + transforms
    from torchvision import transforms as T

    tf = T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(data.mean, data.std)])
    images = data.train.x[:n].permute(0, 2, 3, 1).cpu().numpy()
    labels = data.train.y[:n].cpu().numpy()

    class DS(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            from PIL import Image

            return tf(Image.fromarray(images[i])), int(labels[i])

    loader = torch.utils.data.DataLoader(DS(), batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda")

    def dataloader() -> float:
        model, opt = fresh()
        return [_step_loop(model, opt, loader, device, cast, args.channels_last) for _ in range(args.epochs)][-1]

    methods = {"floor": floor, "hps": hps, "dataloader": dataloader}
    names = [m for m in methods if m in args.methods.split(",")]
    seen: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order every round
            seen[name].append(methods[name]())
    med = {k: statistics.median(v) for k, v in seen.items()}
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
              "model": args.model, "width": args.width, "batch": args.batch, "images": n, "rounds": args.rounds,
              "precision": str(dtype or "fp32"), "channels_last": args.channels_last,
              "images_per_s_median": {k: round(v) for k, v in med.items()},
              "images_per_s_each": {k: [round(x) for x in v] for k, v in seen.items()},
              "epoch_time_vs_floor": {k: round(med["floor"] / med[k], 3) for k in ("hps", "dataloader")
                                      if "floor" in med and k in med}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
