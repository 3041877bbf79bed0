"""CIFAR-10/100 as uint8 tensors on the training device, with a stratified, seeded validation split.

Where the images come from (:func:`resolve_source`), first match wins:

1. ``data.path``: an .npz shaped like cifar10-mini.npz;
2. ``$HPS_DATA``: an .npz file, or a folder. In a folder, ``<dataset>.npz`` (``cifar10.npz``,
   ``cifar100.npz``: keep both side by side) is used when present; otherwise torchvision's CIFAR
   is read from (and downloaded into) that folder;
3. torchvision's CIFAR under ``data.root``, downloaded only when missing and ``data.download``.

An .npz must hold the classes of ``data.dataset`` (10 or 100; CIFAR-10's names when it names them):
a CIFAR-10 file under a CIFAR-100 config is refused, never trained on. :func:`pin_data` writes the
resolved path and the file's sha256 into the config, so every result says what data it ran on;
a config that carries a sha256 refuses a file with another one. The test split is loaded only
when asked for (``hps retrain --test``).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hps.trainers.config import DataConfig, TrainConfig
from hps.trainers.errors import DataError, DataMismatch

MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CLASSES = {"cifar10": 10, "cifar100": 100}
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


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


@dataclass(frozen=True)
class Source:
    """Where a config's images come from: an .npz file (with its sha256) or torchvision's CIFAR."""

    dataset: str
    kind: str  # "npz" or "torchvision"
    path: str  # the .npz file, or torchvision's folder
    origin: str  # what chose it: "data.path", "HPS_DATA" or "data.root"
    sha256: str | None = None

    def identity(self, cfg: DataConfig) -> dict[str, Any]:
        """What a result records about its data: enough to tell whether other data is the same."""
        split = {"split_seed": cfg.split_seed, "val_fraction": cfg.val_fraction, "subset": cfg.subset}
        if self.kind == "npz":
            return {"dataset": self.dataset, "source": "npz", "path": self.path, "sha256": self.sha256, **split}
        return {"dataset": self.dataset, "source": "torchvision", "root": self.path, "version": _tv_version(self.dataset),
                **split}


def _tv_version(dataset: str) -> str:
    import torchvision

    cls = torchvision.datasets.CIFAR100 if dataset == "cifar100" else torchvision.datasets.CIFAR10
    return f"{cls.filename} md5 {cls.tgz_md5}"


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str) -> str:
    """The file's sha256, computed once per process for an unchanged file."""
    st = os.stat(path)
    return _sha256(path, st.st_size, st.st_mtime_ns)


def _candidate(dataset: str) -> tuple[str, str] | None:
    """(kind, path) that ``$HPS_DATA`` gives for ``dataset``, or None when it is unset."""
    env = os.environ.get("HPS_DATA") or None
    if env is None:
        return None
    p = Path(env).expanduser()
    if p.is_dir():
        npz = p / f"{dataset}.npz"
        return ("npz", str(npz)) if npz.is_file() else ("torchvision", str(p))
    if not p.exists():
        raise DataError(f"HPS_DATA {p}: no such file or folder; point it at an .npz or a folder (or unset it)")
    return "npz", str(p)


def resolve_source(cfg: DataConfig) -> Source:
    """The data a config trains on; checks that an .npz holds ``data.dataset``'s classes and, when
    the config records a sha256, that the file is that file."""
    path = str(Path(cfg.path).expanduser()) if cfg.path else None
    env = None if path and Path(path).is_file() else _candidate(cfg.dataset)
    if path:
        if Path(path).is_file():
            src = Source(cfg.dataset, "npz", path, "data.path")
        elif cfg.sha256 and env and env[0] == "npz" and file_sha256(env[1]) == cfg.sha256:
            src = Source(cfg.dataset, "npz", env[1], "HPS_DATA")  # the same file, kept elsewhere here
        elif cfg.sha256:
            here = (f"HPS_DATA {env[1]} has sha256 {file_sha256(env[1])[:12]}" if env and env[0] == "npz"
                    else "HPS_DATA holds no copy")
            raise DataMismatch(f"data.path {path}: file not found, and {here}, not the recorded {cfg.sha256[:12]}; "
                               "copy that file here and set HPS_DATA or data.path to it")
        else:
            raise DataError(f"data.path {path}: file not found")
    elif env:
        src = Source(cfg.dataset, env[0], env[1], "HPS_DATA")
    else:
        src = Source(cfg.dataset, "torchvision", str(Path(cfg.root).expanduser()), "data.root")
    if src.kind == "torchvision":
        if cfg.sha256:
            raise DataMismatch(f"data.sha256: the config was made on an .npz ({cfg.sha256[:12]}), but {src.origin} "
                               f"gives torchvision's {cfg.dataset} under {src.path}; set HPS_DATA or data.path to that file")
        return src
    _check_classes(src)
    sha = file_sha256(src.path)
    if cfg.sha256 and sha != cfg.sha256:
        raise DataMismatch(f"{src.origin} {src.path}: sha256 {sha[:12]} differs from the config's data.sha256 "
                           f"{cfg.sha256[:12]}; this is other data than the config was made on")
    return Source(src.dataset, "npz", src.path, src.origin, sha)


