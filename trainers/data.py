"""Images as uint8 tensors on the training device, with a stratified, seeded validation split.

Where the images come from (:func:`resolve_source`), first match wins:

1. ``data.path``: the user's images, either
   - an ``.npz`` with ``x_train`` (uint8 ``N x H x W x C``, C = 1 or 3, or ``N x H x W`` for one
     channel, square), ``y_train`` (integer labels 0..K-1, K >= 2), optional ``x_test``/``y_test``
     and ``classes`` (names); or
   - a folder in torchvision's ImageFolder layout: ``train/<class>/*`` and an optional
     ``test/<class>/*``, or ``<class>/*`` alone (a test split of ``data.test_fraction`` is then held
     out, stratified, seeded). Listed once per process, identified by a stamp, decoded once (in
     parallel) into uint8 arrays cached under ``~/.cache/hps/images`` by the files' content hash:
     :mod:`hps.trainers.folder`. Images of different sizes are resized to ``data.image_size``.
     Nothing is ever written into the folder.
   With ``data.dataset`` set too, the file must hold that CIFAR's classes.
2. ``$HPS_DATA`` (CIFAR by name, ``data.dataset``, default cifar10): an .npz file, or a folder.
   In a folder, ``<dataset>.npz`` is used when present; otherwise the folder is torchvision's CIFAR
   cache (downloaded into when empty). A folder of anything else is refused, never downloaded into.
3. torchvision's CIFAR under ``data.root``, downloaded only when missing and ``data.download``.

Mean and std are the training split's, per channel. :func:`pin_data` writes the resolved path and
its sha256 (an .npz's bytes, a folder's content hash) into the config, so every result says what
data it ran on; a config that carries a sha256 refuses other data. :func:`data_shape` tells the
classes, channels and side without loading the images (the meter counts at the data's shape).
The test split is loaded only when asked for (``hps retrain --test``).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hps.trainers.config import DataConfig, TrainConfig
from hps.trainers.errors import DataError, DataMismatch
from hps.trainers.folder import cache_dir, decoded, folder_hash
from hps.trainers.models._registry import sha256_of

CLASSES = {"cifar10": 10, "cifar100": 100}
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class Split:
    x: Tensor  # uint8 (N, C, S, S) on the device
    y: Tensor  # int64 (N,) on the device

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Data:
    train: Split
    val: Split | None
    test: Split | None
    num_classes: int
    mean: tuple[float, ...]  # per channel, of the training split, in [0, 1]
    std: tuple[float, ...]
    source: str  # the resolved file or folder


@dataclass(frozen=True)
class Shape:
    """What a model needs to know of the data: classes, channels and the images' side."""

    num_classes: int
    channels: int
    side: int


@dataclass(frozen=True)
class Arrays:
    x: np.ndarray  # uint8 (N, S, S, C)
    y: np.ndarray  # int64 (N,)
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    classes: tuple[str, ...] | None


@dataclass(frozen=True)
class Source:
    """Where a config's images come from: an .npz, an image folder, or torchvision's CIFAR."""

    dataset: str | None  # cifar10 / cifar100 when named, else None (the data decides)
    kind: str  # "npz", "folder" or "torchvision"
    path: str  # the file, the folder, or torchvision's folder
    origin: str  # what chose it: "data.path", "HPS_DATA" or "data.root"
    sha256: str | None = None

    def identity(self, cfg: DataConfig) -> dict[str, Any]:
        """What a result records about its data: enough to tell whether other data is the same."""
        split = {"split_seed": cfg.split_seed, "val_fraction": cfg.val_fraction, "subset": cfg.subset}
        if self.kind == "torchvision":
            return {"dataset": self.dataset, "source": "torchvision", "root": self.path,
                    "version": _tv_version(self.dataset or "cifar10"), **split}
        return {"dataset": self.dataset, "source": self.kind, "path": self.path, "sha256": self.sha256, **split}


def _tv_version(dataset: str) -> str:
    import torchvision

    cls = torchvision.datasets.CIFAR100 if dataset == "cifar100" else torchvision.datasets.CIFAR10
    return f"{cls.filename} md5 {cls.tgz_md5}"


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(path)


def file_sha256(path: str) -> str:
    """The file's sha256, computed once per process for an unchanged file."""
    st = os.stat(path)
    return _sha256(path, st.st_size, st.st_mtime_ns)


# -- where the images are --------------------------------------------------------------------------

