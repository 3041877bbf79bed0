"""What only a GPU can show: hps's CUDA paths checked on a real one, and the figures a GPU session records.

    python bench/gpu.py tile SRC.npz DST.npz [--times 10]   # 50,000 training images from the mini set
    python bench/gpu.py checks [--only a,b]                 # the CUDA paths: one JSON line each, ok true/false
    python bench/gpu.py airbench [--runs 3]                 # airbench's train94 on this GPU (the airbench package)
    python bench/gpu.py study [--procs 1,2,4]               # trials/hour with 1, 2, 4 `hps run` processes on one GPU
    python bench/gpu.py profile [--model airnet]            # one step taken apart; train()'s epoch vs the floor's
    python bench/gpu.py ray [--per-gpu 1,4]                 # trials/hour with N Ray trials sharing one GPU, GPU busy %
    python bench/gpu.py graphs [--runs 3]                   # airbench's recipe: eager vs compile (reduce-overhead)

``bench/gpu.sh`` runs them all, with the trainer bench, as one script on a GPU machine. Every
part prints JSON lines (``{"check": ...}``, ``{"airbench": ...}``, ``{"study": ...}``) that
BENCHMARKS.md quotes. The data is ``$HPS_DATA``; timings do not depend on which images they are,
so the mini set tiled to CIFAR-10's 50,000 stands in for it where CIFAR cannot be downloaded
(accuracies are then not CIFAR-10's).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hps.trainers import config_from_dict, create_model, load_data, measure, state_dict_at, train
from hps.trainers.augment import Augmenter
from hps.trainers.device import autocast_dtype

CUDA = torch.device("cuda")
WIDTHS = (0.5, 0.75, 0.5)  # the compile check's trials, one process


def emit(kind: str, name: str, **fields: Any) -> None:
    print(json.dumps({kind: name, **fields}), flush=True)


def tile(src: str, dst: str, times: int) -> None:
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    for split in ("train", "test"):
        arrays[f"x_{split}"] = np.concatenate([arrays[f"x_{split}"]] * times)
        arrays[f"y_{split}"] = np.concatenate([arrays[f"y_{split}"]] * times)
    np.savez(dst, **arrays)
    print(f"{dst}: {len(arrays['x_train'])} train, {len(arrays['x_test'])} test images ({src} x{times})")


# ---------------------------------------------------------------------------------------------- checks

def check_bf16() -> dict[str, Any]:
    """precision auto picks bf16 on a GPU with native bf16 (an H100/H200), not on emulation."""
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    picked = autocast_dtype("auto", CUDA)
    assert picked == (torch.bfloat16 if native else torch.float16 if picked else None), (native, picked)
    return {"native_bf16": native, "auto_picks": str(picked)}


AUGMENTS: list[dict[str, Any]] = [
    {"policy": "basic", "strength": 1.0}, {"policy": "randaugment", "strength": 0.5},
    {"policy": "trivialaugment", "strength": 1.0}, {"policy": "autoaugment", "strength": 1.0},
    {"policy": "augmix", "strength": 0.5},
    {"policy": "basic", "strength": 1.0, "rotate": 20.0, "perspective": 0.3, "hue": 0.1, "grayscale": 0.2,
     "pick_one": ["resized_crop", "affine", "flip"]},
]


def check_no_host_syncs() -> dict[str, Any]:
    """Every augmentation policy builds a batch on the GPU with no host sync (torch's sync debug
    mode raises on any), and how long one batch of 512 takes."""
    d = load_data(config_from_dict({"data": {"subset": 5000}}).data, CUDA)
    idx = torch.randperm(len(d.train.x), device=CUDA)[:512]
    ms = {}
    for a in AUGMENTS:
        aug = Augmenter(config_from_dict({"augment": a}).augment, d.train.x, d.mean, d.std,
                        torch.Generator(CUDA).manual_seed(0))
        aug.batch(idx)  # first use: kernels load, caches fill
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            t0 = time.perf_counter()
            for _ in range(20):
                aug.batch(idx)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        ms[a["policy"] + ("+ops" if len(a) > 2 else "")] = round((time.perf_counter() - t0) / 20 * 1e3, 3)
    return {"ms_per_batch_512": ms}


def check_padding_peak() -> dict[str, Any]:
    """Padding the training set (crop by indexing) keeps uint8: the peak above the data is the
    padded copy's bytes, not a float copy of it (4x)."""
    d = load_data(config_from_dict({"data": {"val_fraction": 0.1}}).data, CUDA)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    aug = Augmenter(config_from_dict({"augment": {"policy": "basic", "strength": 1.0}}).augment, d.train.x, d.mean, d.std,
                    torch.Generator(CUDA).manual_seed(0))
    peak = torch.cuda.max_memory_allocated() - base
    padded = aug.images.numel() * aug.images.element_size()
    assert aug.images.dtype == torch.uint8 and peak < 1.25 * padded, (aug.images.dtype, peak, padded)
    return {"images": len(d.train.x), "padded_mb": round(padded / 2**20, 1), "peak_above_data_mb": round(peak / 2**20, 1),
            "a_float_copy_would_be_mb": round(4 * padded / 2**20, 1)}


