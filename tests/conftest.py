"""Shared fixtures: the real CIFAR-10 mini set, a small fast config, and process helpers for the
tests that start real clusters."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MINI = Path(os.environ.get("HPS_TEST_DATA", REPO.parent / "shared" / "data" / "cifar10-mini.npz"))


@pytest.fixture(scope="session")
def mini_npz() -> Path:
    if not MINI.exists():
        pytest.fail(f"real CIFAR images not found at {MINI}; set HPS_TEST_DATA to cifar10-mini.npz")
    return MINI


@pytest.fixture(autouse=True)
def _hps_data(mini_npz: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("HPS_DATA", str(mini_npz))
    monkeypatch.setenv("HPS_ARTIFACTS", str(tmp_path_factory.mktemp("artifacts")))  # checkpoints, weights


def tiny_config(**sections: dict) -> dict:
    """A config that trains in seconds on 2 CPU cores: small ResNet, 2,000 images."""
    base: dict = {
        "model": {"name": "resnet18", "width": 0.25},
        "data": {"subset": 2000, "val_fraction": 0.2},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 2, "batch_size": 100, "device": "cpu"},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return base


def pids_using(marker: str) -> list[int]:
    """Processes whose command line holds ``marker`` (a Ray temp dir, say), and every process in
    their process groups: Ray's client server and agents do not name the temp dir."""
    own = os.getpgid(0)
    procs: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                stat = (entry / "stat").read_text()
                pgid = int(stat.rsplit(")", 1)[1].split()[2])
                procs[int(entry.name)] = (pgid, (entry / "cmdline").read_bytes().decode(errors="ignore"))
            except (OSError, ValueError, IndexError):
                continue
    groups = {pgid for pgid, cmd in procs.values() if marker in cmd} - {own}
    return sorted(pid for pid, (pgid, cmd) in procs.items() if marker in cmd or pgid in groups)


def kill_all(marker: str) -> None:
    """SIGTERM, then SIGKILL, whatever :func:`pids_using` finds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids_using(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(1)


def gray_npz(path: Path, classes: int = 7, side: int = 28, mini: Path = MINI) -> Path:
    """A grayscale ``side`` x ``side`` .npz of ``classes`` classes, made from the real mini CIFAR set
    (N x H x W uint8: one channel without a channel axis)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    raw = np.load(mini)

    def gray(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
        g = (0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2])[:, None]
        g = F.interpolate(g, size=(side, side), mode="bilinear", align_corners=False)
        return g.round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()

    train, test = raw["y_train"] < classes, raw["y_test"] < classes
    np.savez(path, x_train=gray(raw["x_train"][train]), y_train=raw["y_train"][train],
             x_test=gray(raw["x_test"][test]), y_test=raw["y_test"][test],
             classes=np.array([str(c) for c in raw["classes"][:classes]]))
    return path


def png_folder(root: Path, classes: int = 4, per_class: int = 150, test_per_class: int = 30, side: int | None = None,
               mini: Path = MINI) -> Path:
    """An ImageFolder tree of PNGs (``train/<class>/`` and ``test/<class>/``) made from the real mini
    CIFAR set; ``side`` resizes them; ``test_per_class=0`` makes one tree without train/test."""
    import numpy as np
    from PIL import Image

    raw = np.load(mini)
    names = [str(c) for c in raw["classes"][:classes]]
    splits = {"train": (raw["x_train"], raw["y_train"], per_class), "test": (raw["x_test"], raw["y_test"], test_per_class)}
    for split, (x, y, n) in splits.items():
        if n == 0:
            continue
        for c, name in enumerate(names):
            folder = (root / split / name) if test_per_class else (root / name)
            folder.mkdir(parents=True, exist_ok=True)
            for i, idx in enumerate(np.flatnonzero(y == c)[:n]):
                im = Image.fromarray(x[idx])
                if side:
                    im = im.resize((side, side), Image.Resampling.BILINEAR)
                im.save(folder / f"{i:04d}.png")
    return root