def _is_cifar_cache(folder: Path) -> bool:
    """An empty folder, or one holding torchvision's CIFAR download (a download lands here)."""
    names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
    return not names or bool(names & {"cifar-10-batches-py", "cifar-100-python", "cifar-10-python.tar.gz",
                                      "cifar-100-python.tar.gz"})


def _candidate(dataset: str) -> tuple[str, str] | None:
    """(kind, path) that ``$HPS_DATA`` gives for CIFAR ``dataset``, or None when it is unset."""
    env = os.environ.get("HPS_DATA") or None
    if env is None:
        return None
    p = Path(env).expanduser()
    if p.is_dir():
        npz = p / f"{dataset}.npz"
        if npz.is_file():
            return "npz", str(npz)
        if not _is_cifar_cache(p):
            raise DataError(f"HPS_DATA {p}: a folder without {dataset}.npz or a CIFAR download, so it is not "
                            f"downloaded into; for your own images set data.path to it")
        return "torchvision", str(p)
    if not p.exists():
        raise DataError(f"HPS_DATA {p}: no such file or folder; point it at an .npz or a folder (or unset it)")
    return "npz", str(p)


def _kind_of(path: Path) -> str:
    if path.is_dir():
        return "folder"
    if path.suffix.lower() != ".npz" and not zipfile.is_zipfile(path):
        raise DataError(f"data.path {path}: not an .npz file or a folder of images")
    return "npz"


def resolve_source(cfg: DataConfig) -> Source:
    """The data a config trains on; checks the classes of a named CIFAR and, when the config
    records a sha256, that the data is that data."""
    path = Path(cfg.path).expanduser() if cfg.path else None
    dataset = cfg.name
    if path is not None:
        if path.exists():
            src = Source(cfg.dataset, _kind_of(path), str(path), "data.path")
        else:
            env = _candidate(dataset or "cifar10") if cfg.sha256 and os.environ.get("HPS_DATA") else None
            if env and env[0] == "npz" and file_sha256(env[1]) == cfg.sha256:
                src = Source(cfg.dataset, "npz", env[1], "HPS_DATA")  # the same file, kept elsewhere here
            elif cfg.sha256:
                here = (f"HPS_DATA {env[1]} has sha256 {file_sha256(env[1])[:12]}" if env and env[0] == "npz"
                        else "HPS_DATA holds no copy")
                raise DataMismatch(f"data.path {path}: not found, and {here}, not the recorded {cfg.sha256[:12]}; "
                                   "copy that data here and set HPS_DATA or data.path to it")
            else:
                raise DataError(f"data.path {path}: no such file or folder")
    else:
        assert dataset is not None
        env = _candidate(dataset)
        if env:
            src = Source(dataset, env[0], env[1], "HPS_DATA")
        else:
            src = Source(dataset, "torchvision", str(Path(cfg.root).expanduser()), "data.root")
    if src.kind == "torchvision":
        if cfg.sha256:
            raise DataMismatch(f"data.sha256: the config was made on other data ({cfg.sha256[:12]}), but {src.origin} "
                               f"gives torchvision's {dataset} under {src.path}; set HPS_DATA or data.path to that data")
        return src
    sha = file_sha256(src.path) if src.kind == "npz" else folder_hash(src.path)
    if src.dataset:
        _check_cifar(src, read_arrays(src, cfg))
    if cfg.sha256 and sha != cfg.sha256:
        raise DataMismatch(f"{src.origin} {src.path}: sha256 {sha[:12]} differs from the config's data.sha256 "
                           f"{cfg.sha256[:12]}; this is other data than the config was made on")
    return Source(src.dataset, src.kind, src.path, src.origin, sha)


def _check_cifar(src: Source, arrays: Arrays) -> None:
    want = CLASSES[src.dataset or "cifar10"]
    found = len(arrays.classes) if arrays.classes is not None else int(arrays.y.max()) + 1
    fix = (f"point {src.origin} at a {src.dataset} .npz, or leave data.dataset out to train on the file's own classes"
           if src.origin == "data.path" else
           f"point HPS_DATA at a {src.dataset} .npz, or at a folder holding {src.dataset}.npz; for your own images "
           "set data.path")
    if found != want or arrays.x.shape[1:] != (32, 32, 3):
        raise DataError(f"{src.origin} {src.path}: holds {found} classes of {_shape_text(arrays.x)} images, but "
                        f"data.dataset is {src.dataset!r} ({want} classes of 32x32x3); {fix}")
    if src.dataset == "cifar10" and arrays.classes is not None and tuple(n.lower() for n in arrays.classes) != CIFAR10_NAMES:
        raise DataError(f"{src.origin} {src.path}: classes {', '.join(arrays.classes)} are not CIFAR-10's "
                        f"({', '.join(CIFAR10_NAMES)}, in that order); {fix}")