def check_weight_bytes() -> dict[str, Any]:
    """Weights kept from a GPU have exactly the bytes the meter counted (torch.save tags each CUDA
    tensor with a location string; hps saves host copies)."""
    out = {}
    for name, width in (("mobilenet_v3", 0.5), ("airnet", 1.0), ("resnet18", 0.5)):
        model = create_model(name, width=width).to(CUDA)
        m = measure(config_from_dict({"model": {"name": name, "width": width}}))
        for dtype in ("fp32", "fp16", "int8"):
            buf = io.BytesIO()
            torch.save(state_dict_at(model, dtype), buf)
            assert len(buf.getvalue()) == m.model_bytes[dtype], (name, dtype, len(buf.getvalue()), m.model_bytes[dtype])
        raw = io.BytesIO()
        torch.save(model.state_dict(), raw)
        out[name] = {"model_bytes_fp32": m.model_bytes["fp32"], "raw_cuda_state_dict_bytes": len(raw.getvalue())}
    return out


MADE: list[weakref.ref[torch.nn.Module]] = []


def _study_space(name: str, **over: Any) -> dict[str, Any]:
    base: dict[str, dict[str, Any]] = {"model": {"name": "airnet", "width": 0.5}, "data": {"val_fraction": 0.1, "subset": 5000},
            "optimizer": {"name": "sgd", "lr": 0.05}, "train": {"epochs": 2, "batch_size": 256, "device": CUDA.type}}
    for key, value in over.items():
        section, _, field = key.partition("__")
        base.setdefault(section, {})[field] = value
    return {"study": {"name": name, "trials": 3, "seed": 0, "sampler": {"name": "random"}, "pruner": {"name": "none"}},
            "base": base, "space": {"optimizer.lr": {"low": 0.01, "high": 0.1, "log": True}}, "budget": {},
            "objectives": ["val_acc"], "warm_start": []}


def check_pruned_trials_free_memory() -> dict[str, Any]:
    """Trials stopped by the budget (their exception raised inside train()) leave nothing on the
    GPU: allocated memory after 3 and after 6 such trials is the same, with the collector off."""
    import hps

    storage = f"sqlite:///{tempfile.mkdtemp()}/m.db"
    space = {**_study_space("memory"), "budget": {"max_trial_seconds": 0.001}}
    gc.collect()
    gc.disable()
    try:
        hps.run(space, storage, trials=3, progress="none")
        after3 = torch.cuda.memory_allocated()
        result = hps.run(space, storage, trials=6, progress="none")
        after6 = torch.cuda.memory_allocated()
    finally:
        gc.enable()
    states = [t.state.name for t in result.study.trials]
    assert states == ["PRUNED"] * 6, states
    assert after6 <= after3 + 2**20, (after3, after6)
    return {"allocated_after_3_mb": round(after3 / 2**20, 1), "allocated_after_6_mb": round(after6 / 2**20, 1)}


def check_own_memory_figures() -> dict[str, Any]:
    """Each trial's GPU memory peak is its own: the same config measured after a bigger trial in the
    same process gives the figure it gives first."""
    import hps

    storage = f"sqlite:///{tempfile.mkdtemp()}/p.db"
    peaks = []
    for i, (width, batch) in enumerate(((0.5, 256), (2.0, 1024), (0.5, 256))):
        space = _study_space(f"peak-{i}", model__width=width, train__batch_size=batch)
        space["budget"] = {"max_gpu_memory_mb": 100_000}
        space["study"]["trials"] = 1
        hps.run(space, storage, trials=1, progress="none")
        peaks.append(round(torch.cuda.max_memory_allocated() / 2**20, 1))
    assert abs(peaks[2] - peaks[0]) <= 0.05 * peaks[0] + 8, peaks
    return {"peak_mb_small_big_small": peaks}


