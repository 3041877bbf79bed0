from pathlib import Path

import pytest

from hps.trainers import ConfigError, TrainConfig, config_from_dict, dump_config, load_config, with_overrides
from hps.trainers.config import flat_keys

CONTRACT = {
    "model": {"name", "width", "dropout"},
    "data": {"dataset", "root", "path", "val_fraction", "subset", "download"},
    "optimizer": {"name", "lr", "momentum", "nesterov", "weight_decay"},
    "schedule": {"name", "warmup_epochs"},
    "augment": {"strength", "policy", "mixup_alpha", "cutmix_alpha"},
    "train": {"epochs", "batch_size", "label_smoothing", "precision", "channels_last", "compile", "compile_mode", "seed",
              "device", "fn", "args", "fn_sha256"},
}


def test_contract_keys_exist() -> None:
    keys = set(flat_keys())
    for section, names in CONTRACT.items():
        assert {f"{section}.{n}" for n in names} <= keys


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = config_from_dict({"model": {"name": "mobilenet_v3", "width": 0.75}, "optimizer": {"lr": "5e-4"},
                            "schedule": {"name": "multistep", "milestones": [70, 90], "gamma": 0.4}})
    assert cfg.optimizer.lr == 5e-4  # YAML 1.1 reads 5e-4 as a string; accepted as a number
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert list(type(load_config(tmp_path / "c.yaml")).model_fields) == list(CONTRACT)