def _shape_text(x: np.ndarray) -> str:
    return "x".join(str(d) for d in x.shape[1:])


def pin_data(cfg: TrainConfig) -> TrainConfig:
    """The config with ``data.path`` and ``data.sha256`` set to the data it resolves to (a file or a
    folder), or cleared (torchvision's CIFAR): what a trial or retrain records as its config."""
    src = resolve_source(cfg.data)
    if src.kind != "torchvision":  # a CIFAR by name keeps its name: the file must hold its classes
        return cfg.replace("data", path=src.path, sha256=src.sha256, dataset=src.dataset)
    return cfg.replace("data", path=None, sha256=None, root=src.path, dataset=src.dataset)


def data_identity(cfg: TrainConfig) -> dict[str, Any]:
    return resolve_source(cfg.data).identity(cfg.data)


# -- reading arrays --------------------------------------------------------------------------------

def read_arrays(src: Source, cfg: DataConfig) -> Arrays:
    """The source's images and labels, checked (shapes, dtypes, labels 0..K-1)."""
    if src.kind == "npz":
        return _npz(src.path)
    if src.kind == "folder":
        return _folder(src.path, src.sha256 or folder_hash(src.path), cfg.image_size, cfg.test_fraction, cfg.split_seed)
    x, y = _torchvision(src.dataset or "cifar10", src.path, cfg.download, True)
    return Arrays(x, y, None, None, None)


@functools.lru_cache(maxsize=4)
def _npz(path: str) -> Arrays:
    where = f"data file {path}"
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            missing = [k for k in ("x_train", "y_train") if k not in keys]
            if missing:
                raise DataError(f"{where}: missing arrays {', '.join(missing)}; expected x_train, y_train (and optional "
                                f"x_test, y_test, classes); found {', '.join(sorted(keys)) or 'none'}")
            arrays = {k: np.asarray(f[k]) for k in ("x_train", "y_train", "x_test", "y_test", "classes") if k in keys}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{where}: cannot read as .npz ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'corrupt'})") \
            from None
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{where}: has {'x_test' if 'x_test' in arrays else 'y_test'} without its pair; give both or neither")
    classes = None
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{where}: classes is {names.dtype} {names.shape}; expected a list of names (strings)")
        classes = tuple(str(c) for c in names)
    x, y = _images(arrays["x_train"], where, "x_train"), _labels(arrays["y_train"], where, "y_train")
    _pair(x, y, where, "train")
    k = _num_classes(y, classes, where)
    xt = yt = None
    if "x_test" in arrays:
        xt, yt = _images(arrays["x_test"], where, "x_test"), _labels(arrays["y_test"], where, "y_test")
        _pair(xt, yt, where, "test")
        if xt.shape[1:] != x.shape[1:]:
            raise DataError(f"{where}: x_test images are {_shape_text(xt)}, x_train's {_shape_text(x)}; they must match")
        if len(yt) and int(yt.max()) >= k:
            raise DataError(f"{where}: y_test holds label {int(yt.max())}, but the training labels are 0..{k - 1}")
    return Arrays(x, y, xt, yt, classes)


def _images(x: np.ndarray, where: str, name: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DataError(f"{where}: {name} is {x.dtype}; expected uint8 pixels 0..255 (N x H x W x C)")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] not in (1, 3):
        raise DataError(f"{where}: {name} has shape {x.shape}; expected N x H x W x C with C = 1 or 3, or N x H x W")
    if x.shape[1] != x.shape[2]:
        raise DataError(f"{where}: {name} images are {x.shape[1]}x{x.shape[2]}; square images are expected "
                        "(crop or pad them to a square side)")
    if x.shape[1] < 8:
        raise DataError(f"{where}: {name} images are {x.shape[1]}x{x.shape[2]}; at least 8x8 is expected")
    return np.ascontiguousarray(x)


def _labels(y: np.ndarray, where: str, name: str) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{where}: {name} has shape {y.shape}; expected one integer label per image (N,)")
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: {name} is {y.dtype}; expected integer labels 0..K-1")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{where}: {name} holds label {int(y.min())}; expected labels 0..K-1")
    return y.astype(np.int64)


