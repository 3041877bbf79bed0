"""CIFAR-10/100 as uint8 tensors on the training device, with a stratified, seeded validation split.

Sources, first match wins: ``data.path`` (an .npz shaped like cifar10-mini.npz), ``$HPS_DATA``,
torchvision's CIFAR under ``data.root`` (downloaded only when missing and ``data.download``).
The test split is loaded only when asked for (``hps retrain --test``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from trainers.config import DataConfig

MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(RuntimeError):
    """The data could not be found or read; the message says what to set."""


@dataclass
class Split:
    x: Tensor  # uint8 (N, 3, 32, 32) on the device
    y: Tensor  # int64 (N,) on the device

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Data:
    train: Split
    val: Split | None
    test: Split | None
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # the resolved npz path or torchvision folder


def resolve_path(cfg: DataConfig) -> str | None:
    """The npz this config reads, if any: ``data.path`` or ``$HPS_DATA``."""
    path = cfg.path or os.environ.get("HPS_DATA") or None
    return str(Path(path).expanduser()) if path else None


def num_classes(cfg: DataConfig) -> int:
    """Classes without loading images (the meter needs it)."""
    path = resolve_path(cfg)
    if path:
        return len(_npz(path)[4])
    return 100 if cfg.dataset == "cifar100" else 10


@functools.lru_cache(maxsize=4)
def _npz(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    try:
        with np.load(path) as f:
            missing = [k for k in NPZ_KEYS if k not in f]
            if missing:
                raise DataError(f"{path}: missing arrays {', '.join(missing)}; expected {', '.join(NPZ_KEYS)}")
            xs = [np.ascontiguousarray(f[k]) for k in NPZ_KEYS]
            classes = [str(c) for c in f["classes"]] if "classes" in f else None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read as .npz ({e})") from None
    for k in ("x_train", "x_test"):
        arr = xs[NPZ_KEYS.index(k)]
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (32, 32, 3):
            raise DataError(f"{path}: {k} is {arr.dtype} {arr.shape}; expected uint8 (N, 32, 32, 3)")
    n = int(max(xs[1].max(), xs[3].max())) + 1
    return xs[0], xs[1].astype(np.int64), xs[2], xs[3].astype(np.int64), classes or [str(i) for i in range(n)]


@functools.lru_cache(maxsize=4)
def _torchvision(dataset: str, root: str, download: bool, train: bool) -> tuple[np.ndarray, np.ndarray]:
    import torchvision

    cls = torchvision.datasets.CIFAR100 if dataset == "cifar100" else torchvision.datasets.CIFAR10
    try:
        ds = cls(root, train=train, download=download)
    except RuntimeError as e:
        raise DataError(f"{dataset} not found under {root} and data.download is false ({e}); set "
                        "data.download: true, or data.path / HPS_DATA to an .npz") from None
    return np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64)


def stratified_pick(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, picked), picking ``fraction`` of every class, seeded."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        picked.append(rng.permutation(idx)[: round(len(idx) * fraction)])
    pick = np.sort(np.concatenate(picked))
    return np.setdiff1d(np.arange(len(y)), pick), pick


def _to_split(x: np.ndarray, y: np.ndarray, device: torch.device) -> Split:
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)
    return Split(xt, torch.from_numpy(y).to(device))


def load_data(cfg: DataConfig, device: torch.device | str = "cpu", test: bool = False) -> Data:
    """Train/val (and test, if asked) splits as uint8 tensors on ``device``."""
    device = torch.device(device)
    path = resolve_path(cfg)
    if path:
        x, y, xt, yt, classes = _npz(path)
        n_cls, source = len(classes), path
    else:
        root = str(Path(cfg.root).expanduser())
        x, y = _torchvision(cfg.dataset, root, cfg.download, True)
        xt, yt = _torchvision(cfg.dataset, root, cfg.download, False) if test else (x[:0], y[:0])
        n_cls, source = (100 if cfg.dataset == "cifar100" else 10), root
    if cfg.subset is not None and cfg.subset < len(y):
        _, keep = stratified_pick(y, cfg.subset / len(y), cfg.split_seed)
        x, y = x[keep], y[keep]
    train_idx, val_idx = stratified_pick(y, cfg.val_fraction, cfg.split_seed + 1)
    mean, std = MEAN_STD[cfg.dataset]
    return Data(
        train=_to_split(x[train_idx], y[train_idx], device),
        val=_to_split(x[val_idx], y[val_idx], device) if len(val_idx) else None,
        test=_to_split(xt, yt, device) if test else None,
        num_classes=n_cls, mean=mean, std=std, source=source,
    )
