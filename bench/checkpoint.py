"""Checkpoint cost as a fraction of epoch time.

    python bench/checkpoint.py [--repeats 3 --epochs 3]

The quickstart seed (ResNet-18 at width 0.25) on the mini CIFAR set ($HPS_DATA), trained without a
checkpoint hook (A) and with hps's hook saving after every epoch to a FileSystemArtifactStore (B),
interleaved A, B, A, B... Reports medians: the epoch time of each, the seconds one save takes, the
checkpoint's size, and the cost at the default interval (one save per HPS_CHECKPOINT_SECONDS = 300 s
of training) as a fraction of training time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from hps.search.checkpoints import TrialCheckpoint
from hps.search.record import CHECKPOINT
from hps.search.storage import artifact_store
from hps.trainers import config_from_dict, train

SEED = Path(__file__).resolve().parents[1] / "spaces" / "seeds" / "quickstart.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--interval", type=float, default=300.0, help="the checkpoint interval to price (s)")
    args = p.parse_args()
    raw = yaml.safe_load(SEED.read_text())
    raw["train"].update(epochs=args.epochs, device="auto")
    cfg = config_from_dict(raw)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    epoch_a: list[float] = []
    epoch_b: list[float] = []
    save_s: list[float] = []
    size = 0
    with tempfile.TemporaryDirectory() as d:
        store = artifact_store(d)
        train(cfg.replace("train", epochs=1))  # warm-up: data load, first-call costs
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            train(cfg)
            epoch_a.append((time.perf_counter() - t0) / args.epochs)
            ckpt = TrialCheckpoint(study.ask(), store, every_s=0)
            t0 = time.perf_counter()
            train(cfg, checkpoint=ckpt)
            epoch_b.append((time.perf_counter() - t0) / args.epochs)
            save_s.append(ckpt.save_seconds / args.epochs)
            size = ckpt.trial.system_attrs[CHECKPOINT]["bytes"]
            ckpt.finish()
    a, b, s = statistics.median(epoch_a), statistics.median(epoch_b), statistics.median(save_s)
    out = {"epoch_s_without": round(a, 3), "epoch_s_every_epoch": round(b, 3), "ratio_every_epoch": round(b / a, 4),
           "save_s": round(s, 4), "save_fraction_of_epoch": round(s / a, 4), "checkpoint_mb": round(size / 2**20, 2),
           f"cost_at_{args.interval:g}s_interval": round(s / args.interval, 6), "repeats": args.repeats,
           "epochs": args.epochs, "config": "spaces/seeds/quickstart.yaml"}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