def _check_classes(src: Source) -> None:
    _, y, _, _, names = _npz(src.path)
    want = CLASSES[src.dataset]
    found = len(names) if names is not None else len(np.unique(y))
    fix = (f"point {src.origin} at a {src.dataset} .npz" if src.origin == "data.path" else
           f"point HPS_DATA at a {src.dataset} .npz, or at a folder holding {src.dataset}.npz")
    if found != want or int(y.max()) >= want:
        raise DataError(f"{src.origin} {src.path}: holds {found} classes, but data.dataset is {src.dataset!r} "
                        f"({want} classes); {fix}")
    if src.dataset == "cifar10" and names is not None and tuple(n.lower() for n in names) != CIFAR10_NAMES:
        raise DataError(f"{src.origin} {src.path}: classes {', '.join(names)} are not CIFAR-10's "
                        f"({', '.join(CIFAR10_NAMES)}, in that order); {fix}")


def pin_data(cfg: TrainConfig) -> TrainConfig:
    """The config with ``data.path`` and ``data.sha256`` set to the data it resolves to (an .npz),
    or cleared (torchvision's CIFAR): what a trial or retrain records as its config."""
    src = resolve_source(cfg.data)
    if src.kind == "npz":
        return cfg.replace("data", path=src.path, sha256=src.sha256)
    return cfg.replace("data", path=None, sha256=None, root=src.path)


def data_identity(cfg: TrainConfig) -> dict[str, Any]:
    return resolve_source(cfg.data).identity(cfg.data)


def num_classes(cfg: DataConfig) -> int:
    """Classes of the config's dataset (the data itself is checked against it when loaded)."""
    return CLASSES[cfg.dataset]


@functools.lru_cache(maxsize=4)
def _npz(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
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
    return xs[0], xs[1].astype(np.int64), xs[2], xs[3].astype(np.int64), classes


@functools.lru_cache(maxsize=4)
def _torchvision(dataset: str, root: str, download: bool, train: bool) -> tuple[np.ndarray, np.ndarray]:
    import torchvision

    cls = torchvision.datasets.CIFAR100 if dataset == "cifar100" else torchvision.datasets.CIFAR10
    try:
        if download:  # workers sharing a folder (compose's /data volume) download it once, one at a time
            os.makedirs(root, exist_ok=True)
            with open(os.path.join(root, f".{dataset}.lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                ds = cls(root, train=train, download=True)
        else:
            ds = cls(root, train=train, download=False)
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
    src = resolve_source(cfg)
    n_cls = CLASSES[cfg.dataset]
    if src.kind == "npz":
        x, y, xt, yt, _ = _npz(src.path)
    else:
        x, y = _torchvision(cfg.dataset, src.path, cfg.download, True)
        xt, yt = _torchvision(cfg.dataset, src.path, cfg.download, False) if test else (x[:0], y[:0])
    if cfg.subset is not None and cfg.subset < len(y):
        _, keep = stratified_pick(y, cfg.subset / len(y), cfg.split_seed)
        x, y = x[keep], y[keep]
    train_idx, val_idx = stratified_pick(y, cfg.val_fraction, cfg.split_seed + 1)
    if cfg.val_fraction > 0 and len(val_idx) == 0:
        raise DataError(f"data.val_fraction {cfg.val_fraction:g} of {len(y)} training images leaves no validation "
                        f"image ({n_cls} classes, stratified); raise data.subset or data.val_fraction")
    mean, std = MEAN_STD[cfg.dataset]
    return Data(
        train=_to_split(x[train_idx], y[train_idx], device),
        val=_to_split(x[val_idx], y[val_idx], device) if len(val_idx) else None,
        test=_to_split(xt, yt, device) if test else None,
        num_classes=n_cls, mean=mean, std=std, source=src.path,
    )
