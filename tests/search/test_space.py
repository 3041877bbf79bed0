"""Space files: the shipped ones load; bad ones fail with one line naming file, key, value, allowed."""

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from hps.search.errors import SpaceError
from hps.search.space import load_space, suggest
from tests.conftest import REPO

VALID: dict[str, Any] = {
    "study": {"name": "t", "trials": 4, "sampler": {"name": "tpe"}, "pruner": {"name": "asha"}},
    "base": {"model": {"name": "resnet18", "width": 0.25}, "train": {"epochs": 3}},
    "space": {
        "model.width": {"low": 0.125, "high": 0.5},
        "optimizer.name": {"choices": ["sgd", "adamw"]},
        "optimizer.momentum": {"low": 0.8, "high": 0.99, "when": {"optimizer.name": "sgd"}},
        "schedule.name": {"choices": ["cosine", "multistep"]},
        "schedule.milestones": {"choices": [[1, 2], [2]], "when": {"schedule.name": "multistep"}},
    },
    "budget": {"max_params": 1_000_000, "max_epochs": 3},
}


def write(tmp_path: Path, data: Any, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def patched(**changes: Any) -> dict[str, Any]:
    """VALID with dotted-path changes; a value of ... deletes the key."""
    data = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        *parents, last = dotted.split("/")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        if value is ...:
            node.pop(last)
        else:
            node[last] = value
    return data


def test_valid_space_loads(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, VALID))
    assert space.name == "t" and space.directions == ["maximize"] and not space.multi_objective


