from pathlib import Path

import numpy as np
import pytest
import torch

from trainers import DataError, config_from_dict, load_data


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
    with pytest.raises(DataError, match=r"x\.npz: missing arrays y_train, x_test, y_test"):
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
    from trainers.data import _npz

    _npz.cache_clear()
    for seed in range(3):  # three trials in one worker
        load_data(config_from_dict({"data": {"subset": 500, "split_seed": seed}}).data)
    info = _npz.cache_info()
    assert info.misses == 1 and info.hits >= 2
