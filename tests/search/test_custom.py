"""A study whose trials run the user's own training loop (``train.fn``), on real CIFAR images and a
SQLite file: hps's budget pre-screen, pruner, checkpoints, export and retrain all hold, and the
function's mistakes FAIL their trials in one line with the file:line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import hps
from hps.search.errors import RunFailed
from hps.search.record import RESUMED_FROM
from tests.conftest import MINI, REPO
from tests.search.conftest import SMALL

LOOP = (REPO / "spaces" / "models" / "ema_loop.py").read_text()
# the example loop, plus a line per call: which width it was handed (the budget pre-screen is before it)
LOGGED = LOOP.replace("    model, lr_max = ctx.model, ctx.config.optimizer.lr\n",
                      "    model, lr_max = ctx.model, ctx.config.optimizer.lr\n"
                      "    import os\n"
                      "    with open(os.environ['CALLS'], 'a') as f:\n"
                      "        f.write(f'{ctx.config.model.width}\\n')\n"
                      "    if os.environ.get('KILL_AT') and not os.path.exists(os.environ['KILL_AT']):\n"
                      "        ctx.report = _killing(ctx.report, ctx)\n") + '''

def _killing(report, ctx):
    """SIGKILL this process as epoch 2 is reported, after epoch 1's checkpoint (once: a marker file says so)."""
    import os
    import signal

    def wrapped(epoch, value, **metrics):
        report(epoch, value, **metrics)
        if epoch == 2:
            open(os.environ["KILL_AT"], "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
    return wrapped
'''


def _space(tmp_path: Path, name: str, **over: Any) -> Path:
    (tmp_path / "loop.py").write_text(LOGGED)
    base = {**SMALL["base"], "train": {**SMALL["base"]["train"], "epochs": 3, "fn": "loop.py:fit", "args": {"ema_decay": 0.9}}}
    spec = {"study": {"name": name, "trials": 5, "seed": 0, "sampler": {"name": "random"},
                      "pruner": {"name": "median", "args": {"n_startup_trials": 2}}},
            "base": base, "space": {"model.width": {"low": 0.125, "high": 0.5}, "optimizer.lr": {"low": 1e-3, "high": 0.2, "log": True},
                                    "train.args.smoothing": {"low": 0.0, "high": 0.2}},
            "budget": {"max_params": 150_000, "max_epochs": 3}, **over}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.txt"
    monkeypatch.setenv("CALLS", str(path))
    monkeypatch.setenv("HPS_ARTIFACTS", str(tmp_path / "artifacts"))
    return path


@pytest.mark.slow
def test_a_study_of_an_own_loop_keeps_the_budget_the_pruner_and_the_tools(tmp_path: Path, calls: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hps.db'}"
    warm = [{"model.width": 0.5, "optimizer.lr": 0.05, "train.args.smoothing": 0.1},  # over the budget
            {"model.width": 0.2, "optimizer.lr": 0.05, "train.args.smoothing": 0.1}]  # within it
    result = hps.run(hps.load_space(_space(tmp_path, "own_loop", warm_start=warm)), url, progress="none")
    done = result.study.trials
    over = [t for t in done if t.user_attrs["params"] > 150_000]
    assert over and all(t.state == TrialState.PRUNED and t.user_attrs["prune_reason"] == "over:max_params" for t in over)
    called = [float(w) for w in calls.read_text().split()]
    assert len(called) == len(done) - len(over)  # the function ran for the configs that fit, never for the others
    assert all(t.params["model.width"] in called for t in done if t not in over)
    pruned = [t for t in done if t.state == TrialState.PRUNED and t not in over]
    assert all(t.user_attrs["prune_reason"] == "pruner:median" and len(t.intermediate_values) < 3 for t in pruned)
    best = result.best_trial
    assert best is not None and best.intermediate_values[3] == best.value  # the value is the last reported one
    assert {"hps:config"} <= set(best.system_attrs) and best.system_attrs["hps:config"]["train"]["fn_sha256"]

    out = tmp_path / "best.yaml"
    hps.export(result, out)
    exported = yaml.safe_load(out.read_text())
    assert exported["train"]["fn"].endswith("loop.py:fit") and exported["train"]["args"]["smoothing"] == \
        best.params["train.args.smoothing"]
    env = {**os.environ, "HPS_DATA": str(MINI)}
    for cmd in ([Path(sys.executable).parent / "hps", "retrain", out, "--out", tmp_path / "r"],
                [sys.executable, "-m", "hps.trainers", out, "--out", tmp_path / "r2"]):
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    values = [json.loads((tmp_path / d / "metrics.json").read_text())["history"][-1]["value"] for d in ("r", "r2")]
    assert values[0] == values[1] == pytest.approx(best.value, abs=1e-6)  # the trainer alone, the same function


@pytest.mark.slow
def test_a_killed_trial_of_an_own_loop_resumes_from_its_checkpoint_exactly(tmp_path: Path, calls: Path) -> None:
    """SIGKILL inside the function as epoch 2 is reported; the rerun's retry resumes from epoch 1's
    checkpoint and ends with the value an uninterrupted run of the same params gets."""
    space = _space(tmp_path, "killed", study={"name": "killed", "trials": 1, "seed": 0, "sampler": {"name": "random"},
                                               "pruner": {"name": "none"}},
                   space={"optimizer.lr": {"low": 0.02, "high": 0.2, "log": True}})
    env = {**os.environ, "HPS_DATA": str(MINI), "HPS_CHECKPOINT_SECONDS": "0", "KILL_AT": str(tmp_path / "killed.marker")}
    hps_bin = str(Path(sys.executable).parent / "hps")
    url = f"sqlite:///{tmp_path / 'hps.db'}"
    first = subprocess.run([hps_bin, "run", str(space), "--storage", url], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert first.returncode == -9 and (tmp_path / "killed.marker").exists(), first.stderr[-2000:]
    again = subprocess.run([hps_bin, "run", str(space), "--storage", url], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    study = optuna.load_study(study_name="killed", storage=url)
    retry = next(t for t in study.trials if t.state == TrialState.COMPLETE)
    assert retry.system_attrs[RESUMED_FROM]["epoch"] == 1
    whole = hps.train(retry.system_attrs["hps:config"])  # the same params, never killed
    assert retry.value == pytest.approx(whole.history[-1]["value"], abs=1e-6)


BAD = [
    ("raise ValueError('bad lr')", r"error:TrainFnError", r"raised ValueError: bad lr \(.*loop\.py:6\)"),
    ("return None", r"error:TrainFnError", r"returned without calling ctx\.report"),
    ("ctx.report(1, float('nan'))", r"error:TrainFnError", r"value=nan at epoch 1 is not a finite number"),
    ("ctx.report(1, 0.5)\n    return 3", r"error:TrainFnError", r"returned a int; return the trained nn\.Module"),
]


@pytest.mark.parametrize(("body", "cause", "why"), BAD, ids=["raises", "no report", "nan", "returns int"])
def test_a_broken_function_fails_its_trials_in_one_line_and_the_run_exits_non_zero(
        tmp_path: Path, calls: Path, body: str, cause: str, why: str) -> None:
    space = _space(tmp_path, "broken", space={"optimizer.lr": {"low": 1e-3, "high": 0.2, "log": True}},
                   budget={"max_params": 150_000})
    (tmp_path / "loop.py").write_text(f"import torch\n\n\n\ndef fit(ctx, ema_decay=0.9):\n    {body}\n")
    with pytest.raises(RunFailed) as info:
        hps.run(hps.load_space(space), f"sqlite:///{tmp_path / 'hps.db'}", progress="none")
    failed = [t for t in info.value.result.study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 3 and all(t.user_attrs["fail_reason"] == cause for t in failed)
    import re

    assert all(re.search(why, t.system_attrs["hps:why"]) and "\n" not in t.system_attrs["hps:why"] for t in failed)


@pytest.mark.slow  # (seconds: kept out of the fast subset)
def test_hps_run_takes_the_function_itself(tmp_path: Path, calls: Path) -> None:
    """``hps.run(space, train=fn)`` with a function of the user's file; one defined where hps cannot
    find it again (inside another function, a notebook cell) is refused in one line."""
    import importlib.util

    (tmp_path / "mine.py").write_text(LOGGED)
    spec = importlib.util.spec_from_file_location("mine", tmp_path / "mine.py")
    assert spec is not None and spec.loader is not None
    mine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mine)
    raw = yaml.safe_load(_space(tmp_path, "as_object").read_text())
    raw["base"]["train"].pop("fn")
    raw["base"]["train"]["epochs"] = raw["budget"]["max_epochs"] = 1
    raw["study"]["trials"] = 2
    raw["space"] = {"optimizer.lr": {"low": 0.01, "high": 0.2, "log": True}, "train.args.smoothing": {"low": 0.0, "high": 0.2}}
    result = hps.run(raw, f"sqlite:///{tmp_path / 'hps.db'}", progress="none", train=mine.fit)
    assert result.counts.get("complete") == 2
    assert {t.system_attrs["hps:config"]["train"]["fn"] for t in result.study.trials} == {f"{tmp_path / 'mine.py'}:fit"}

    def local(ctx: Any) -> None:
        pass

    with pytest.raises(hps.ConfigError, match=r"define it at the top level of a \.py file"):
        hps.run(raw, f"sqlite:///{tmp_path / 'hps.db'}", progress="none", train=local)
