"""A user's own images and network: .npz of any shape, image folders, builders from files,
modules and entry points; bad data and bad models refused in one line before training."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hps.trainers import ConfigError, DataError, config_from_dict, load_config, load_data, measure, train
from hps.trainers.augment import Augmenter
from hps.trainers.data import data_shape, pin_data
from hps.trainers.errors import ModelError
from hps.trainers.folder import forget_folders
from hps.trainers.models import create_model, list_models
from hps.trainers.models.check import check_knobs, check_model
from tests.conftest import gray_npz, png_folder

MYCNN = '''
from torch import nn


def build(num_classes, in_channels, width=1.0, hidden=32):
    c = max(8, int(16 * width))
    return nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))
'''


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))  # decoded folders, model copies


@pytest.fixture(scope="module")
def gray7(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gray_npz(tmp_path_factory.mktemp("gray") / "gray7.npz")


def _cfg(data: dict[str, Any], **sections: dict[str, Any]) -> Any:
    base: dict[str, Any] = {"model": {"name": "airnet", "width": 0.25}, "data": {"val_fraction": 0.2, **data},
                            "train": {"epochs": 1, "batch_size": 100, "device": "cpu"}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return config_from_dict(base)


@pytest.mark.slow
def test_a_gray_28px_7_class_npz_trains_with_its_own_statistics(gray7: Path) -> None:
    cfg = _cfg({"path": str(gray7)})
    d = load_data(cfg.data, test=True)
    assert d.train.x.shape[1:] == (1, 28, 28) and d.num_classes == 7 and len(d.train) + len(d.val) == 3500
    raw = np.load(gray7)
    assert d.mean == pytest.approx((raw["x_train"][np.sort(np.concatenate([np.flatnonzero(raw["y_train"] == c)
                                                                            for c in range(7)]))].mean() / 255,), abs=0.02)
    assert len(d.mean) == len(d.std) == 1 and d.test is not None and len(d.test) == 700
    shape = data_shape(cfg.data)
    assert (shape.num_classes, shape.channels, shape.side) == (7, 1, 28)
    m = measure(cfg)  # counted at the data's shape: 1 channel, 28 px, 7 outputs
    model = create_model("airnet", num_classes=7, in_channels=1, width=0.25)
    assert m.params == sum(p.numel() for p in model.parameters()) and (m.image_size, m.in_channels, m.num_classes) == (28, 1, 7)
    result = train(cfg)
    assert result.config.data.sha256 and result.config.data.dataset is None
    assert 0.0 <= (result.val_acc or 0.0) <= 1.0 and len(result.history) == 1


@pytest.mark.parametrize("augment", [
    {"policy": "basic", "strength": 1.0}, {"policy": "randaugment"}, {"policy": "trivialaugment"},
    {"policy": "autoaugment"}, {"policy": "augmix"}, {"rotate": 20.0, "translate": 0.1, "perspective": 0.4},
    {"pick_one": ["resized_crop", "affine", "flip"]}, {"grayscale": 0.5}, {"mixup_alpha": 0.2},
])
def test_every_augmentation_works_on_one_channel_and_another_side(gray7: Path, augment: dict[str, Any]) -> None:
    cfg = _cfg({"path": str(gray7)}, augment=augment)
    d = load_data(cfg.data)
    aug = Augmenter(cfg.augment, d.train.x, d.mean, d.std, torch.Generator().manual_seed(0))
    out = aug.batch(torch.arange(16))
    assert out.shape == (16, 1, 28, 28) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not torch.equal(out, aug.normalize(d.train.x[:16])) or augment == {"mixup_alpha": 0.2}
    if augment.get("policy") == "basic":  # crop padding and cutout scale with the side
        assert aug.pad == round(8 * 1.0 * 28 / 32) and aug.cutout == round(28 * 0.5)


def test_hue_on_gray_images_is_refused_in_one_line(gray7: Path) -> None:
    cfg = _cfg({"path": str(gray7)}, augment={"hue": 0.1})
    with pytest.raises(ConfigError, match=r"^augment\.hue: 0\.1 shifts colours, but the images have one channel; set it to 0$"):
        train(cfg)


@pytest.mark.slow
def test_an_image_folder_is_decoded_once_and_never_written_into(tmp_path: Path) -> None:
    root = png_folder(tmp_path / "pngs")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    cfg = _cfg({"path": str(root)})
    d = load_data(cfg.data, test=True)
    assert d.train.x.shape[1:] == (3, 32, 32) and d.num_classes == 4 and len(d.test or []) == 120
    assert len(d.train) + len(d.val) == 600
    pinned = pin_data(cfg)
    assert pinned.data.path == str(root) and len(pinned.data.sha256 or "") == 64
    cached = [p for p in (Path(os.environ["XDG_CACHE_HOME"]) / "hps" / "images").iterdir() if p.name.endswith("-v2")]
    assert len(cached) == 1  # decoded once; the folder's content hash names it
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written into the user's folder
    again = load_data(cfg.data)
    assert torch.equal(again.train.x, d.train.x)
    (root / "train" / "airplane" / "0000.png").write_bytes((root / "train" / "airplane" / "0001.png").read_bytes())
    forget_folders()  # a new run: an edit in place (same name, new mtime) is found by the folder's stamp
    with pytest.raises(DataError, match=r"sha256 [0-9a-f]{12} differs from the config's data\.sha256"):
        load_data(pinned.data)  # other content, same names: other data


@pytest.mark.slow
def test_one_tree_is_split_and_mixed_sizes_need_an_image_size(tmp_path: Path) -> None:
    root = png_folder(tmp_path / "one", classes=3, per_class=50, test_per_class=0)
    d = load_data(_cfg({"path": str(root), "test_fraction": 0.2}).data, test=True)
    assert len(d.test or []) == 30 and len(d.train) + len(d.val) == 120
    from PIL import Image

    Image.new("RGB", (40, 36)).save(root / "airplane" / "odd.png")
    with pytest.raises(DataError, match=r"images have different sizes \(32x32, 40x36, \.\.\.\); set data\.image_size"):
        load_data(_cfg({"path": str(root)}).data)
    resized = load_data(_cfg({"path": str(root), "image_size": 24}).data)
    assert resized.train.x.shape[1:] == (3, 24, 24)


def _npz(path: Path, **arrays: Any) -> Path:
    base = {"x_train": np.zeros((20, 16, 16), np.uint8), "y_train": np.arange(20) % 2}
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


BAD_DATA = [
    ({"y_train": np.arange(19) % 2}, "x_train holds 20 images but y_train 19 labels; they must match"),
    ({"y_train": (np.arange(20) % 2).astype(np.float32)}, "y_train is float32; expected integer labels 0..K-1"),
    ({"y_train": np.arange(20) % 2 - 1}, "y_train holds label -1; expected labels 0..K-1"),
    ({"y_train": np.zeros(20, np.int64)}, "y_train holds one class; at least 2 are needed"),
    ({"x_train": np.zeros((0, 16, 16), np.uint8), "y_train": np.zeros(0, np.int64)}, "x_train is empty"),
    ({"x_train": np.zeros((20, 16, 16), np.float32)}, "x_train is float32; expected uint8 pixels 0..255"),
    ({"x_train": np.zeros((20, 16, 12), np.uint8)}, "x_train images are 16x12; square images are expected"),
    ({"x_train": np.zeros((20, 16, 16, 2), np.uint8)}, "x_train has shape (20, 16, 16, 2); expected N x H x W x C with C = 1 or 3"),
    ({"y_train": None}, "missing arrays y_train"),
    ({"x_test": np.zeros((4, 16, 16), np.uint8)}, "has x_test without its pair"),
    ({"x_test": np.zeros((4, 8, 8), np.uint8), "y_test": np.zeros(4, np.int64)}, "x_test images are 8x8x1, x_train's 16x16x1"),
    ({"x_test": np.zeros((4, 16, 16), np.uint8), "y_test": np.full(4, 5)}, "y_test holds label 5, but the training labels are 0..1"),
    ({"classes": np.array(["a"])}, "y_train holds label 1, but classes names 1 classes"),
]


@pytest.mark.parametrize(("arrays", "message"), BAD_DATA, ids=[m[:40] for _, m in BAD_DATA])
def test_bad_npz_data_is_one_line_before_training(tmp_path: Path, arrays: dict[str, Any], message: str) -> None:
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as e:
        train(_cfg({"path": str(path)}))
    assert f"data file {path}: {message}" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_broken_files_and_folders_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = _npz(tmp_path / "good.npz")
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:200])
    (tmp_path / "empty.npz").write_bytes(b"")
    for name in ("cut.npz", "empty.npz"):
        with pytest.raises(DataError, match=rf"{name}: cannot read as \.npz"):
            load_data(_cfg({"path": str(tmp_path / name)}).data)
    root = png_folder(tmp_path / "f", classes=2, per_class=5, test_per_class=0)
    (root / "airplane" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"airplane/notes\.txt is not an image PIL can read"):
        load_data(_cfg({"path": str(root)}).data)
    (root / "loose.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"holds files \(loose\.png\) beside class folders"):
        load_data(_cfg({"path": str(root)}).data)
    # HPS_DATA pointing at a folder of images is refused, never taken for a CIFAR download cache
    images = png_folder(tmp_path / "imgs", classes=2, per_class=3, test_per_class=0)
    monkeypatch.setenv("HPS_DATA", str(images))
    before = sorted(images.rglob("*"))
    with pytest.raises(DataError, match=r"a folder without cifar10\.npz or a CIFAR download, so it is not downloaded into; "
                                        r"for your own images set data\.path to it"):
        load_data(config_from_dict({}).data)
    assert sorted(images.rglob("*")) == before


# -- models ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_builder_from_a_file_relative_to_its_config(tmp_path: Path, gray7: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mycnn.py").write_text(MYCNN)
    (tmp_path / "c.yaml").write_text(f"model: {{name: models/mycnn.py:build, width: 0.5, args: {{hidden: 24}}}}\n"
                                     f"data: {{path: {gray7}}}\ntrain: {{epochs: 1, device: cpu}}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.model.name == f"{tmp_path / 'models' / 'mycnn.py'}:build"
    m = measure(cfg)
    assert m.params == (8 * 9 + 8) + 16 + (8 * 24 + 24) + (24 * 7 + 7)  # conv, BN, two linears: width 0.5 -> 8 channels
    result = train(cfg)
    assert result.config.model.sha256 and len(result.history) == 1


def test_a_builder_from_a_module_and_from_an_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(MYCNN)
    dist = tmp_path / "mypkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[hps.models]\nmycnn = mypkg.nets:build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "mycnn" in list_models()
    by_module = create_model("mypkg.nets:build", num_classes=5, in_channels=1)
    by_entry = create_model("mycnn", num_classes=5, in_channels=1)
    assert sum(p.numel() for p in by_module.parameters()) == sum(p.numel() for p in by_entry.parameters())
    cfg = config_from_dict({"model": {"name": "mycnn"}})
    assert cfg.model.name == "mycnn"
    sys.modules.pop("mypkg.nets", None)
    sys.modules.pop("mypkg", None)


BAD_MODELS = [
    ("def build(num_classes:\n", {}, "importing {file} failed: SyntaxError (line 1)"),
    ("import no_such_module\n", {}, "importing {file} failed: ModuleNotFoundError: No module named 'no_such_module'"),
    ("other = 1\n", {}, "{file} has no 'build'; callables there: none"),
    ("build = 3\n", {}, "int is not callable"),
    ("def build(num_classes):\n    raise ValueError('no good')\n", {}, "the builder raised ValueError: no good"),
    ("def build(num_classes):\n    return 3\n", {}, "the builder returned int, not a torch.nn.Module"),
    ("from torch import nn\ndef build(num_classes):\n    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes + 1))\n",
     {}, "output shape (2, 8) on a batch of shape (2, 1, 28, 28); expected (2, 7): (batch, num_classes)"),
    ("import torch\nfrom torch import nn\nclass M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.l = nn.Linear(1, 1)\n    def forward(self, x):\n        return torch.full((len(x), 7), float('nan'))\n"
     "def build():\n    return M()\n", {}, "the output holds NaN or inf on a random batch"),
    ("from torch import nn\ndef build(num_classes):\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))\n",
     {}, "a forward pass on a batch of shape (2, 1, 28, 28) raised RuntimeError"),
    (MYCNN, {"model": {"depth": 2.0}}, "model.depth: set to 2, but '{ref}' does not take depth (it takes hidden, in_channels, num_classes, width)"),
    (MYCNN, {"model": {"args": {"layers": 3}}}, "model.args.layers: '{ref}' does not take layers"),
]


@pytest.mark.parametrize(("code", "extra", "message"), BAD_MODELS, ids=[m[:30] for *_, m in BAD_MODELS])
def test_bad_model_code_is_one_line_naming_the_file(tmp_path: Path, gray7: Path, code: str, extra: dict[str, Any],
                                                    message: str) -> None:
    file = tmp_path / "net.py"
    file.write_text(code)
    ref = f"{file}:build"
    cfg = _cfg({"path": str(gray7)}, model={"name": ref, "width": 1.0, **extra.get("model", {})})
    with pytest.raises(ModelError) as e:
        train(cfg)
    text = str(e.value)
    assert message.format(file=file, ref=ref) in text and "\n" not in text, text
    assert text.startswith(f"model.name '{ref}'") or text.startswith("model.")


def test_knobs_a_builder_does_not_take_are_refused_when_searched(tmp_path: Path) -> None:
    (tmp_path / "n.py").write_text("from torch import nn\ndef build(num_classes):\n    return nn.Linear(3, num_classes)\n")
    cfg = config_from_dict({"model": {"name": f"{tmp_path / 'n.py'}:build"}})
    with pytest.raises(ModelError, match=r"model\.width: searched, but .* does not take width \(it takes num_classes\)"):
        check_knobs(cfg.model, searched=["model.width"])
    check_knobs(cfg.model, searched=["optimizer.lr"])
    with pytest.raises(ModelError, match=r"output shape \(2, 10\)|raised RuntimeError"):
        check_model(cfg, 10, 3, 32)
