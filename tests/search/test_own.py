"""Studies on a user's own images (a 7-class grayscale 28x28 .npz, a folder of PNGs) with a user's
own network, end to end: search, export, retrain with a test-split score."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import hps
from tests.conftest import gray_npz, png_folder
from tests.search.conftest import hps as hps_cli
from tests.trainers.test_own import MYCNN

pytestmark = pytest.mark.slow


def _space(tmp_path: Path, name: str, data: dict[str, Any]) -> Path:
    (tmp_path / "mycnn.py").write_text(MYCNN)
    space = {
        "study": {"name": name, "trials": 4, "pruner": {"name": "none"}},
        "base": {"model": {"name": "mycnn.py:build"}, "data": {"val_fraction": 0.2, **data},
                 "train": {"epochs": 2, "batch_size": 64, "device": "cpu"}},
        "space": {"model.width": {"low": 0.5, "high": 2.0}, "model.args.hidden": {"low": 16, "high": 64},
                  "optimizer.lr": {"low": 0.01, "high": 0.2, "log": True}},
        "budget": {"max_params": 20_000},
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.mark.parametrize("kind", ["gray7-npz", "png-folder"])
def test_a_study_on_own_images_with_an_own_network(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("HPS_DATA")  # the space names its data itself
    if kind == "gray7-npz":
        data, classes, shape = {"path": "gray7.npz"}, 7, (1, 28, 28)
        gray_npz(tmp_path / "gray7.npz")
    else:
        data, classes, shape = {"path": "pngs", "image_size": 24}, 4, (3, 24, 24)
        png_folder(tmp_path / "pngs", side=20)  # 20 px files, trained at 24 px
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = hps.run(_space(tmp_path, kind, data), url, progress="none")
    assert result.failures == [] and result.finished == 4 and result.best_trial is not None
    best = result.best_trial
    cfg = best.system_attrs["hps:config"]
    assert cfg["model"]["name"] == f"{tmp_path / 'mycnn.py'}:build" and len(cfg["model"]["sha256"]) == 64
    assert isinstance(best.params["model.args.hidden"], int) and cfg["model"]["args"]["hidden"] == best.params["model.args.hidden"]
    assert best.system_attrs["hps:budget"]["params"] <= 20_000
    model = hps.create_model(cfg["model"]["name"], num_classes=classes, in_channels=shape[0], width=cfg["model"]["width"],
                             args=cfg["model"]["args"])
    assert best.user_attrs["params"] == sum(p.numel() for p in model.parameters())  # the meter built it at the data's shape

    exported = tmp_path / "best.yaml"
    assert hps_cli("export", kind, "-o", str(exported), "--storage", url).returncode == 0
    prov = yaml.safe_load(exported.read_text())["provenance"]
    assert prov["model"] == {"name": cfg["model"]["name"], "sha256": cfg["model"]["sha256"]}
    assert prov["data"]["source"] == ("npz" if kind == "gray7-npz" else "folder")
    out = tmp_path / "r"
    retrained = hps_cli("retrain", str(exported), "--test", "--out", str(out))
    assert retrained.returncode == 0, retrained.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_acc"] == pytest.approx(best.value)  # the trainer alone gives the trial's value (CPU, seeded)
    assert 0.0 < metrics["test_acc"] <= 1.0 and metrics["test_acc"] > 1.0 / classes - 0.1


GROWS = '''
import torch
from torch import nn


def build(num_classes, in_channels, width=1.0):
    c = 8 if torch.empty(0).is_meta else 96  # the meter's network (built on the meta device) is small, the rest not
    return nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(c, num_classes))
'''


def test_a_builder_that_returns_another_network_to_train_fails_the_trial(tmp_path: Path) -> None:
    """The budget judged the network the meter built; the one that trains must be it: a builder
    that returns a bigger network when it is built to train fails its trial in one line, untrained."""
    import optuna
    from optuna.trial import TrialState

    from hps.search.errors import RunFailed

    (tmp_path / "grows.py").write_text(GROWS)
    space = {"study": {"name": "grows", "trials": 1, "pruner": {"name": "none"}},
             "base": {"model": {"name": "grows.py:build"}, "data": {"subset": 500, "val_fraction": 0.2},
                      "train": {"epochs": 1, "batch_size": 100, "device": "cpu"}},
             "space": {"optimizer.lr": {"low": 0.01, "high": 0.2, "log": True}}, "budget": {"max_params": 1000}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    url = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.raises(RunFailed, match="stopped after 3 failed trials in a row; first: trial 0: ModelChanged"):
        hps.run(path, url, progress="none")
    t = optuna.load_study(study_name="grows", storage=url).trials[0]
    assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == "error:ModelChanged" and not t.intermediate_values
    assert t.system_attrs["hps:why"] == (
        f"ModelChanged: model.name '{tmp_path / 'grows.py'}:build': the network built to train has 3,658 parameters and "
        "16,797 bytes at fp32, the one measured for the budget 314 and 3,485; the builder must return the same network "
        "for the same arguments")