def check_compile() -> dict[str, Any]:
    """``train.compile: true`` trains compiled on CUDA (inductor and Triton build their kernels),
    and a long-lived process compiles each trial anew: no recompile-limit fallback after a few."""
    import logging

    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logging.getLogger("torch._dynamo").addHandler(Catch())
    times = []
    for width in WIDTHS:  # each compiles anew (a width seen before too): none falls back to eager
        cfg = config_from_dict({"model": {"name": "airnet", "width": width}, "data": {"subset": 5000, "val_fraction": 0.1},
                                "train": {"epochs": 2, "batch_size": 256, "device": CUDA.type, "compile": True}})
        t0 = time.perf_counter()
        r = train(cfg)
        times.append(round(time.perf_counter() - t0, 1))
        assert np.isfinite(r.history[-1]["val_acc"])
    limits = [s for s in seen if "recompile" in s.lower() or "cache_size_limit" in s]
    assert not limits, limits[:3]
    return {"seconds_per_trial": times, "cudnn_benchmark": torch.backends.cudnn.benchmark}


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "bf16_auto": check_bf16, "no_host_syncs": check_no_host_syncs, "padding_peak": check_padding_peak,
    "weight_bytes": check_weight_bytes, "pruned_trials_free_memory": check_pruned_trials_free_memory,
    "own_memory_figures": check_own_memory_figures, "compile": check_compile,
}


def checks(names: list[str]) -> int:
    failed = 0
    for name in names:
        t0 = time.perf_counter()
        try:
            fields = CHECKS[name]()
            emit("check", name, ok=True, seconds=round(time.perf_counter() - t0, 1), **fields)
        except Exception as e:
            failed += 1
            emit("check", name, ok=False, seconds=round(time.perf_counter() - t0, 1), error=f"{type(e).__name__}: {e}"[:800],
                 where=traceback.format_exc()[-1500:])
    return failed


# -------------------------------------------------------------------------------------------- airbench

