from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hps.trainers import DataError, config_from_dict, load_data


def test_npz_split_is_stratified_seeded_and_disjoint(mini_npz: Path) -> None:
    cfg = config_from_dict({"data": {"val_fraction": 0.1}}).data
    d = load_data(cfg)
    assert d.train.x.dtype == torch.uint8 and d.train.x.shape == (4500, 3, 32, 32)
    assert len(d.val) == 500 and d.test is None and d.num_classes == 10
    assert torch.bincount(d.val.y).tolist() == [50] * 10  # stratified
    raw = np.load(mini_npz)
    # every image is in exactly one split
    flat = {bytes(x) for x in raw["x_train"].reshape(5000, -1)}
    got = [bytes(x) for x in torch.cat([d.train.x, d.val.x]).permute(0, 2, 3, 1).reshape(5000, -1).numpy()]
    assert set(got) == flat and len(set(got)) == 5000
    again = load_data(cfg)
    assert torch.equal(again.val.y, d.val.y) and torch.equal(again.val.x, d.val.x)
    other = load_data(config_from_dict({"data": {"split_seed": 1}}).data)
    assert not torch.equal(other.val.x, d.val.x)


def test_subset_and_test_split(mini_npz: Path) -> None:
    d = load_data(config_from_dict({"data": {"subset": 1000, "val_fraction": 0.2}}).data, test=True)
    assert len(d.train) == 800 and len(d.val) == 200
    assert torch.bincount(d.train.y).tolist() == [80] * 10
    assert d.test is not None and len(d.test) == 1000