def test_defaults_and_provenance_ignored(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("model: {name: airnet}\nprovenance: {study: s, trial: 3}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.model.name == "airnet" and cfg.train == TrainConfig().train


def test_overrides() -> None:
    cfg = with_overrides(TrainConfig(), {"optimizer.lr": 0.01, "model.width": 2})
    assert cfg.optimizer.lr == 0.01 and cfg.model.width == 2.0
    with pytest.raises(ConfigError, match=r"<overrides>: optimizer\.lrr: not a trainer key; allowed: model\.name"):
        with_overrides(cfg, {"optimizer.lrr": 1})


BAD = [
    ({"modle": {}}, "bad.yaml: modle: unknown key; allowed keys: model, data, optimizer, schedule, augment, train"),
    ({"model": {"widht": 1}}, "bad.yaml: model.widht: unknown key; allowed keys: name, width, depth, dropout"),
    ({"model": {"name": "vgg"}}, "bad.yaml: model.name: 'vgg' is not allowed; choose one of airnet, branchnet, efficientnet_b0"),
    ({"model": {"width": 0}}, "bad.yaml: model.width: 0 is out of range; allowed > 0 and <= 8"),
    ({"model": {"width": "wide"}}, "bad.yaml: model.width: 'wide' is not allowed; expected a number"),
    ({"model": {"dropout": 1.0}}, "bad.yaml: model.dropout: 1.0 is out of range; allowed >= 0 and < 1"),
    ({"optimizer": {"name": "lion"}}, "bad.yaml: optimizer.name: 'lion' is not allowed; choose one of sgd, adam, adamw, radam"),
    ({"optimizer": {"lr": -1}}, "bad.yaml: optimizer.lr: -1 is out of range; allowed > 0 and <= 10"),
    ({"optimizer": {"lr": True}}, "bad.yaml: optimizer.lr: true is not allowed; expected a number"),
    ({"optimizer": {"lr": ".nan"}}, "bad.yaml: optimizer.lr: '.nan' is not allowed; expected a number"),
    ({"optimizer": {"nesterov": "yes"}}, "bad.yaml: optimizer.nesterov: 'yes' is not allowed; expected true or false"),
    ({"schedule": {"name": "poly"}}, "bad.yaml: schedule.name: 'poly' is not allowed; choose one of none, step, multistep"),
    ({"schedule": {"name": "multistep"}}, "bad.yaml: schedule.milestones: [] is not allowed with schedule.name 'multistep'"),
    ({"schedule": {"milestones": [90, 70]}}, "bad.yaml: schedule.milestones: [90, 70] is not allowed; expected increasing"),
    ({"schedule": {"milestones": 70}}, "bad.yaml: schedule.milestones: 70 is not allowed; expected a list"),
    ({"augment": {"policy": "cutout"}}, "bad.yaml: augment.policy: 'cutout' is not allowed; choose one of none, basic, randaugment"),
    ({"augment": {"strength": 1.5}}, "bad.yaml: augment.strength: 1.5 is out of range; allowed >= 0 and <= 1"),
    ({"train": {"epochs": 2.5}}, "bad.yaml: train.epochs: 2.5 is not allowed; expected an integer"),
    ({"train": {"epochs": None}}, "bad.yaml: train.epochs: null is not allowed; expected an integer"),
    ({"train": {"epochs": True}}, "bad.yaml: train.epochs: true is not allowed; expected an integer"),
    ({"train": {"device": 0}}, "bad.yaml: train.device: 0 is not allowed; expected a string"),
    ({"train": {"precision": "fp8"}}, "bad.yaml: train.precision: 'fp8' is not allowed; choose one of auto, fp32, bf16, fp16"),
    ({"train": {"device": "tpu"}}, "bad.yaml: train.device: 'tpu' is not allowed; choose one of auto, cpu, cuda, cuda:N"),
    ({"train": {"compile_mode": "reduce-overhead"}}, "bad.yaml: train.compile_mode: 'reduce-overhead' has no effect unless train.compile is true"),
    ({"train": {"compile": True, "compile_mode": "fast"}}, "bad.yaml: train.compile_mode: 'fast' is not allowed; choose one of default, reduce-overhead"),
    ({"data": {"dataset": "mnist"}}, "bad.yaml: data.dataset: 'mnist' is not allowed; choose one of cifar10, cifar100"),
    ({"data": {"val_fraction": 1}}, "bad.yaml: data.val_fraction: 1 is out of range; allowed >= 0 and < 1"),
    ({"data": {"sha256": "abc"}}, "bad.yaml: data.sha256: 'abc' is not allowed; expected 64 lowercase hex digits"),
    ({"data": {"subset": 5}}, "bad.yaml: data.subset: 5 is out of range; allowed >= 10"),
    ({"schedule": {"finetune_epochs": 5}}, "bad.yaml: schedule.finetune_lr: null is not allowed with schedule.finetune_epochs 5"),
    ({"schedule": {"finetune_epochs": 30, "finetune_lr": 1e-5}}, "bad.yaml: schedule.finetune_epochs: 30 is not allowed with train.epochs 30"),
    ({"schedule": {"finetune_epochs": 2.5}}, "bad.yaml: schedule.finetune_epochs: 2.5 is not allowed; expected an integer"),
    ({"augment": {"policy": "augmix", "augmix_jsd": True, "finetune_mixup_alpha": 0.5}}, "bad.yaml: augment.augmix_jsd: true does not combine with"),
    ({"data": {"image_size": 4}}, "bad.yaml: data.image_size: 4 is out of range; allowed >= 8 and <= 512"),
    ({"data": {"image_size": 128.5}}, "bad.yaml: data.image_size: 128.5 is not allowed; expected an integer"),
    ({"data": "cifar10"}, "bad.yaml: data: expected a mapping of keys, got 'cifar10'"),
    ([1, 2], "bad.yaml: expected a mapping with sections model, data"),
]


@pytest.mark.parametrize(("raw", "message"), BAD)
def test_bad_configs_are_rejected_with_one_line(tmp_path: Path, raw: object, message: str) -> None:
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(str(tmp_path)) and message in text, text


def test_missing_file_and_broken_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("model: {name: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML \(line 2\)"):
        load_config(tmp_path / "broken.yaml")


def test_one_formatter_for_trainer_and_space_errors(tmp_path: Path) -> None:
    """The trainer's config and a space file's base report the same mistake the same way."""
    from hps.search.errors import SpaceError
    from hps.search.space import load_space

    (tmp_path / "c.yaml").write_text("optimizer: {lr: wide}\n")
    with pytest.raises(ConfigError) as trainer_error:
        load_config(tmp_path / "c.yaml")
    (tmp_path / "s.yaml").write_text("study: {name: s}\nbase: c.yaml\n")
    with pytest.raises(SpaceError) as space_error:
        load_space(tmp_path / "s.yaml")
    assert str(trainer_error.value) == f"{tmp_path}/c.yaml: optimizer.lr: 'wide' is not allowed; expected a number"
    assert str(space_error.value) == f"{tmp_path}/s.yaml: base: {trainer_error.value}"


def test_the_documented_contract_lists_every_key() -> None:
    """The module docstring's key list is the public contract: it names every key, no more."""
    import re

    import hps.trainers.config

    doc = re.findall(r"^ +(\w+): +\{([^}]*)\}", hps.trainers.config.__doc__ or "", re.M)
    documented = [f"{s}.{k.strip()}" for s, keys in doc for k in keys.split(",")]
    assert documented == flat_keys()


def test_the_finetune_stage_mixes_with_its_own_alpha() -> None:
    cfg = config_from_dict({"schedule": {"finetune_epochs": 2, "finetune_lr": 5e-6},
                            "augment": {"mixup_alpha": 0.1, "finetune_mixup_alpha": 0.5}, "train": {"epochs": 10}})
    assert [cfg.stage_augment(e).mixup_alpha for e in range(1, 11)] == [0.1] * 8 + [0.5] * 2
    same = config_from_dict({"schedule": {"finetune_epochs": 2, "finetune_lr": 5e-6}, "augment": {"mixup_alpha": 0.1}})
    assert {same.stage_augment(e).mixup_alpha for e in range(1, 31)} == {0.1}  # default: the main alpha