def airbench(runs: int) -> None:
    """airbench's train94 (9.9 epochs of 50,000 images at batch 1,024, fp16 net) timed as airbench
    times itself: training and its final test-time-augmented eval, CUDA events. Its data files
    are made from $HPS_DATA (airbench reads cifar10/train.pt and test.pt from the working dir)."""
    import airbench
    import airbench.utils as utils

    with np.load(os.environ["HPS_DATA"]) as z:
        x_train, y_train, x_test, y_test = (z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        classes = [str(c) for c in z["classes"]] if "classes" in z.files else [str(i) for i in range(10)]
    work = Path(tempfile.mkdtemp())
    (work / "cifar10").mkdir()
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        torch.save({"images": torch.from_numpy(x), "labels": torch.from_numpy(y), "classes": classes},
                   work / "cifar10" / f"{split}.pt")
    os.chdir(work)
    finals: list[dict[str, Any]] = []
    original = utils.print_training_details

    def capture(variables: dict[str, Any], is_final_entry: bool) -> None:
        if is_final_entry:
            finals.append({k: variables[k] for k in ("total_time_seconds", "tta_val_acc")})

    utils.print_training_details = capture
    try:
        airbench.warmup94(verbose=False)
        for _ in range(runs):
            airbench.train94(verbose=True)
    finally:
        utils.print_training_details = original
    seconds = [f["total_time_seconds"] for f in finals]
    med = statistics.median(seconds)
    emit("airbench", "train94", train_images=len(x_train), epochs=9.9, seconds_each=[round(s, 3) for s in seconds],
         seconds_median=round(med, 3), images_per_s=round(9.9 * len(x_train) / med),
         tta_val_acc=[round(f["tta_val_acc"], 4) for f in finals])


def hps_airnet(runs: int) -> None:
    """hps's trainer on the same network shape and recipe length (airnet, batch 1,024, bf16,
    10 epochs), timed per epoch as the trials are."""
    cfg = config_from_dict({"model": {"name": "airnet", "width": 1.0}, "data": {"val_fraction": 0.02},
                            "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.85, "nesterov": True},
                            "augment": {"policy": "basic", "strength": 0.25},
                            "train": {"epochs": 10, "batch_size": 1024, "device": CUDA.type, "precision": "bf16",
                                      "label_smoothing": 0.2}})
    train(cfg)  # warm-up, as airbench's
    walls, rates, accs = [], [], []
    for _ in range(runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = train(cfg)
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
        rates.append(statistics.median(h["images_per_s"] for h in r.history))
        accs.append(round(r.history[-1]["val_acc"], 4))
    emit("airbench", "hps_airnet", epochs=10, wall_seconds_each=[round(w, 2) for w in walls],
         images_per_s_median=round(statistics.median(rates)), val_acc=accs)


# ---------------------------------------------------------------------------------------------- profile

def profile(model_name: str, width: float, batch: int, rounds: int, out: Path) -> None:
    """Where hps's step spends what the floor's does not: one step's parts timed apart (CUDA,
    bf16 autocast, channels_last), interleaved round by round, medians; and the CUDA kernels of
    10 hps steps by total time (``profile-<model>.txt``)."""
    import contextlib

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    from trainer import floor_step  # bench/trainer.py, beside this script

    from hps.trainers.optim import build_optimizer

    cfg = config_from_dict({"model": {"name": model_name, "width": width}, "data": {"val_fraction": 0.1},
                            "train": {"batch_size": batch, "device": CUDA.type, "precision": "bf16"}})
    d = load_data(cfg.data, CUDA)
    torch.backends.cudnn.benchmark = True
    model = create_model(model_name, width=width).to(CUDA).to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg.optimizer)
    cast = torch.autocast(CUDA.type, dtype=torch.bfloat16) if CUDA.type == "cuda" else contextlib.nullcontext()
    aug = Augmenter(cfg.augment, d.train.x, d.mean, d.std, torch.Generator(CUDA).manual_seed(0))
    n = len(d.train.x) // batch
    order = torch.randperm(len(d.train.x), device=CUDA)
    idxs = [order[i * batch:(i + 1) * batch] for i in range(n)]
    mean = torch.tensor(d.mean, device=CUDA).view(1, -1, 1, 1) * 255
    std = torch.tensor(d.std, device=CUDA).view(1, -1, 1, 1) * 255
    pre = [((d.train.x[i].float() - mean) / std) for i in idxs]
    ys = [d.train.y[i] for i in idxs]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        floor_step(model, opt, x, y, cast, True)

    parts: dict[str, Callable[[int], Any]] = {
        "floor_step": lambda i: step(pre[i], ys[i]),
        "augment_only": lambda i: aug.batch(idxs[i]),
        "hps_step": lambda i: step(aug.batch(idxs[i]), d.train.y[idxs[i]]),
        "model_step_on_a_uint8_batch": lambda i: step((d.train.x[idxs[i]].float() - mean) / std, ys[i]),
    }

    def timed(fn: Callable[[int], Any]) -> tuple[float, float]:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        enqueued = time.perf_counter() - t0
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n * 1e3, enqueued / n * 1e3

    for fn in parts.values():
        timed(fn)  # warm: cuDNN's autotuning, the allocator
    seen: dict[str, list[tuple[float, float]]] = {k: [] for k in parts}
    for r in range(rounds):
        names = list(parts)
        for name in names[r % len(names):] + names[:r % len(names)]:
            seen[name].append(timed(parts[name]))
    emit("profile", model_name, width=width, batch=batch, steps=n, rounds=rounds,
         ms_per_step_median={k: round(statistics.median(t for t, _ in v), 3) for k, v in seen.items()},
         cpu_enqueue_ms_per_step_median={k: round(statistics.median(c for _, c in v), 3) for k, v in seen.items()})
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for i in range(10):
            parts["hps_step"](i)
        torch.cuda.synchronize()
    key = "cuda_time_total" if CUDA.type == "cuda" else "cpu_time_total"
    (out / f"profile-{model_name}.txt").write_text(prof.key_averages().table(sort_by=key, row_limit=40))

    # train()'s own epoch against the floor's, both under the profiler: host-side calls per step
    def floor_epoch() -> None:
        for i in range(n):
            parts["floor_step"](i)
        torch.cuda.synchronize()

    one = cfg.replace("train", epochs=1)
    train(one, data=d)  # warm
    tables = {}
    epochs: dict[str, Callable[[], Any]] = {"floor": floor_epoch, "train": lambda: train(one, data=d)}
    for name, epoch in epochs.items():
        with torch_profile(activities=activities) as prof:
            epoch()
        avg = prof.key_averages()
        tables[name] = avg.table(sort_by="self_cpu_time_total", row_limit=30)
        calls = {e.key: e.count for e in avg}
        emit("profile", f"{model_name}_{name}_epoch", steps=n,
             launches_per_step=round(sum(c for k, c in calls.items() if "LaunchKernel" in k) / n, 1),
             aten_calls_per_step=round(sum(c for k, c in calls.items() if k.startswith("aten::")) / n, 1),
             self_cpu_ms_per_step=round(sum(e.self_cpu_time_total for e in avg) / 1e3 / n, 3))
    (out / f"profile-{model_name}-epochs.txt").write_text("\n\n".join(f"== {k}\n{v}" for k, v in tables.items()))


# ------------------------------------------------------------------------------------------------ study

def study(procs: list[int], trials: int, out: Path, model: str = "resnet18", width: float = 0.5, epochs: int = 2,
          subset: int | None = None) -> None:
    """A real study of ``trials`` trials (by default resnet18 at width 0.5, bf16, 2 epochs of 45,000
    images; pruning off so every trial does the same work) with N ``hps run`` processes sharing it on one
    GPU through a journal file. trials/hour counts from the first trial's start to the last one's
    end, so the processes' start-up is not in it."""
    import optuna
    import yaml

    for n in procs:
        work = Path(tempfile.mkdtemp())
        space = _study_space(f"gpu-{n}")
        space["base"].update(model={"name": model, "width": width}, data={"val_fraction": 0.1, "subset": subset},
                             train={"epochs": epochs, "batch_size": 256, "device": CUDA.type, "precision": "bf16"})
        space["space"] = {"optimizer.lr": {"low": 0.01, "high": 0.2, "log": True},
                          "optimizer.weight_decay": {"low": 1e-5, "high": 1e-3, "log": True}}
        space["study"]["trials"] = trials
        (work / "s.yaml").write_text(yaml.safe_dump(space))
        journal = str(work / "s.log")
        env = {**os.environ, "HPS_ARTIFACTS": str(work / "art")}
        t0 = time.perf_counter()
        ps = [subprocess.Popen([sys.executable, "-m", "hps", "run", str(work / "s.yaml"), "--storage", journal, "--no-live"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(n)]
        logs = [p.communicate()[0] for p in ps]
        wall = time.perf_counter() - t0
        with open(out / "study-logs.txt", "a") as f:
            f.write("".join(f"==== {n} per GPU, process {i}\n{log}\n" for i, log in enumerate(logs)))
        s = optuna.load_study(study_name=f"gpu-{n}", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(journal)))
        done = [t for t in s.trials if t.state == optuna.trial.TrialState.COMPLETE]
        spans = [(t.datetime_start, t.datetime_complete) for t in done if t.datetime_start and t.datetime_complete]
        span = (max(b for _, b in spans) - min(a for a, _ in spans)).total_seconds()
        per = [(b - a).total_seconds() for a, b in spans]
        emit("study", f"{n}_per_gpu", codes=[p.returncode for p in ps], complete=len(done),
             states=sorted({t.state.name for t in s.trials}), span_seconds=round(span, 1), wall_seconds=round(wall, 1),
             trials_per_hour=round(len(done) / span * 3600), trial_seconds_median=round(statistics.median(per), 1),
             best=round(s.best_value, 4), distinct_params=len({tuple(sorted(t.params.items())) for t in done}))


# -------------------------------------------------------------------------------------------------- ray

class GpuSampler:
    """The GPU's utilisation sampled by nvidia-smi every ``every`` seconds in a thread."""

    def __init__(self, every: float = 0.5) -> None:
        import threading

        self.every, self.stop = every, threading.Event()
        self.samples: list[tuple[float, float]] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout.split()
            if out:
                self.samples.append((time.perf_counter(), float(out[0])))

    def __enter__(self) -> GpuSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def busy(self, start: float, end: float) -> float | None:
        """Mean utilisation (%) between two perf_counter instants."""
        inside = [u for t, u in self.samples if start <= t <= end]
        return round(statistics.mean(inside), 1) if inside else None


def ray_study(per_gpu: list[int], trials: int, epochs: int, model: str, width: float) -> None:
    """A real study on Ray workers (``--ray local --gpus-per-trial 1/N``): N trials share the GPU.
    Each trial records what Ray gave it (``hps:worker``: CUDA_VISIBLE_DEVICES, the GPU ids, the
    memory fraction); trials/hour from the first trial's start to the last one's end, and the GPU's
    utilisation over that span."""
    import ray

    import hps

    for n in per_gpu:
        space = _study_space(f"ray-{n}")
        space["base"].update(model={"name": model, "width": width}, data={"val_fraction": 0.1},
                             train={"epochs": epochs, "batch_size": 256, "device": CUDA.type, "precision": "bf16"})
        space["space"] = {"optimizer.lr": {"low": 0.01, "high": 0.2, "log": True}}
        space["study"]["trials"] = trials
        with GpuSampler() as gpu:
            t0 = time.perf_counter()
            result = hps.run(space, f"sqlite:///{tempfile.mkdtemp()}/r.db", ray="local", workers=n,
                             gpus_per_trial=1 / n, progress="none")
            wall = time.perf_counter() - t0
        ray.shutdown()
        done = [t for t in result.study.trials if t.state.name == "COMPLETE" and t.datetime_complete]
        first = min(t.datetime_start for t in done)
        last = max(t.datetime_complete for t in done)
        span = (last - first).total_seconds()
        workers = [t.system_attrs.get("hps:worker", {}) for t in done]
        emit("ray", f"{n}_per_gpu", complete=len(done), wall_seconds=round(wall, 1), span_seconds=round(span, 1),
             trials_per_hour=round(len(done) / span * 3600), gpu_busy_pct=gpu.busy(t0 + wall - span, t0 + wall),
             cuda_visible=sorted({str(w.get("cuda_visible")) for w in workers}),
             memory_fraction=sorted({str(w.get("memory_fraction")) for w in workers}))


def graphs(runs: int) -> None:
    """airbench's recipe length with hps's trainer, eager against ``compile_mode: reduce-overhead``
    (CUDA graphs: one launch a step instead of ~170): each run's wall (the compile included) and its
    median epoch's images/s, interleaved."""
    base = {"model": {"name": "airnet", "width": 1.0}, "data": {"val_fraction": 0.02},
            "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.85, "nesterov": True},
            "augment": {"policy": "basic", "strength": 0.25},
            "train": {"epochs": 10, "batch_size": 1024, "device": CUDA.type, "precision": "bf16", "label_smoothing": 0.2}}
    modes = {"eager": {}, "graphs": {"compile": True, "compile_mode": "reduce-overhead"}}
    rows: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for _ in range(runs):
        for mode, extra in modes.items():
            cfg = config_from_dict({**base, "train": {**base["train"], **extra}}, mode)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            r = train(cfg)
            torch.cuda.synchronize()
            rows[mode].append((time.perf_counter() - t0, statistics.median(h["images_per_s"] for h in r.history)))
    for mode, vals in rows.items():
        emit("graphs", mode, wall_seconds=[round(w, 2) for w, _ in vals],
             images_per_s_median=round(statistics.median(i for _, i in vals)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tile")
    t.add_argument("src")
    t.add_argument("dst")
    t.add_argument("--times", type=int, default=10)
    c = sub.add_parser("checks")
    c.add_argument("--only", default=",".join(CHECKS))
    a = sub.add_parser("airbench")
    a.add_argument("--runs", type=int, default=3)
    f = sub.add_parser("profile")
    f.add_argument("--model", default="airnet")
    f.add_argument("--width", type=float, default=1.0)
    f.add_argument("--batch", type=int, default=1024)
    f.add_argument("--rounds", type=int, default=5)
    f.add_argument("--out", default=".")
    s = sub.add_parser("study")
    s.add_argument("--procs", default="1,2,4")
    s.add_argument("--trials", type=int, default=8)
    s.add_argument("--out", default=".")
    s.add_argument("--model", default="resnet18")
    s.add_argument("--width", type=float, default=0.5)
    s.add_argument("--epochs", type=int, default=2)
    s.add_argument("--subset", type=int, default=None)
    r = sub.add_parser("ray")
    r.add_argument("--per-gpu", default="1,4")
    r.add_argument("--trials", type=int, default=8)
    r.add_argument("--epochs", type=int, default=1)
    r.add_argument("--model", default="resnet18")
    r.add_argument("--width", type=float, default=0.5)
    g = sub.add_parser("graphs")
    g.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    if args.cmd == "tile":
        tile(args.src, args.dst, args.times)
    elif args.cmd == "checks":
        sys.exit(1 if checks(args.only.split(",")) else 0)
    elif args.cmd == "airbench":
        hps_airnet(args.runs)
        airbench(args.runs)
    elif args.cmd == "ray":
        ray_study([int(x) for x in args.per_gpu.split(",")], args.trials, args.epochs, args.model, args.width)
    elif args.cmd == "graphs":
        graphs(args.runs)
    elif args.cmd == "profile":
        profile(args.model, args.width, args.batch, args.rounds, Path(args.out))
    else:
        study([int(x) for x in args.procs.split(",")], args.trials, Path(args.out), args.model, args.width, args.epochs,
              args.subset)


if __name__ == "__main__":
    main()