def test_data_path_wins_over_env(tmp_path: Path, mini_npz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPS_DATA", str(tmp_path / "missing.npz"))
    d = load_data(config_from_dict({"data": {"path": str(mini_npz), "subset": 100}}).data)
    assert d.source == str(mini_npz)


def test_bad_npz_is_a_clear_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", x_train=np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"x\.npz: missing arrays y_train; expected x_train, y_train \(and optional x_test"):
        load_data(config_from_dict({"data": {"path": str(tmp_path / "x.npz")}}).data)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match=r"junk\.npz: cannot read as \.npz"):
        load_data(config_from_dict({"data": {"path": str(tmp_path / "junk.npz")}}).data)


def test_missing_torchvision_data_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPS_DATA")
    cfg = config_from_dict({"data": {"root": str(tmp_path), "download": False}}).data
    with pytest.raises(DataError, match=r"cifar10 not found under .* and data\.download is false"):
        load_data(cfg)


def test_the_file_is_read_once_per_process(mini_npz: Path) -> None:
    from hps.trainers.data import _npz

    _npz.cache_clear()
    for seed in range(3):  # three trials in one worker
        load_data(config_from_dict({"data": {"subset": 500, "split_seed": seed}}).data)
    info = _npz.cache_info()
    assert info.misses == 1 and info.hits >= 2


def cifar100_npz(path: Path, mini_npz: Path) -> Path:
    """A CIFAR-100-shaped file made of the real mini images, 100 labels (this machine has no CIFAR-100)."""
    raw = np.load(mini_npz)
    y = np.arange(5000) % 100
    np.savez(path, x_train=raw["x_train"], y_train=y, x_test=raw["x_test"], y_test=np.arange(1000) % 100)
    return path


def test_a_file_of_other_classes_is_refused(mini_npz: Path) -> None:
    """HPS_DATA holds CIFAR-10: a CIFAR-100 config is refused, never trained on 10 classes."""
    cfg = config_from_dict({"data": {"dataset": "cifar100"}}).data
    with pytest.raises(DataError) as info:
        load_data(cfg)
    assert str(info.value) == (f"HPS_DATA {mini_npz}: holds 10 classes of 32x32x3 images, but data.dataset is 'cifar100' "
                               "(100 classes of 32x32x3); point HPS_DATA at a cifar100 .npz, or at a folder holding "
                               "cifar100.npz; for your own images set data.path")


def test_cifar10_and_cifar100_side_by_side(tmp_path: Path, mini_npz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    shutil.copy(mini_npz, tmp_path / "cifar10.npz")
    cifar100_npz(tmp_path / "cifar100.npz", mini_npz)
    monkeypatch.setenv("HPS_DATA", str(tmp_path))
    ten = load_data(config_from_dict({"data": {"dataset": "cifar10"}}).data)
    hundred = load_data(config_from_dict({"data": {"dataset": "cifar100", "val_fraction": 0.2}}).data)
    assert (ten.source, ten.num_classes) == (str(tmp_path / "cifar10.npz"), 10)
    assert (hundred.source, hundred.num_classes) == (str(tmp_path / "cifar100.npz"), 100)
    assert int(hundred.train.y.max()) == 99


def test_pinned_config_records_path_and_sha256(mini_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from hps.trainers import data_identity, pin_data

    cfg = pin_data(config_from_dict({"data": {"split_seed": 3}}))
    sha = hashlib.sha256(mini_npz.read_bytes()).hexdigest()
    assert cfg.data.path == str(mini_npz) and cfg.data.sha256 == sha
    assert data_identity(cfg) == {"dataset": "cifar10", "source": "npz", "path": str(mini_npz), "sha256": sha,
                                  "split_seed": 3, "val_fraction": 0.1, "subset": None}
    # other data under the same config is refused, naming both hashes
    other = tmp_path / "other.npz"
    raw = dict(np.load(mini_npz))
    raw["x_train"] = raw["x_train"][::-1].copy()
    np.savez(other, **raw)
    with pytest.raises(DataError, match=rf"data\.path {other}: sha256 [0-9a-f]{{12}} differs from the config's data\.sha256 {sha[:12]}"):
        load_data(cfg.replace("data", path=str(other)).data)
    # the same file kept at another path (another machine) is found through HPS_DATA
    moved = cfg.replace("data", path=str(tmp_path / "gone.npz"))
    assert load_data(moved.data, test=False).source == str(mini_npz)
    monkeypatch.setenv("HPS_DATA", str(other))
    with pytest.raises(DataError, match=r"gone\.npz: not found, and HPS_DATA .*other\.npz has sha256 [0-9a-f]{12}, not the recorded"):
        load_data(moved.data)


def test_torchvision_source_is_named_with_its_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hps.trainers import data_identity, pin_data

    monkeypatch.delenv("HPS_DATA")
    cfg = config_from_dict({"data": {"root": str(tmp_path), "download": False}})
    assert pin_data(cfg).data.path is None
    assert data_identity(cfg)["version"] == "cifar-10-python.tar.gz md5 c58f30108f718f92721af3b95e74349a"


def test_a_split_without_validation_images_is_refused() -> None:
    """10 images at val_fraction 0.05 leave no validation image (a tiny subset of 100 classes does too): a clear error,
    not trials that all fail on a missing val_acc."""
    cfg = config_from_dict({"data": {"subset": 10, "val_fraction": 0.05}}).data
    with pytest.raises(DataError, match=r"data\.val_fraction 0\.05 of 10 training images leaves no validation image"):
        load_data(cfg)


# -- a whole folder: listed once per process, found by its stamp, decoded in parallel, loaded once --

@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh process's view (nothing listed, loaded or cached) of a 3-class PNG folder: 240 train, 30 test."""
    from tests.conftest import png_folder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _new_process()
    return png_folder(tmp_path / "pngs", classes=3, per_class=80, test_per_class=10)


def _count(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Count the calls of ``module.name`` (the real function still runs)."""
    calls = [0]
    real = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def _new_process() -> None:
    from hps.trainers.data import _folder, forget_loads
    from hps.trainers.folder import forget_folders

    forget_folders()
    forget_loads()
    _folder.cache_clear()


def _folder_cfg(root: Path, **data: Any) -> Any:
    return config_from_dict({"model": {"name": "airnet", "width": 0.125},
                             "data": {"path": str(root), "val_fraction": 0.2, **data},
                             "train": {"epochs": 1, "batch_size": 64, "device": "cpu"}})


def test_a_folder_is_listed_and_hashed_once_per_process(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hps.trainers.folder as fm
    from hps.trainers import data_identity, pin_data
    from hps.trainers.data import data_shape, resolve_source

    scans, hashes = _count(monkeypatch, fm, "_scan"), _count(monkeypatch, fm, "_content_hash")
    cfg = _folder_cfg(folder)
    for seed in range(3):  # what a run and three trials ask: pin, identity, shape, load
        pinned = pin_data(cfg.replace("train", seed=seed))
        data_identity(pinned), data_shape(pinned.data), resolve_source(pinned.data)
        load_data(pinned.data)
    assert scans[0] == 1 and hashes[0] == 1


def test_a_later_run_finds_its_cache_by_the_stamp_without_reading_the_files(folder: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import hps.trainers.folder as fm

    first = load_data(_folder_cfg(folder).data, test=True)
    stamps = list((folder.parent / "cache" / "hps" / "images" / "stamps").glob("*.json"))
    assert len(stamps) == 1
    _new_process()
    scans, hashes, builds = (_count(monkeypatch, fm, n) for n in ("_scan", "_content_hash", "build"))
    again = load_data(_folder_cfg(folder).data, test=True)
    assert (scans[0], hashes[0], builds[0]) == (1, 0, 0)  # one metadata walk; no file read, nothing decoded
    assert torch.equal(again.train.x, first.train.x) and again.test is not None and len(again.test) == 30


def test_a_changed_folder_is_detected(folder: Path) -> None:
    import os

    from hps.trainers import pin_data
    from hps.trainers.errors import DataMismatch

    pinned = pin_data(_folder_cfg(folder))
    cls = folder / "train" / "airplane"
    (cls / "extra.png").write_bytes((cls / "0001.png").read_bytes())  # added: seen in this same process
    with pytest.raises(DataMismatch, match=r"differs from the config's data\.sha256"):
        load_data(pinned.data)
    (cls / "extra.png").unlink()  # removed again: the same data
    assert load_data(pinned.data).train.x.shape[0] == 192
    (cls / "0000.png").write_bytes((cls / "0002.png").read_bytes())  # replaced in place: a new run sees it
    _new_process()
    with pytest.raises(DataMismatch, match=r"differs from the config's data\.sha256"):
        load_data(pinned.data)
    # what the stamp does not see: content edited with the size and mtime kept (the documented limit)
    pinned = pin_data(_folder_cfg(folder))
    a = cls / "0003.png"
    st, edited = a.stat(), bytearray(a.read_bytes())
    edited[-20] ^= 1
    a.write_bytes(bytes(edited))
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    _new_process()
    assert pin_data(_folder_cfg(folder)).data.sha256 == pinned.data.sha256


def test_parallel_decode_gives_the_serial_array(folder: Path, tmp_path: Path) -> None:
    from PIL import Image

    from hps.trainers.folder import build

    build(str(folder), None, tmp_path / "serial", workers=1)
    build(str(folder), None, tmp_path / "parallel", workers=2)  # 270 images in 5 chunks, 2 processes
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(np.load(tmp_path / "serial" / f"{name}.npy"), np.load(tmp_path / "parallel" / f"{name}.npy"))
    x = np.load(tmp_path / "parallel" / "x_train.npy")
    assert x.shape == (240, 32, 32, 3)
    assert np.array_equal(x[80], np.asarray(Image.open(folder / "train" / "automobile" / "0000.png").convert("RGB")))


def test_a_second_trial_in_a_process_does_not_reload(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hps.trainers.augment as augment
    import hps.trainers.data as data
    from hps.trainers import train

    loads, pads = _count(monkeypatch, data, "_load"), _count(monkeypatch, augment, "reflect_pad")
    for seed in range(2):
        result = train(_folder_cfg(folder).replace("train", seed=seed))
        assert len(result.history) == 1
    assert loads[0] == 1 and pads[0] == 1
    load_data(_folder_cfg(folder, split_seed=1).data)  # another split is another load
    assert loads[0] == 2
