"""Build for the class of mistakes, not a list: mutations of every shipped space (wrong types,
out-of-range values, missing and unknown keys, conditional edge cases, bad sampler and pruner
arguments, impossible budgets). Each one either loads and runs one trial that does not FAIL, or is
refused before training with one line that names the file and the key.

The fast subset (``-m "not slow"``) checks a fixed sample of the mutations; the slow run checks
every one (about 800 a space) and trains a trial of a fixed sample of those that load (most of
them change study-level settings, so their trials would be the same trial again).
"""

from __future__ import annotations

import copy
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import hps.search.objective as objective_module
from hps.search.algorithms import pruner_class, sampler_class
from hps.search.errors import SpaceError
from hps.search.record import reason
from hps.search.space import load_space
from hps.search.study import open_study
from hps.trainers import TrainConfig, train
from tests.conftest import REPO

SPACES = sorted((REPO / "spaces").glob("*.yaml"))
BAD_VALUES: list[Any] = ["x", -1, 0, 10**12, 0.5, 1.5, True, None, [], {}, [1, "a"]]
Path_ = tuple[Any, ...]
TRIALS_PER_SPACE = 10


def _paths(node: Any, path: Path_ = ()) -> Iterator[Path_]:
    if path:
        yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*path, i))


def _set(raw: dict[str, Any], path: Path_, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    node = out
    for p in path[:-1]:
        node = node[p]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


_DELETE = object()


def mutations(raw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, mutated file) pairs for one space file."""
    out: list[tuple[str, dict[str, Any]]] = []
    for path in _paths(raw):
        label = ".".join(map(str, path))
        for bad in BAD_VALUES:
            out.append((f"{label}={bad!r}", _set(raw, path, bad)))
        out.append((f"del {label}", _set(raw, path, _DELETE)))
        parent = raw
        for p in path:
            parent = parent[p]
        if isinstance(parent, dict):
            out.append((f"{label}.zz=1", _set(raw, (*path, "zz"), 1)))
    keys = list(raw.get("space", {}))
    for i, key in enumerate(keys):
        dist = raw["space"][key]
        later = keys[i + 1] if i + 1 < len(keys) else "train.seed"
        for when in ({"optim.name": "sgd"}, {key: 1}, {later: dist.get("low", 0)}, {"schedule.name": "poly"},
                     {"optimizer.name": []}, {"optimizer.name": ["sgd", "adam"]}, {"train.epochs": 1}):
            out.append((f"space.{key}.when={when}", _set(raw, ("space", key), {**dist, "when": when})))
    for part, cls_of in (("sampler", sampler_class), ("pruner", pruner_class)):
        named = raw["study"].get(part, {"name": "tpe" if part == "sampler" else "asha"})
        import inspect

        params = [p for p in inspect.signature(cls_of(named["name"]).__init__).parameters if p not in ("self", "args", "kwargs")]
        for param in params:
            for bad in (-1, 0, 1, 2.5, "x", None, 10**9):
                args = {**named.get("args", {}), param: bad}
                out.append((f"study.{part}.args.{param}={bad!r}", _set(raw, ("study", part), {**named, "args": args})))
    for limit in ("max_params", "max_model_bytes", "max_macs", "max_flops", "max_epochs", "max_trial_seconds"):
        out.append((f"budget.{limit}=1", _set(raw, ("budget",), {**raw.get("budget", {}), limit: 1})))
    out.append(("objectives=[val_acc, params]", _set(raw, ("objectives",), ["val_acc", "params"])))
    return out


def _sample(slow: bool) -> list[Any]:
    params = []
    for space in SPACES:
        muts = mutations(yaml.safe_load(space.read_text()))
        picked = muts if slow else random.Random(space.name).sample(muts, 12)
        params += [pytest.param(space, label, mutated, id=f"{space.stem}:{label}") for label, mutated in picked]
    return params


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of spaces/ so that relative base and warm_start paths resolve."""
    shutil.copytree(REPO / "spaces", tmp_path / "spaces")
    return tmp_path / "spaces"


LINE = re.compile(r"^\S+\.yaml: [A-Za-z_\[\]0-9.]+")


def _small(cfg: TrainConfig, *args: Any, **kwargs: Any) -> Any:
    """The real trainer on a slice of the data, one epoch, at 32 px (report 003's 128 px would take
    a minute a trial on 2 cores; the mutations are about the space, not the size): the trial runs
    end to end, quickly."""
    classes = 100 if cfg.data.dataset == "cifar100" else 10
    small = cfg.replace("data", subset=20 * classes, val_fraction=0.2, image_size=32)
    small = small.replace("train", epochs=1, compile=False).replace("schedule", finetune_epochs=0)
    return train(small, *args, **kwargs)


def _check(tree: Path, space_file: Path, label: str, mutated: dict[str, Any], run_trial: bool,
           monkeypatch: pytest.MonkeyPatch) -> bool:
    """True if the mutation loaded (and, with ``run_trial``, ran a trial that did not FAIL)."""
    path = tree / space_file.name
    path.write_text(yaml.safe_dump(mutated, sort_keys=False))
    try:
        space = load_space(path)
    except SpaceError as e:
        text = str(e)
        assert "\n" not in text and LINE.match(text), f"{label}: {text}"
        assert text.startswith(str(path)) or text.startswith(str(tree)), f"{label}: {text}"
        return False
    if not run_trial:
        return True
    monkeypatch.setattr(objective_module, "train", _small)
    study = open_study(space, optuna.storages.InMemoryStorage())
    study.optimize(objective_module.Objective(space), n_trials=1, catch=(Exception,))
    trial = study.trials[0]
    assert trial.state != TrialState.FAIL, f"{label}: {reason(trial)}"
    assert trial.state == TrialState.COMPLETE or reason(trial), label
    return True


@pytest.mark.parametrize(("space_file", "label", "mutated"), _sample(slow=False))
def test_a_sample_of_mutations(tree: Path, space_file: Path, label: str, mutated: dict[str, Any],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPS_DATA")  # meter and budgets from each space's own dataset
    _check(tree, space_file, label, mutated, run_trial=False, monkeypatch=monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("space_file", SPACES, ids=lambda p: p.stem)
def test_every_mutation_is_refused_or_runs(tree: Path, space_file: Path, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path, mini_npz: Path) -> None:
    """Every mutation; a trial for each that loads (CIFAR-100 spaces train on a 100-class file
    made of the real mini images, kept beside cifar10.npz)."""
    import numpy as np

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(mini_npz, data / "cifar10.npz")
    raw = np.load(mini_npz)
    np.savez(data / "cifar100.npz", x_train=raw["x_train"], y_train=np.arange(5000) % 100, x_test=raw["x_test"],
             y_test=np.arange(1000) % 100)
    monkeypatch.setenv("HPS_DATA", str(data))
    muts = mutations(yaml.safe_load(space_file.read_text()))
    loaded = [(label, mutated) for label, mutated in muts
              if _check(tree, space_file, label, mutated, run_trial=False, monkeypatch=monkeypatch)]
    assert 0 < len(loaded) < len(muts)  # the generator makes both kinds
    for label, mutated in random.Random(space_file.name).sample(loaded, min(TRIALS_PER_SPACE, len(loaded))):
        with monkeypatch.context() as m:
            _check(tree, space_file, label, mutated, run_trial=True, monkeypatch=m)