@pytest.mark.parametrize("path", sorted((REPO / "spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_load(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPS_DATA")  # classes from each space's own dataset
    space = load_space(path)
    assert space.name == path.stem  # a study is named after its file
    if path.stem not in ("quickstart", "own_model", "own_loop"):  # the examples of a user's own network and loop
        assert space.warm_start, "report spaces start from the report's hand-found config"


def test_suggest_respects_conditions(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, VALID))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    seen = set()
    for _ in range(30):
        trial = study.ask()
        cfg = suggest(space, trial)
        assert ("optimizer.momentum" in trial.params) == (cfg.optimizer.name == "sgd")
        assert ("schedule.milestones" in trial.params) == (cfg.schedule.name == "multistep")
        if cfg.schedule.name == "multistep":
            assert cfg.schedule.milestones in ([1.0, 2.0], [2.0])  # lists stored as JSON text, decoded back
        seen.add((cfg.optimizer.name, cfg.schedule.name))
        study.tell(trial, 0.0)
    assert len(seen) == 4


BAD = [
    ("study/name", ..., "s.yaml: study.name: required key is missing"),
    ("study/name", "my study", "s.yaml: study.name: 'my study': String should match pattern"),
    ("study/metric", "val_loss", "s.yaml: study: metric is not a study key; the objective is the top-level objectives list"),
    ("study/direction", "minimize", "s.yaml: study: direction is not a study key; the objective is the top-level objectives"),
    ("study/trials", 0, "s.yaml: study.trials: 0 is out of range; allowed >= 1 and <= 100000"),
    ("study/trials", 2.5, "s.yaml: study.trials: 2.5 is not allowed; expected an integer"),
    ("study/timeout", -5, "s.yaml: study.timeout: -5 is out of range; allowed > 0"),
    ("study/sampler", {"name": "bayes"}, "s.yaml: study.sampler: name 'bayes' is not allowed; choose one of tpe, random, cmaes, nsga2, gp"),
    ("study/sampler", {"name": "tpe", "args": {"n_startup": 3}}, "s.yaml: study.sampler: tpe has no argument 'n_startup' that a space file can set; allowed: consider_prior"),
    ("study/sampler", {"name": "tpe", "args": {"n_startup_trials": "3"}}, "s.yaml: study.sampler: tpe.n_startup_trials: '3' is not allowed; expected int"),
    ("study/sampler", {"name": "tpe", "args": {"gamma": 0.2}}, "s.yaml: study.sampler: tpe has no argument 'gamma' that a space file can set"),
    ("study/sampler", {"name": "random", "args": {"seed": 3}}, "s.yaml: study.sampler: random: seed is set by hps (from study.seed and the budget); remove it"),
    ("study/sampler", {"name": "cmaes", "args": {"popsize": -2}}, "s.yaml: study.sampler: cmaes with args {popsize: -2} fails: "),
    ("study/pruner", {"name": "patient"}, "s.yaml: study.pruner: name 'patient' is not allowed; choose one of asha, hyperband, median, none"),
    ("study/pruner", {"name": "asha", "args": {"eta": 3}}, "s.yaml: study.pruner: asha has no argument 'eta' that a space file can set; allowed: min_resource, reduction_factor"),
    ("study/pruner", {"name": "asha", "args": {"reduction_factor": 1}}, "s.yaml: study.pruner: asha with args {reduction_factor: 1} fails: The value of `reduction_factor` is 1, but must be `reduction_factor >= 2`"),
    ("study/pruner", {"name": "median", "args": {"n_warmup_steps": -1}}, "s.yaml: study.pruner: median with args {n_warmup_steps: -1} fails: Number of warmup steps cannot be negative"),
    ("study/pruner", {"name": "none", "args": {"x": 1}}, "s.yaml: study.pruner: none has no argument 'x' that a space file can set; allowed: none"),
    ("study/seed", "x", "s.yaml: study.seed: 'x' is not allowed; expected an integer"),
    ("studdy", {}, "s.yaml: studdy: unknown key; allowed keys: study, base, fixed, space, budget, objectives, warm_start"),
    ("space/optimizer.lrr", {"low": 0.1, "high": 1}, "s.yaml: space.optimizer.lrr: not a trainer key; allowed: model.name"),
    ("space/optimizer.lr", {"lo": 0.1, "high": 1}, "s.yaml: space.optimizer.lr.lo: unknown key; allowed keys: type, low, high, log, step, choices, when"),
    ("space/optimizer.lr", 0.1, "s.yaml: space.optimizer.lr: expected a mapping of keys, got 0.1"),
    ("space/optimizer.lr", {"low": 0.5, "high": 0.1}, "s.yaml: space.optimizer.lr: low 0.5 > high 0.1"),
    ("space/optimizer.lr", {"low": 0, "high": 0.1, "log": True}, "s.yaml: space.optimizer.lr: log needs low > 0, got low 0"),
    ("space/optimizer.lr", {"low": 0.01, "high": 0.1, "log": "yes"}, "s.yaml: space.optimizer.lr.log: 'yes' is not allowed; expected true or false"),
    ("space/optimizer.lr", {"low": 0.01, "high": 0.1, "log": True, "step": 0.01}, "s.yaml: space.optimizer.lr: log and step cannot be combined"),
    ("space/optimizer.lr", {"low": 0.01, "high": 0.1, "step": 0.04}, "s.yaml: space.optimizer.lr: step 0.04 does not divide high - low (0.09)"),
    ("space/optimizer.lr", {"low": 0.01}, "s.yaml: space.optimizer.lr: type 'float' needs low and high"),
    ("space/optimizer.lr", {"type": "beta", "low": 0, "high": 1}, "s.yaml: space.optimizer.lr.type: 'beta' is not allowed; choose one of float, int, categorical, fit"),
    ("space/optimizer.lr", {"low": 0.0, "high": 0.1}, "s.yaml: space.optimizer.lr: 0.0 is out of range; allowed > 0 and <= 10"),
    ("space/optimizer.lr", {"low": 0.1, "high": 20}, "s.yaml: space.optimizer.lr: 20.0 is out of range; allowed > 0 and <= 10"),
    ("space/train.batch_size", {"type": "int", "low": 32.5, "high": 128}, "s.yaml: space.train.batch_size: an integer key needs integer low, high and step, got 32.5, 128"),
    ("space/train.epochs", {"type": "float", "low": 2, "high": 3}, "s.yaml: space.train.epochs: type 'float' is not allowed for an integer key; use type 'int' or leave type out"),
    ("space/train.epochs", {"low": 1, "high": 3, "step": 0.5}, "s.yaml: space.train.epochs: an integer key needs integer low, high and step, got 1, 3, 0.5"),
    ("space/model.width", {"type": "int", "low": 0.5, "high": 1}, "s.yaml: space.model.width: type 'int' needs integer low, high and step, got 0.5, 1"),
    ("space/optimizer.nesterov", {"low": 0, "high": 1}, "s.yaml: space.optimizer.nesterov: a bool key takes choices only"),
    ("space/optimizer.nesterov", {"choices": [True, "no"]}, "s.yaml: space.optimizer.nesterov: 'no' is not allowed; expected true or false"),
    ("space/optimizer.name", {"choices": []}, "s.yaml: space.optimizer.name: choices is empty; give at least one value"),
    ("space/optimizer.name", {"choices": "sgd"}, "s.yaml: space.optimizer.name.choices: 'sgd' is not allowed; expected a list of values"),
    ("space/optimizer.name", {"choices": ["sgd"], "low": 1}, "s.yaml: space.optimizer.name: a categorical takes choices only"),
    ("space/optimizer.name", {"choices": ["sgd", "lion"]}, "s.yaml: space.optimizer.name: 'lion' is not allowed; choose one of sgd, adam, adamw, radam"),
    ("space/model.name", {"choices": ["resnet18", "vit"]}, "s.yaml: space.model.name: 'vit' is not allowed; choose one of airnet, branchnet, efficientnet_b0"),
    ("space/schedule.name", {"choices": ["cosine", "poly"]}, "s.yaml: space.schedule.name: 'poly' is not allowed; choose one of none, step, multistep, cosine, sgdr, onecycle"),
    ("space/augment.policy", {"choices": ["basic", "cutout"]}, "s.yaml: space.augment.policy: 'cutout' is not allowed; choose one of none, basic, randaugment"),
    ("space/augment.strength", {"low": 0.5, "high": 1.5}, "s.yaml: space.augment.strength: 1.5 is out of range; allowed >= 0 and <= 1"),
    ("space/data.subset", {"choices": [1000, 2000]}, "s.yaml: space.data.subset: not searchable (it decides the data or the machine"),
    ("space/train.device", {"choices": ["cpu"]}, "s.yaml: space.train.device: not searchable"),
    ("space/optimizer.momentum", {"low": 0.8, "high": 0.9, "when": {"optim.name": "sgd"}}, "s.yaml: space.optimizer.momentum.when.optim.name: not a trainer key"),
    ("space/optimizer.momentum", {"low": 0.8, "high": 0.9, "when": "sgd"}, "s.yaml: space.optimizer.momentum.when: 'sgd' is not allowed; expected a mapping of earlier keys to values"),
    ("space/optimizer.momentum", {"low": 0.8, "high": 0.9, "when": {"optimizer.name": []}}, "s.yaml: space.optimizer.momentum.when.optimizer.name: [] is not allowed; give a value"),
    ("space/optimizer.momentum", {"low": 0.8, "high": 0.9, "when": {"optimizer.momentum": 0.9}}, "s.yaml: space.optimizer.momentum.when.optimizer.momentum: a key cannot depend on itself"),
    ("space/optimizer.momentum", {"low": 0.8, "high": 0.9, "when": {"schedule.name": "cosine"}, "x": 1}, "s.yaml: space.optimizer.momentum.x: unknown key"),
    ("space/schedule.milestones", {"choices": [[1]], "when": {"schedule.name": "poly"}}, "s.yaml: space.schedule.milestones.when.schedule.name: 'poly' is not allowed; choose one of none"),
    ("space/optimizer.lr", {"type": "fit", "low": 0.1, "high": 1}, "s.yaml: space.optimizer.lr: type 'fit' is only for model.width"),
    ("budget/max_parms", 5, "s.yaml: budget.max_parms: unknown key; allowed keys: max_params, max_model_bytes, storage_dtype"),
    ("budget/max_params", -5, "s.yaml: budget.max_params: -5 is out of range; allowed > 0"),
    ("budget/max_params", "5M", "s.yaml: budget.max_params: '5M' is not allowed; expected an integer"),
    ("budget/storage_dtype", "fp8", "s.yaml: budget.storage_dtype: 'fp8' is not allowed; choose one of fp32, fp16, bf16, int8"),
    ("budget", {"max_macs": 10**9, "max_flops": 10**9}, "s.yaml: budget: max_macs 1000000000 and max_flops 1000000000 disagree (FLOPs = 2 x MACs); give one of them"),
    ("budget/max_macs", 100, "s.yaml: budget: smallest config (resnet18 at width 0.125, depth 1) has MACs 8.87M > max_macs 100"),
    ("budget/max_params", 100_000, "s.yaml: budget: smallest config (resnet18 at width 0.125, depth 1) has params 176k > max_params 100k"),
    ("budget/max_epochs", 2, "s.yaml: base.train.epochs: 3 breaks budget.max_epochs 2; lower one of them"),
    ("base", {"model": {"name": "resnet18", "widht": 1}}, "s.yaml: base: model.widht: unknown key; allowed keys: name, width, depth, dropout"),
    ("base", 3, "s.yaml: base: 3 is not allowed; expected a retrain YAML's name or a mapping of trainer sections"),
    ("base", {"data": {"val_fraction": 0}}, "s.yaml: base.data.val_fraction: 0 leaves no validation split to score trials on"),
    ("base", "missing.yaml", "missing.yaml: file not found"),
    ("fixed", {"train.epochz": 3}, "s.yaml: fixed: train.epochz: not a trainer key; allowed: model.name"),
    ("fixed", {"train.epochs": 0}, "s.yaml: fixed: train.epochs: 0 is out of range; allowed >= 1 and <= 10000"),
    ("fixed", ["train.epochs"], "s.yaml: fixed: expected a mapping of keys, got [train.epochs]"),
    ("objectives", ["val_acc", "latency"], "s.yaml: objectives: [val_acc, latency] is not allowed; the second objective must be one of params, macs, flops, model_bytes"),
    ("objectives", ["top1"], "s.yaml: objectives: [top1] is not allowed; the first objective must be one of val_acc, val_loss"),
    ("objectives", ["val_acc", "params", "macs"], "s.yaml: objectives: [val_acc, params, macs] is not allowed; give 1 or 2 objectives, got 3"),
    ("objectives", ["val_acc", "params"], "s.yaml: study.pruner: 'asha' cannot prune a study of 2 objectives (Optuna prunes single-objective studies only)"),
    ("warm_start", [{"optimizer.lr": 0.1}], "s.yaml: warm_start[0].optimizer.lr: not a searched key; searched: model.width"),
    ("warm_start", [{"model.width": 2.0}], "s.yaml: warm_start[0].model.width: 2.0 lies outside the space (float in [0.125, 0.5])"),
    ("warm_start", [{"optimizer.name": "adam"}], "s.yaml: warm_start[0].optimizer.name: 'adam' lies outside the space (choices 'sgd', 'adamw')"),
    ("warm_start", [3], "s.yaml: warm_start: warm_start[0]: 3 is not allowed; expected a retrain YAML's file name"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_bad_space_is_one_clear_line(tmp_path: Path, path: str, value: Any, message: str) -> None:
    with pytest.raises(SpaceError) as info:
        load_space(write(tmp_path, patched(**{path: value})))
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(tmp_path)), text
    assert message in text, text


@pytest.mark.parametrize(("text", "message"), [
    (None, "nope.yaml: file not found"),
    ("study: {name: [\n", "s.yaml: not valid YAML (line 2)"),
    ("- 1\n- 2\n", "s.yaml: expected a mapping with keys study, base, fixed, space"),
])
def test_unreadable_space_files(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / "nope.yaml" if text is None else write(tmp_path, text)
    with pytest.raises(SpaceError, match=None) as info:
        load_space(path)
    assert message in str(info.value)


def test_fit_needs_a_size_budget(tmp_path: Path) -> None:
    data = patched(**{"space/model.width": {"type": "fit", "low": 0.1, "high": 1.0}, "budget": {"max_epochs": 3}})
    with pytest.raises(SpaceError, match=r"space\.model\.width: type 'fit' needs a size budget"):
        load_space(write(tmp_path, data))


def test_when_must_follow_its_key(tmp_path: Path) -> None:
    data = copy.deepcopy(VALID)
    data["space"] = {"optimizer.momentum": {"low": 0.8, "high": 0.9, "when": {"optimizer.name": "sgd"}},
                     "optimizer.name": {"choices": ["sgd", "adam"]}}
    with pytest.raises(SpaceError, match=r"space\.optimizer\.momentum\.when\.optimizer\.name: must come before optimizer\.momentum"):
        load_space(write(tmp_path, data))


def test_a_range_takes_its_keys_type(tmp_path: Path) -> None:
    """train.epochs: {low: 2, high: 5} is an int range (it was a float range whose every trial failed)."""
    data = patched(**{"space/train.epochs": {"low": 2, "high": 5}, "budget/max_epochs": 5})
    space = load_space(write(tmp_path, data))
    assert space.spec.space["train.epochs"].kind == "int"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1), direction="maximize")
    epochs = set()
    for _ in range(20):
        trial = study.ask()
        epochs.add(suggest(space, trial).train.epochs)
        assert isinstance(trial.params["train.epochs"], int)
        study.tell(trial, 0.0)
    assert epochs == {2, 3, 4, 5}


def test_smallest_config_counts_conditional_ranges(tmp_path: Path) -> None:
    """A width range under `when` can make the space feasible although the base width is not."""
    data = patched(**{"base/model/width": 1.0, "budget/max_params": 5_000_000,
                      "space/model.width": {"low": 0.25, "high": 0.5, "when": {"optimizer.name": "sgd"}},
                      "space/optimizer.name": ...})
    data["space"] = {"optimizer.name": {"choices": ["sgd", "adamw"]}, **data["space"]}
    space = load_space(write(tmp_path, data))
    assert space.spec.space["model.width"].when == {"optimizer.name": "sgd"}
    data["space"]["model.width"] = {"low": 0.9, "high": 1.0, "when": {"optimizer.name": "sgd"}}
    with pytest.raises(SpaceError, match=r"smallest config \(resnet18 at width 0\.9, depth 1\) has params"):
        load_space(write(tmp_path, data))


def test_warm_start_keeps_a_parameter_whose_condition_is_fixed_in_the_base(tmp_path: Path) -> None:
    data = patched(**{"fixed": {"schedule.name": "sgdr"}, "space/schedule.name": ..., "space/schedule.milestones": ...,
                      "space/schedule.t0": {"choices": [10, 25], "when": {"schedule.name": "sgdr"}},
                      "warm_start": [{"schedule.t0": 25, "model.width": 0.25}]})
    space = load_space(write(tmp_path, data))
    assert space.warm_start == [("warm_start[0]", {"schedule.t0": 25, "model.width": 0.25})]


def test_objective_is_the_first_objective(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, patched(objectives=["val_loss"])))
    assert space.metric == "val_loss" and space.directions == ["minimize"]


