import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hps.trainers import TrainingDiverged, config_from_dict, load_config, train
from tests.conftest import REPO, tiny_config
from tests.helpers import Killed, kill_at


@pytest.mark.slow
def test_a_short_run_learns() -> None:
    cfg = config_from_dict(tiny_config(train={"epochs": 3}, data={"subset": 5000, "val_fraction": 0.1}))
    seen: list[tuple[int, dict]] = []
    result = train(cfg, report=lambda e, m: seen.append((e, m)))
    assert [e for e, _ in seen] == [1, 2, 3]
    keys = {"epoch", "train_loss", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_s"}
    assert all(keys <= set(m) for _, m in seen)
    assert result.val_acc is not None and result.val_acc > 0.30  # chance is 0.10
    assert seen[-1][1]["train_loss"] < seen[0][1]["train_loss"]
    assert result.config.data.path is not None  # the result carries its resolved config


@pytest.mark.slow
def test_same_seed_same_metrics_on_cpu() -> None:
    cfg = config_from_dict(tiny_config(augment={"strength": 1.0, "mixup_alpha": 0.2}))
    a, b = train(cfg), train(cfg)
    strip = [{k: v for k, v in m.items() if k not in ("epoch_seconds", "images_per_s")} for m in a.history]
    assert strip == [{k: v for k, v in m.items() if k not in ("epoch_seconds", "images_per_s")} for m in b.history]
    c = train(config_from_dict(tiny_config(train={"seed": 1})))
    assert c.history[-1]["val_loss"] != a.history[-1]["val_loss"]


def test_report_exception_stops_training() -> None:
    class Stop(Exception):
        pass

    calls = []

    def report(epoch: int, metrics: dict) -> None:
        calls.append(epoch)
        raise Stop

    with pytest.raises(Stop):
        train(config_from_dict(tiny_config(model={"name": "airnet"}, data={"subset": 400}, train={"epochs": 5})), report=report)
    assert calls == [1]


@pytest.mark.slow  # (seconds: kept out of the fast subset)
def test_divergence_is_a_clear_error() -> None:
    cfg = config_from_dict(tiny_config(model={"name": "rescnn"}, data={"subset": 600}, optimizer={"lr": 10.0, "momentum": 0.99},
                                       train={"epochs": 3}))
    with pytest.raises(TrainingDiverged, match=r"training loss became (nan|inf) in epoch [12] \(lr [\d.]+\); training stopped"):
        train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adam", "adamw", "radam"])
def test_other_optimizers_and_schedules_train(name: str) -> None:
    cfg = config_from_dict(tiny_config(optimizer={"name": name, "lr": 2e-3}, train={"epochs": 1},
                                       schedule={"name": "onecycle", "warmup_epochs": 0.5},
                                       augment={"policy": "randaugment", "cutmix_alpha": 1.0}))
    assert train(cfg).val_acc is not None


@pytest.mark.slow
def test_retrain_cli_writes_config_metrics_and_weights(tmp_path: Path) -> None:
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(train={"epochs": 1})))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "hps", "retrain", str(cfg_path), "--test", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "test_acc" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 1 and 0.0 <= metrics["test_acc"] <= 1.0
    resolved = load_config(out / "config.yaml")
    assert resolved.data.path is not None and resolved.train.epochs == 1
    state = torch.load(out / "model.pt")
    assert state["head.3.weight"].shape == (10, 128)  # 512 * width 0.25
    # the resolved config retrains to the same numbers with the trainer alone
    again = subprocess.run([sys.executable, "-m", "hps.trainers", str(out / "config.yaml"), "--out", str(tmp_path / "r2")],
                           capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["val_acc"] == metrics["val_acc"]


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
@pytest.mark.slow  # (seconds: kept out of the fast subset)
def test_retrain_writes_weights_at_the_exports_storage_dtype(tmp_path: Path, dtype: str) -> None:
    from hps.trainers import retrain, saved_bytes, state_dict_at
    from hps.trainers.loop import score

    raw = tiny_config(train={"epochs": 1})
    raw["provenance"] = {"storage_dtype": dtype}  # as hps export writes it (the budget's storage dtype)
    (tmp_path / "best.yaml").write_text(yaml.safe_dump(raw))
    result = retrain(tmp_path / "best.yaml", tmp_path / "run")
    stored = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert stored["head.3.weight"].dtype == {"fp16": torch.float16, "int8": torch.int8}[dtype]
    assert (tmp_path / "run" / "model.pt").stat().st_size == saved_bytes(state_dict_at(result.model, dtype))
    assert abs(score(result.config, stored)["val_acc"] - result.val_acc) <= 0.02  # rounding moves a few images at most


def test_bad_config_in_cli_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("optimizer: {name: lion}\n")
    proc = subprocess.run([sys.executable, "-m", "hps", "retrain", str(tmp_path / "c.yaml")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "optimizer.name: 'lion' is not allowed; choose one of sgd, adam, adamw, radam" in proc.stderr


@pytest.mark.slow
def test_retrain_refuses_other_data_unless_told(tmp_path: Path, mini_npz: Path) -> None:
    """An export records its data (path, sha256, split); retraining it on other data is refused,
    saying what differs, unless --allow-data-mismatch says so."""
    import numpy as np

    from hps.trainers import data_identity, dump_config, pin_data

    cfg = pin_data(config_from_dict(tiny_config(train={"epochs": 1}, data={"subset": 500})))
    exported = tmp_path / "best.yaml"
    dump_config(cfg.replace("data", path=str(tmp_path / "elsewhere.npz")), exported,
                extra={"provenance": {"data": data_identity(cfg)}})
    other = tmp_path / "other.npz"
    raw = dict(np.load(mini_npz))
    raw["y_train"] = raw["y_train"][::-1].copy()
    np.savez(other, **raw)
    env = {**__import__("os").environ, "HPS_DATA": str(other)}
    cmd = [sys.executable, "-m", "hps", "retrain", str(exported), "--out", str(tmp_path / "r")]
    refused = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "elsewhere.npz: not found, and HPS_DATA" in refused.stderr and "not the recorded" in refused.stderr
    assert "--allow-data-mismatch" in refused.stderr
    allowed = subprocess.run([*cmd, "--allow-data-mismatch"], capture_output=True, text=True, cwd=REPO, env=env)
    assert allowed.returncode == 0, allowed.stderr
    written = load_config(tmp_path / "r" / "config.yaml")  # the result records the data it really ran on
    assert written.data.path == str(other) and written.data.sha256 != cfg.data.sha256
    # the very file it was made on, found through HPS_DATA at another path: no complaint
    env["HPS_DATA"] = str(mini_npz)
    same = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert same.returncode == 0, same.stderr


class MemoryCheckpoint:
    """The trainer's checkpoint hook, kept in memory (bytes, as a store would hold them)."""

    def __init__(self, saved: bytes | None = None) -> None:
        self.saved, self.epochs = saved, []

    def load(self):
        import io

        return None if self.saved is None else torch.load(io.BytesIO(self.saved), weights_only=True)

    def after_epoch(self, epoch, state):
        import io

        buf = io.BytesIO()
        torch.save(state(), buf)
        self.saved = buf.getvalue()
        self.epochs.append(epoch)


def _strip(history):
    return [{k: v for k, v in m.items() if k not in ("epoch_seconds", "images_per_s")} for m in history]


@pytest.mark.slow
def test_a_resumed_run_ends_as_an_uninterrupted_one() -> None:
    """Killed after epoch 2 (the last checkpoint), resumed: epochs 3-4 only, and the same metrics
    and weights as a run that was never stopped (CPU, fixed seed; dropout, mixup and cutout draw
    from every RNG the state carries)."""
    cfg = config_from_dict(tiny_config(train={"epochs": 4}, model={"dropout": 0.2},
                                       augment={"strength": 1.0, "mixup_alpha": 0.2}))
    whole = train(cfg)

    first = MemoryCheckpoint()
    with pytest.raises(Killed):
        train(cfg, kill_at(3), checkpoint=first)
    assert first.epochs == [1, 2]
    seen: list[int] = []
    resumed = train(cfg, lambda e, m: seen.append(e), checkpoint=MemoryCheckpoint(first.saved))
    assert seen == [3, 4]
    assert _strip(resumed.history) == _strip(whole.history)
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


@pytest.mark.slow
def test_a_checkpoint_from_another_kind_of_device_resumes() -> None:
    """A retry that lands on another kind of device (a CUDA trial's retry on a CPU worker): the
    augmentation generator's saved state is a CUDA one (16 bytes, not the CPU's 5,056), which
    set_state refused. The retry resumes at the next epoch with a generator seeded from the step."""
    cfg = config_from_dict(tiny_config(train={"epochs": 2}, augment={"strength": 1.0}))

    first = MemoryCheckpoint()
    with pytest.raises(Killed):
        train(cfg, kill_at(2), checkpoint=first)
    import io

    saved = first.load()
    assert saved["rng"]["device"] == "cpu"
    saved["rng"].update(device="cuda", augment=torch.zeros(16, dtype=torch.uint8))  # as a CUDA generator saves it
    buf = io.BytesIO()
    torch.save(saved, buf)
    seen: list[int] = []
    resumed = train(cfg, lambda e, m: seen.append(e), checkpoint=MemoryCheckpoint(buf.getvalue()))
    assert seen == [2] and len(resumed.history) == 2


def test_augmix_jsd_trains_on_three_views() -> None:
    """augment.augmix_jsd: each step sees the clean image and two AugMix views; the loss is the
    clean CE plus 12 x JSD (tests/trainers/test_augment.py checks the term); the meter counts 3x
    the activations."""
    from hps.trainers import measure

    base = tiny_config(train={"epochs": 1}, data={"subset": 500, "val_fraction": 0.2},
                       augment={"policy": "augmix", "strength": 0.5})
    with_jsd = config_from_dict({**base, "augment": {**base["augment"], "augmix_jsd": True}})
    result = train(with_jsd)
    assert len(result.history) == 1 and result.history[0]["train_loss"] > 0
    from hps.trainers.meter import _OPT_STATES

    plain, jsd = measure(config_from_dict(base)), measure(with_jsd)
    weights_mb = plain.params * 4 * (2 + _OPT_STATES[with_jsd.optimizer.name]) / 2**20
    assert jsd.train_memory_mb - weights_mb == pytest.approx(3 * (plain.train_memory_mb - weights_mb), abs=0.3)


def test_the_model_trains_and_evaluates_at_data_image_size() -> None:
    """``data.image_size: 64``: every image the model sees, in training and in evaluation, is 64 px."""
    seen: set[tuple[int, ...]] = set()

    def hook(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3:
            seen.add(tuple(args[0].shape[1:]))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        result = train(config_from_dict(tiny_config(model={"name": "branchnet", "width": 0.125, "depth": 0.34},
                                                    data={"subset": 200, "image_size": 64},
                                                    train={"epochs": 1, "batch_size": 40})))
    finally:
        handle.remove()
    assert seen == {(3, 64, 64)}
    assert result.config.data.image_size == 64  # the result records the size it trained at


@pytest.mark.slow  # (seconds: kept out of the fast subset)
def test_a_finetune_stage_trains_at_its_lr_and_alpha(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last ``finetune_epochs`` train at the fine-tuning lr and mix with its alpha (the trainer's
    own mix is recorded as it is called)."""
    import importlib

    module = importlib.import_module("hps.trainers.loop")  # the module; ``trainers.train`` is the function
    alphas: dict[float, int] = {}
    real_mix = module.mix

    def recording_mix(x, y, cfg, rng, gen):  # type: ignore[no-untyped-def]
        alphas[cfg.mixup_alpha] = alphas.get(cfg.mixup_alpha, 0) + 1
        return real_mix(x, y, cfg, rng, gen)

    monkeypatch.setattr(module, "mix", recording_mix)
    cfg = config_from_dict(tiny_config(data={"subset": 500, "val_fraction": 0.2}, train={"epochs": 3},
                                       schedule={"name": "cosine", "finetune_epochs": 1, "finetune_lr": 0.01,
                                                 "finetune_eta_min": 0.001},
                                       augment={"mixup_alpha": 0.1, "finetune_mixup_alpha": 0.5}))
    history = train(cfg).history
    assert alphas == {0.1: 8, 0.5: 4}  # 400 images in batches of 100: 4 steps an epoch
    # the lr of each epoch's last step (3 of 4): the main cosine spans epochs 1-2, the stage epoch 3
    assert history[1]["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 1.75 / 2)))
    assert history[2]["lr"] == pytest.approx(0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * 0.75)))


EVAL_BATCHES: list[int] = []


class _Recording(torch.nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            EVAL_BATCHES.append(x.shape[0])
        return self.head(x.mean((2, 3)))


def recording(num_classes: int, in_channels: int) -> torch.nn.Module:
    return _Recording(num_classes, in_channels)


def test_evaluation_runs_at_the_training_batch_size() -> None:
    """Evaluating 1,000 images at once could be a trial's memory peak, above what the meter
    counts for training (branchnet at 128 px: about 10 GiB): evaluation uses the training batch."""
    EVAL_BATCHES.clear()
    raw = tiny_config(data={"subset": 500, "val_fraction": 0.2}, train={"epochs": 1, "batch_size": 40})
    cfg = config_from_dict({**raw, "model": {"name": "tests.trainers.test_train:recording"}})
    train(cfg)
    assert EVAL_BATCHES[-3:] == [40, 40, 20]  # 100 validation images


def test_auto_precision_is_bf16_only_where_the_gpu_runs_it_natively(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch counts emulated bf16 as supported: a T4 (no native bf16) would pick it and run slower."""
    from hps.trainers.device import autocast_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)  # a T4
    assert autocast_dtype("auto", cuda) is None and autocast_dtype("bf16", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100
    assert autocast_dtype("auto", cuda) == torch.bfloat16
