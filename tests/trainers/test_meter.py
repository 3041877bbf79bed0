import io

import pytest
import torch

from hps.trainers import config_from_dict, create_model, measure, state_dict_at
from hps.trainers.meter import count_macs

from .test_models import FAMILIES


def real_file_bytes(name: str, width: float, dtype: str, classes: int = 10) -> int:
    buf = io.BytesIO()
    torch.save(state_dict_at(create_model(name, num_classes=classes, width=width), dtype), buf)
    return len(buf.getvalue())


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("width", [0.25, 1.0])
def test_meter_matches_a_real_torch_save(name: str, width: float) -> None:
    m = measure(config_from_dict({"model": {"name": name, "width": width}}))
    for dtype in ("fp32", "fp16", "int8"):
        real = real_file_bytes(name, width, dtype)
        assert m.model_bytes[dtype] == real, (dtype, m.model_bytes[dtype], real)  # exact, not close
    assert m.params == sum(p.numel() for p in create_model(name, width=width).parameters())
    assert m.model_bytes["fp16"] < 0.6 * m.model_bytes["fp32"]  # per-tensor overhead weighs on tiny models
    assert abs(m.model_bytes["bf16"] - m.model_bytes["fp16"]) < 0.001 * m.model_bytes["fp16"]


def test_macs_convention() -> None:
    m = measure(config_from_dict({"model": {"name": "resnet18"}}))
    assert m.macs == 555_422_720  # the published ~0.56 GMACs of CIFAR ResNet-18
    assert m.flops == 2 * m.macs
    # a single conv by hand: 3->8 channels, 3x3, 32x32 output
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_macs(conv, device="cpu")[0] == 8 * 32 * 32 * 3 * 3 * 3


def test_classes_come_from_the_dataset_never_from_a_file_elsewhere() -> None:
    cfg100 = config_from_dict({"model": {"name": "mobilenet_v3"}, "data": {"dataset": "cifar100"}})
    m = measure(cfg100)  # HPS_DATA holds the 10-class mini set: it does not decide the head
    assert m.num_classes == 100
    assert m.params == sum(p.numel() for p in create_model("mobilenet_v3", num_classes=100).parameters())


def test_memory_estimate_uses_the_precision_the_device_trains_at() -> None:
    """precision auto on a CPU trains in fp32: the estimate is the fp32 one (it was half)."""
    auto = measure(config_from_dict({"train": {"precision": "auto", "device": "auto"}}))
    fp32 = measure(config_from_dict({"train": {"precision": "fp32", "device": "cpu"}}))
    bf16 = measure(config_from_dict({"train": {"precision": "bf16", "device": "cpu"}}))
    if not torch.cuda.is_available():
        assert auto.train_memory_mb == fp32.train_memory_mb
    assert bf16.train_memory_mb < 0.75 * fp32.train_memory_mb


def test_int8_state_dict_round_trips_within_quantisation_error() -> None:
    model = create_model("airnet", width=0.25)
    sd8 = state_dict_at(model, "int8")
    w = model.state_dict()["fc.weight"]
    restored = sd8["fc.weight"].float() * sd8["fc.weight._scale"]
    assert (restored - w).abs().max() <= w.abs().max() / 127 + 1e-6


def test_memory_estimate_grows_with_batch() -> None:
    small = measure(config_from_dict({"train": {"batch_size": 32}}))
    big = measure(config_from_dict({"train": {"batch_size": 256}}))
    assert big.train_memory_mb > 4 * small.train_memory_mb > 0


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "int8"])
def test_weights_kept_from_a_gpu_have_the_bytes_the_meter_counted(monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    """``torch.save`` writes each tensor's location: saved from CUDA, a "cuda:0" per tensor, bytes
    ``model_bytes`` never counted (mobilenet_v3 could end over ``max_model_bytes``). Emulated here:
    the model's storages are tagged as on "cuda:0", as torch.save tags a GPU's, and ``.cpu()`` copies
    them off; the kept file (``state_dict_at``) then has exactly the meter's bytes."""
    model = create_model("mobilenet_v3", width=0.5)
    on_gpu = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}

    def tag(storage: torch.UntypedStorage) -> str | None:  # a new string per tensor, as torch's CUDA tagger
        return str(torch.device("cuda", 0)) if storage.data_ptr() in on_gpu else None

    def to_host(t: torch.Tensor) -> torch.Tensor:
        return t.clone() if t.untyped_storage().data_ptr() in on_gpu else t

    torch.serialization.register_package(0, tag, lambda obj, _location: obj)
    try:
        monkeypatch.setattr(torch.Tensor, "cpu", to_host)
        raw = io.BytesIO()
        torch.save(model.state_dict(), raw)
        kept = io.BytesIO()
        torch.save(state_dict_at(model, dtype), kept)
    finally:
        torch.serialization._package_registry[:] = [p for p in torch.serialization._package_registry if p[1] is not tag]
    m = measure(config_from_dict({"model": {"name": "mobilenet_v3", "width": 0.5}}))
    assert len(kept.getvalue()) == m.model_bytes[dtype]
    assert len(raw.getvalue()) > m.model_bytes["fp32"]  # the emulation shows the defect: the location strings


COUNTED = '''
from torch import nn

calls = []


def build(num_classes, in_channels, width=1.0):
    calls.append(width)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 32 * 32, num_classes))
'''


def test_a_network_is_measured_once_per_process(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each trial's pre-screen, a warm start and the space's smallest config measure the same network
    again and again: its figures are kept (keyed by the model section and the data's shape), the
    batch-dependent memory estimate still computed per config; a user's builder that is not pinned
    to its file's sha256 is measured every time (its code could change)."""
    import sys

    from hps.trainers.models.check import pin_model

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "counted_net.py").write_text(COUNTED)
    import counted_net

    base = {"model": {"name": "counted_net:build"}, "train": {"device": "cpu"}}
    unpinned = config_from_dict(base)
    measure(unpinned), measure(unpinned)
    assert len(counted_net.calls) == 2
    pinned = pin_model(unpinned)
    assert pinned.model.sha256
    first = measure(pinned)
    again = measure(config_from_dict({**base, "train": {"device": "cpu", "batch_size": 32}}).replace(
        "model", sha256=pinned.model.sha256))
    assert len(counted_net.calls) == 3 and again.params == first.params and again.train_memory_mb < first.train_memory_mb
    del sys.modules["counted_net"]