def _pair(x: np.ndarray, y: np.ndarray, where: str, split: str) -> None:
    if len(x) != len(y):
        raise DataError(f"{where}: x_{split} holds {len(x)} images but y_{split} {len(y)} labels; they must match")
    if split == "train" and len(x) == 0:
        raise DataError(f"{where}: x_train is empty")


def _num_classes(y: np.ndarray, classes: tuple[str, ...] | None, where: str) -> int:
    k = int(y.max()) + 1
    if classes is not None:
        if k > len(classes):
            raise DataError(f"{where}: y_train holds label {k - 1}, but classes names {len(classes)} classes")
        k = len(classes)
    if k < 2:
        raise DataError(f"{where}: y_train holds one class; at least 2 are needed to classify")
    return k


# -- image folders (listing, stamp, decoding: :mod:`hps.trainers.folder`) ------------------------------

@functools.lru_cache(maxsize=4)
def _folder(root: str, sha: str, image_size: int | None, test_fraction: float, seed: int) -> Arrays:
    """The folder's arrays (``sha``, its content hash, keys the memo: changed content is read anew)."""
    arrays, classes = decoded(root, image_size)
    x, y = arrays["x_train"], arrays["y_train"]
    xt, yt = (arrays["x_test"], arrays["y_test"]) if "x_test" in arrays else (None, None)
    if xt is None:  # one tree: hold out a stratified test split
        rest, held = stratified_pick(y, test_fraction, seed + 7)
        x, y, xt, yt = x[rest], y[rest], x[held], y[held]
    return Arrays(x, y, xt, yt, classes)


@functools.lru_cache(maxsize=4)
def _torchvision(dataset: str, root: str, download: bool, train: bool) -> tuple[np.ndarray, np.ndarray]:
    import torchvision

    cls = torchvision.datasets.CIFAR100 if dataset == "cifar100" else torchvision.datasets.CIFAR10
    try:
        if download:  # workers sharing a folder (compose's /data volume) download it once, one at a time
            os.makedirs(root, exist_ok=True)
            lock_dir = cache_dir() / "locks"
            lock_dir.mkdir(parents=True, exist_ok=True)
            lock_name = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:16]
            with open(lock_dir / f"{dataset}-{lock_name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                ds = cls(root, train=train, download=True)
        else:
            ds = cls(root, train=train, download=False)
    except RuntimeError as e:
        raise DataError(f"{dataset} not found under {root} and data.download is false ({e}); set "
                        "data.download: true, or data.path / HPS_DATA to an .npz") from None
    except OSError as e:  # offline, or the folder is not writable
        raise DataError(f"{dataset}: could not download into {root} ({type(e).__name__}: {e}); without internet, set "
                        "HPS_DATA or data.path to an .npz of the images") from None
    return np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64)


# -- the shape, cheaply ------------------------------------------------------------------------------

def data_shape(cfg: DataConfig) -> Shape:
    """Classes, channels and side of the data a config names, without loading a named CIFAR (a
    file is read once per process and cached; the meter and model checks use it)."""
    if cfg.name:  # a CIFAR by name: its shape is known (the file is checked when it is loaded)
        return Shape(CLASSES[cfg.name], 3, 32)
    src = resolve_source(cfg)
    return _shape_of(src.path, src.kind, src.sha256 or "", cfg.image_size, cfg.test_fraction, cfg.split_seed)


@functools.lru_cache(maxsize=16)
def _shape_of(path: str, kind: str, sha: str, image_size: int | None, test_fraction: float, seed: int) -> Shape:
    a = _npz(path) if kind == "npz" else _folder(path, sha, image_size, test_fraction, seed)
    return Shape(_num_classes(a.y, a.classes, path), a.x.shape[3], a.x.shape[1])


def input_side(cfg: DataConfig, shape: Shape) -> int:
    """The side the model sees: ``data.image_size``, else the images' own."""
    return cfg.image_size or shape.side


# -- splits ----------------------------------------------------------------------------------------

def stratified_pick(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, picked), picking ``fraction`` of every class, seeded."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        picked.append(rng.permutation(idx)[: round(len(idx) * fraction)])
    pick = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(y)), pick), pick