def test_image_size_is_searchable_and_the_smallest_config_takes_the_least(tmp_path: Path) -> None:
    """``data.image_size`` is the model's input side (the same images, scored alike), so a space
    may search it, unlike the other data keys; the budget check counts its smallest value."""
    from hps.trainers import config_from_dict, measure

    base = {"model": {"name": "resnet18", "width": 0.25}, "data": {"image_size": 64}, "train": {"epochs": 2}}
    macs_32 = measure(config_from_dict({**base, "data": {"image_size": 32}})).macs
    data = {"study": {"name": "t", "trials": 4}, "base": base, "budget": {"max_macs": macs_32 + 1},
            "space": {"data.image_size": {"choices": [32, 64]}}}
    space = load_space(write(tmp_path, data))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sizes = {suggest(space, study.ask()).data.image_size for _ in range(12)}
    assert sizes == {32, 64}
    data["space"]["data.image_size"] = {"choices": [64, 96]}
    with pytest.raises(SpaceError, match=r"smallest config \(resnet18 at width 0\.25, depth 1, 64 px\) has MACs"):
        load_space(write(tmp_path, data))


# --set: dotted overrides on top of a space file or dict, validated as the file is


def test_overrides_set_study_fixed_space_and_budget_keys(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    space = load_space(path, ["study.trials=8", "fixed.train.epochs=2", "space.model.width.high=0.3",
                              "budget.max_params=900000", "study.sampler.name=random"])
    assert space.spec.study.trials == 8 and space.base.train.epochs == 2
    assert space.spec.space["model.width"].high == 0.3 and space.budget.max_params == 900_000
    assert space.spec.study.sampler.name == "random"
    recorded = space.to_dict()  # what the study stores as hps:space
    assert recorded["overrides"] == {"study.trials": 8, "fixed.train.epochs": 2, "space.model.width.high": 0.3,
                                     "budget.max_params": 900000, "study.sampler.name": "random"}
    assert recorded["study"]["trials"] == 8 and recorded["base"]["train"]["epochs"] == 2
    same = load_space(VALID, {"study.trials": 8, "space.optimizer.momentum": None})  # a dict; null stops searching a key
    assert same.spec.study.trials == 8 and "optimizer.momentum" not in same.spec.space


@pytest.mark.parametrize(("item", "message"), [
    ("study.trials=abc", "s.yaml: study.trials: 'abc' is not allowed; expected an integer"),
    ("study.trails=8", "s.yaml: study.trails: unknown key; allowed keys: name, trials, timeout, seed, sampler, pruner"),
    ("budget.max_params=-5", "s.yaml: budget.max_params: -5 is out of range"),
    ("studdy.trials=8", "s.yaml: --set studdy.trials: 'studdy' is not a space section; allowed: study, base, fixed, space"),
    ("fixed.train.epoch=2", "s.yaml: --set fixed.train.epoch: 'train.epoch' is not a trainer key; allowed: model.name"),
    ("fixed.train.epochs=0", "s.yaml: fixed: train.epochs: 0 is out of range"),
    ("space.optimizer.lr.high=0.1", "s.yaml: --set space.optimizer.lr.high: optimizer.lr is not searched in this space"),
    ("space.model.width.hihg=0.3", "s.yaml: space.model.width.hihg: unknown key; allowed keys: type, low, high"),
    ("study.trials", "--set 'study.trials': expected KEY=VALUE"),
    ("study=3", "s.yaml: --set study: name a key inside study, e.g. study.trials=8"),
    ("objectives=[val_auc]", "s.yaml: objectives: [val_auc] is not allowed; the first objective must be one of val_acc, val_loss"),
])
def test_a_bad_override_is_one_line_naming_the_key(tmp_path: Path, item: str, message: str) -> None:
    with pytest.raises(SpaceError) as e:
        load_space(write(tmp_path, VALID), [item])
    text = str(e.value).replace(f"{tmp_path}/", "")
    assert text.startswith(message) and "\n" not in text, text


def test_paths_in_a_space_resolve_against_its_file_wherever_it_runs(tmp_path: Path, mini_npz: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy in another folder keeps its base, warm start and data path: they are relative to the file."""
    folder = tmp_path / "project" / "spaces"
    (folder / "seeds").mkdir(parents=True)
    (folder / "data").mkdir()
    (folder / "data" / "mine.npz").write_bytes(mini_npz.read_bytes())
    write(folder / "seeds", {"model": {"name": "airnet", "width": 0.25}, "data": {"path": "../data/mine.npz"}}, "seed.yaml")
    data = {**VALID, "base": "seeds/seed.yaml", "fixed": {"train.epochs": 3}, "warm_start": ["seeds/seed.yaml"]}
    data["space"] = {"model.width": {"low": 0.125, "high": 0.5}}
    path = write(folder, data)
    monkeypatch.chdir(tmp_path)
    space = load_space(Path("project/spaces/s.yaml"))
    assert space.base.data.path == str((folder / "data" / "mine.npz").resolve())
    assert space.warm_start == [("seeds/seed.yaml", {"model.width": 0.25})]
    inline = load_space(path, ["fixed.data.path=data/mine.npz"])
    assert inline.base.data.path == str((folder / "data" / "mine.npz").resolve())


def test_a_key_written_twice_is_refused_at_any_depth(tmp_path: Path) -> None:
    """YAML keeps the last of two equal keys: a second budget.max_params loosened the budget silently."""
    text = "study: {name: t}\nbudget:\n  max_params: 100000\n  max_epochs: 3\n  max_params: 9000000\n"
    with pytest.raises(SpaceError, match=r"s\.yaml: not valid YAML \(line 5\): key 'max_params' is written twice in one "
                                         r"mapping \(lines 3 and 5\); keep one$"):
        load_space(write(tmp_path, text))
    nested = "study: {name: t}\nspace:\n  optimizer.lr: {low: 0.01, high: 0.1, low: 0.001}\n"
    with pytest.raises(SpaceError, match=r"key 'low' is written twice"):
        load_space(write(tmp_path, nested))


@pytest.mark.parametrize(("when", "message"), [
    ({"optimizer.name": "radam"}, "when.optimizer.name: 'radam' never holds: optimizer.name is searched over choices 'sgd', 'adamw'"),
    ({"optimizer.name": ["adam", "radam"]}, "when.optimizer.name: [adam, radam] never holds: optimizer.name is searched"),
    ({"train.epochs": 7}, "when.train.epochs: 7 never holds: train.epochs is 3 (not searched)"),
])
def test_a_condition_that_can_never_hold_is_refused(tmp_path: Path, when: dict[str, Any], message: str) -> None:
    data = patched(**{"space/optimizer.momentum": {"low": 0.8, "high": 0.99, "when": when}})
    with pytest.raises(SpaceError) as e:
        load_space(write(tmp_path, data))
    assert message in str(e.value) and "so the key would never be searched" in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize(("sampler", "module"), [("cmaes", "cmaes"), ("gp", "scipy")])
def test_every_listed_sampler_runs_and_a_missing_package_is_one_line(tmp_path: Path, sampler: str, module: str) -> None:
    """Both are installed with hps (cmaes and gp were listed, but their packages were not). Where a
    package is missing anyway (a trimmed environment), the space says which, in one line."""
    data = patched(**{"study/sampler": {"name": sampler}})
    assert load_space(write(tmp_path, data)).spec.study.sampler.name == sampler  # rehearsed: 4 trials drawn
    code = (f"import sys; sys.modules[{module!r}] = None\n"  # as if not installed
            "from hps import load_space\ntry:\n    load_space(sys.argv[1])\nexcept Exception as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.yaml")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (f"{tmp_path / 's.yaml'}: study.sampler: {sampler} needs the package {module!r}, which is "
                                  f"not installed: pip install {module}, or choose another sampler")


@pytest.mark.parametrize(("space", "message"), [
    ({"optimizer.lr": {"low": 0.01, "high": 0.1}, "optimizer.momentum": {"low": 0.8, "high": 0.99, "when": {"optimizer.lr": 0.05}}},
     "s.yaml: space.optimizer.momentum.when.optimizer.lr: optimizer.lr is searched over a continuous range (float in "
     "[0.01, 0.1]): no trial draws exactly 0.05, so the condition cannot select; condition on a key searched over "
     "choices, an int range or a float range with step"),
    ({"optimizer.name": {"choices": ["sgd", "adamw"]},
      "optimizer.momentum": {"low": 0.8, "high": 0.99, "when": {"optimizer.name": ["sgd", "radam"]}}},
     "s.yaml: space.optimizer.momentum.when.optimizer.name: 'radam' never holds: optimizer.name is searched over "
     "choices 'sgd', 'adamw'; drop it from the list"),
    ({"train.epochs": {"low": 2, "high": 3}, "optimizer.momentum": {"low": 0.8, "high": 0.99, "when": {"train.epochs": 5}}},
     "s.yaml: space.optimizer.momentum.when.train.epochs: 5 never holds: train.epochs is searched over int in [2, 3], "
     "so the key would never be searched"),
    ({"optimizer.lr": {"low": 0.01, "high": 0.1, "step": 0.01},
      "optimizer.momentum": {"low": 0.8, "high": 0.99, "when": {"optimizer.lr": 0.055}}},
     "s.yaml: space.optimizer.momentum.when.optimizer.lr: 0.055 never holds: optimizer.lr is searched over float in "
     "[0.01, 0.1] step 0.01, so the key would never be searched"),
    ({"model.width": {"type": "fit", "low": 0.125, "high": 0.5},
      "optimizer.momentum": {"low": 0.8, "high": 0.99, "when": {"model.width": 0.25}}},
     "s.yaml: space.optimizer.momentum.when.model.width: model.width is fitted to the budget (type fit), not drawn, "
     "so a condition on it cannot select; condition on a key searched over choices"),
], ids=["continuous-range", "one-value-not-a-choice", "outside-an-int-range", "off-the-step-grid", "fitted"])
def test_a_condition_that_cannot_select_is_refused_before_any_trial(tmp_path: Path, space: dict[str, Any],
                                                                    message: str) -> None:
    """`when:` selects only on a value a trial can draw: each case is one line naming the file, the
    key and what it is searched over."""
    data = patched(space=space)
    with pytest.raises(SpaceError) as e:
        load_space(write(tmp_path, data))
    assert str(e.value) == f"{tmp_path}/{message}"


def test_a_condition_on_a_stepped_range_or_an_int_selects(tmp_path: Path) -> None:
    data = patched(space={"optimizer.lr": {"low": 0.01, "high": 0.1, "step": 0.01}, "train.epochs": {"low": 2, "high": 3},
                          "optimizer.momentum": {"low": 0.8, "high": 0.99, "when": {"optimizer.lr": 0.05, "train.epochs": 3}}})
    assert load_space(write(tmp_path, data)).spec.space["optimizer.momentum"].when == {"optimizer.lr": 0.05, "train.epochs": 3}
