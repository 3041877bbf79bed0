"""The whole-folder path, timed: decode (first run), a cached run, and each trial's fixed cost.

    python bench/data.py --folder /work/cifar10-jpeg [--trials 3] [--src OTHER_CHECKOUT/src]

Each phase runs in a fresh process (what a new ``hps run`` or Ray worker meets), with its own cache
folder (``XDG_CACHE_HOME``) so the first run really decodes:

- ``first``: list + identify + decode + load the folder (``load_data``); peak memory is the
  process's ``ru_maxrss`` and its decoder processes' (``RUSAGE_CHILDREN``).
- ``cached``: the same in a new process, the decoded cache in place.
- ``trials``: ``--trials`` trials in one process as the objective runs them (pin the data, record
  its identity, the meter, ``train`` for 1 epoch on ``--subset`` images of the folder); a trial's
  fixed cost is its wall minus its training steps: start to first step (``train``'s seconds minus
  its epochs), the meter, and validation per epoch (epoch seconds minus the steps' seconds).

``--src`` runs the phases on another checkout's code (the "before" figures). The last lines
extrapolate to a folder of ``--scale`` images (linear in the image count).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _cfg(folder: str, subset: int | None, epochs: int = 1) -> Any:
    from hps.trainers import config_from_dict

    return config_from_dict({"model": {"name": "airnet", "width": 0.125},
                             "data": {"path": folder, "subset": subset, "val_fraction": 0.1 if subset is None else 0.2},
                             "train": {"epochs": epochs, "batch_size": 250, "device": "cpu"}})


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def phase_decode(folder: str) -> dict[str, Any]:
    """Decode the folder into the cache, alone: its peak memory over the process's baseline."""
    try:
        from hps.trainers.folder import decoded, folder_hash

        base = _rss_mb()
        t0 = time.perf_counter()
        folder_hash(folder)
        t1 = time.perf_counter()
        arrays = decoded(folder, None)[0]
    except ImportError:  # the code before the folder module: one process, a list of images, then a stack
        from hps.trainers.data import _decode_folder, _folder_hash  # type: ignore[attr-defined]

        base = _rss_mb()
        t0 = time.perf_counter()
        _folder_hash(folder)
        t1 = time.perf_counter()
        arrays = _decode_folder(Path(folder), None)
    t2 = time.perf_counter()
    nbytes = sum(a.nbytes for k, a in arrays.items() if k.startswith("x_"))
    return {"hash_s": t1 - t0, "decode_s": t2 - t1, "array_mb": nbytes / 2**20, "base_mb": base,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def phase_load(folder: str) -> dict[str, Any]:
    from hps.trainers import load_data, pin_data

    t0 = time.perf_counter()
    cfg = pin_data(_cfg(folder, None))  # lists and identifies the folder (and decodes it, the first time)
    t1 = time.perf_counter()
    d = load_data(cfg.data, "cpu", test=True)
    t2 = time.perf_counter()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"images": len(d.train) + len(d.val or []) + len(d.test or []), "identify_s": t1 - t0,
            "load_s": t2 - t1, "total_s": t2 - t0, "maxrss_mb": own, "children_maxrss_mb": kids}


def phase_trials(folder: str, trials: int, subset: int) -> dict[str, Any]:
    from hps.trainers import data_identity, measure, pin_data, train
    from hps.trainers.loop import pin_model

    rows = []
    for seed in range(trials):
        t0 = time.perf_counter()
        cfg = pin_model(pin_data(_cfg(folder, subset).replace("train", seed=seed)))
        data_identity(cfg)
        t1 = time.perf_counter()
        measure(cfg)
        t2 = time.perf_counter()
        result = train(cfg)
        t3 = time.perf_counter()
        epochs = sum(m["epoch_seconds"] for m in result.history)
        steps = sum(len_steps(cfg, m) for m in result.history)
        rows.append({"prep_s": t1 - t0, "meter_s": t2 - t1, "to_first_step_s": result.seconds - epochs,
                     "val_per_epoch_s": (epochs - steps) / len(result.history), "steps_s": steps,
                     "trial_s": t3 - t0, "fixed_s": (t3 - t0) - steps})
    return {"trials": rows}


def len_steps(cfg: Any, m: dict[str, float]) -> float:
    """Seconds of an epoch's training steps (images over images/s)."""
    n = round(cfg.data.subset * (1 - cfg.data.val_fraction))
    bs = min(cfg.train.batch_size, n)
    return (n // bs) * bs / m["images_per_s"]


def run_phase(args: argparse.Namespace, phase: str, cache: str) -> dict[str, Any]:
    env = dict(os.environ, XDG_CACHE_HOME=cache, PYTHONPATH=args.src)
    cmd = [sys.executable, __file__, "--phase", phase, "--folder", args.folder, "--trials", str(args.trials),
           "--subset", str(args.subset)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"phase {phase} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--folder", required=True)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--subset", type=int, default=2000)
    p.add_argument("--scale", type=int, default=500_000)
    p.add_argument("--src", default=str(REPO / "src"), help="the hps code to time (a checkout's src/)")
    p.add_argument("--phase", choices=["decode", "first", "cached", "trials"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        phases = {"decode": phase_decode, "first": phase_load, "cached": phase_load}
        got = phase_trials(args.folder, args.trials, args.subset) if args.phase == "trials" else phases[args.phase](args.folder)
        print(json.dumps(got))
        return
    with tempfile.TemporaryDirectory(prefix="hps-bench-data-") as cache:
        dec = run_phase(args, "decode", cache)
    with tempfile.TemporaryDirectory(prefix="hps-bench-data-") as cache:
        first = run_phase(args, "first", cache)
        cached = run_phase(args, "cached", cache)
        trials = run_phase(args, "trials", cache)["trials"]
    n = first["images"]
    print(f"code: {args.src}; folder {args.folder}: {n:,} images; {os.cpu_count()} CPUs")
    print(f"decode alone: hash {dec['hash_s']:.1f} s, decode {dec['decode_s']:.1f} s; decoded array {dec['array_mb']:.0f} MB; "
          f"peak RSS {dec['maxrss_mb']:.0f} MB (baseline {dec['base_mb']:.0f} MB), decoders {dec['children_maxrss_mb']:.0f} MB")
    print(f"first run (list, hash, decode, load): {first['total_s']:.1f} s (identify+decode {first['identify_s']:.1f} s, "
          f"load {first['load_s']:.1f} s); peak RSS {first['maxrss_mb']:.0f} MB, decoders {first['children_maxrss_mb']:.0f} MB")
    print(f"cached run (new process): {cached['total_s']:.2f} s (identify {cached['identify_s']:.2f} s, "
          f"load {cached['load_s']:.2f} s); peak RSS {cached['maxrss_mb']:.0f} MB")
    print("trial  prep_s  meter_s  to_first_step_s  val_per_epoch_s  steps_s  fixed_s")
    for i, r in enumerate(trials, 1):
        print(f"{i:5d}  {r['prep_s']:6.2f}  {r['meter_s']:7.2f}  {r['to_first_step_s']:15.2f}  "
              f"{r['val_per_epoch_s']:15.2f}  {r['steps_s']:7.2f}  {r['fixed_s']:7.2f}")
    k = args.scale / n
    print(f"at {args.scale:,} images (x{k:.1f}, linear): decode ~{dec['decode_s'] * k:.0f} s, first run "
          f"~{first['total_s'] * k:.0f} s, cached run ~{cached['total_s'] * k:.0f} s, decoded array "
          f"{dec['array_mb'] * k / 1024:.2f} GiB")


if __name__ == "__main__":
    main()
