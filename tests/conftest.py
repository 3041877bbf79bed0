"""Shared fixtures: the real CIFAR-10 mini set and a small fast config."""

from __future__ import annotations

import os
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
def _hps_data(mini_npz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPS_DATA", str(mini_npz))


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