def _to_split(x: np.ndarray, y: np.ndarray, idx: np.ndarray, device: torch.device) -> tuple[Split, np.ndarray]:
    """The rows ``idx`` as a split on ``device`` (and its images as uint8 ``N x C x S x S`` on the host),
    gathered and transposed in chunks: no copy of the split in ``x``'s layout beside the result."""
    out = np.empty((len(idx), x.shape[3], x.shape[1], x.shape[2]), np.uint8)
    for a in range(0, len(idx), 4096):
        out[a:a + 4096] = x[idx[a:a + 4096]].transpose(0, 3, 1, 2)
    return Split(torch.from_numpy(out).to(device), torch.from_numpy(np.ascontiguousarray(y[idx])).to(device)), out


def _stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of uint8 ``N x C x S x S`` images, from each channel's
    histogram of the 256 values (exact integer sums, in chunks: no float copy of the set; 6x faster
    than summing floats)."""
    c = x.shape[1]
    counts = np.zeros((c, 256), dtype=np.int64)
    for i in range(0, len(x), 4096):
        for ch in range(c):
            counts[ch] += np.bincount(x[i:i + 4096, ch].reshape(-1), minlength=256)
    v = np.arange(256, dtype=np.float64)
    n = counts.sum(1)
    mean = counts @ v / n
    std = np.sqrt(np.maximum(counts @ (v * v) / n - mean * mean, 1e-12))
    return tuple(float(m) / 255 for m in mean), tuple(max(float(s) / 255, 1e-3) for s in std)


LOADS_KEPT = 2  # a study's trials share one load; a retrain with --test may add a second
_LOADED: OrderedDict[tuple[Any, ...], Data] = OrderedDict()


def load_data(cfg: DataConfig, device: torch.device | str = "cpu", test: bool = False) -> Data:
    """Train/val (and test, if asked) splits as uint8 tensors on ``device``. A process loads, checks,
    splits and moves them once: the next trial in it with the same data config, data and device gets
    the same tensors (read them, never write them); other data or a changed file loads anew."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    src = resolve_source(cfg)
    key = (src.kind, src.path, src.dataset, src.sha256, cfg.subset, cfg.val_fraction, cfg.split_seed, cfg.image_size,
           cfg.test_fraction, str(device), test)  # what the load depends on: a pinned config finds its unpinned twin
    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    data = _load(cfg, src, device, test)
    _LOADED[key] = data
    while len(_LOADED) > LOADS_KEPT:  # the oldest goes: its tensors are freed once no trial holds them
        _LOADED.popitem(last=False)
    return data


def forget_loads() -> None:
    """Drop the loads this process keeps (the next :func:`load_data` reads the data again)."""
    _LOADED.clear()


def _load(cfg: DataConfig, src: Source, device: torch.device, test: bool) -> Data:
    arrays = read_arrays(src, cfg)
    x, y = arrays.x, arrays.y
    n_cls = CLASSES[src.dataset] if src.dataset else _num_classes(y, arrays.classes, src.path)
    rows = np.arange(len(y))  # the rows of x the splits index (a subset's)
    if cfg.subset is not None and cfg.subset < len(y):
        _, rows = stratified_pick(y, cfg.subset / len(y), cfg.split_seed)
        y = y[rows]
    train_idx, val_idx = stratified_pick(y, cfg.val_fraction, cfg.split_seed + 1)
    if cfg.val_fraction > 0 and len(val_idx) == 0:
        raise DataError(f"data.val_fraction {cfg.val_fraction:g} of {len(y)} training images leaves no validation "
                        f"image ({n_cls} classes, stratified); raise data.subset or data.val_fraction")
    if len(train_idx) == 0:
        raise DataError(f"data: {len(y)} training images leave none to train on after the validation split")
    if test:
        if src.kind == "torchvision":
            xt, yt = _torchvision(src.dataset or "cifar10", src.path, cfg.download, False)
        elif arrays.x_test is None or arrays.y_test is None or not len(arrays.y_test):
            raise DataError(f"{src.origin} {src.path}: holds no test split (x_test, y_test); score without --test")
        else:
            xt, yt = arrays.x_test, arrays.y_test
    train, host = _to_split(x, arrays.y, rows[train_idx], device)
    mean, std = _stats(host)
    del host  # on a GPU, the host copy goes now
    return Data(
        train=train,
        val=_to_split(x, arrays.y, rows[val_idx], device)[0] if len(val_idx) else None,
        test=_to_split(xt, yt, np.arange(len(yt)), device)[0] if test else None,
        num_classes=n_cls, mean=mean, std=std, source=src.path,
    )
