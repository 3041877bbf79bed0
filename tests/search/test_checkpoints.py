"""Checkpoints and kept weights in Optuna's artifact store, on a real study (SQLite file, real CIFAR
images); the resume of a killed Ray worker's trial is in test_ray.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from hps.search.export import export
from hps.search.record import CHECKPOINT, WEIGHTS, stored_figures
from hps.search.run import run
from hps.search.space import load_space
from hps.trainers import load_config, saved_bytes, state_dict_at
from hps.trainers.loop import score
from hps.trainers.meter import state_dict_from
from tests.conftest import MINI, REPO
from tests.helpers import free_port, wait_http
from tests.search.conftest import write_space

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """6 trials, 3 trained to the end; weights of the best 2 kept, a checkpoint after every epoch."""
    tmp = tmp_path_factory.mktemp("ckpt")
    env = {"HPS_ARTIFACTS": str(tmp / "artifacts"), "HPS_KEEP_WEIGHTS": "2", "HPS_CHECKPOINT_SECONDS": "0",
           "HPS_DATA": str(MINI)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        url = f"sqlite:///{tmp / 'hps.db'}"
        space = load_space(write_space(tmp, "ckpt", study__trials=6, study__pruner={"name": "none"},
                                       space={"optimizer.lr": {"low": 0.01, "high": 0.2, "log": True}}, warm_start=[]))
        run(space, url, trials=6, progress="none")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    s = optuna.load_study(study_name="ckpt", storage=url)
    return {"url": url, "study": s, "artifacts": tmp / "artifacts", "tmp": tmp}


@pytest.mark.slow  # the module's 6-trial study
def test_the_best_k_keep_their_weights_and_no_checkpoint_remains(study: dict) -> None:
    s: optuna.Study = study["study"]
    done = sorted(s.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value, reverse=True)
    assert len(done) == 6
    assert [t.number for t in done if WEIGHTS in t.system_attrs] == [t.number for t in done[:2]]
    kept = {t.system_attrs[WEIGHTS] for t in done[:2]}
    assert set(os.listdir(study["artifacts"])) == kept  # no checkpoint, no dropped weights left on disk
    for t in done:
        assert t.system_attrs[CHECKPOINT]["epoch"] == 3  # one saved after every epoch, the last one deleted
        metas = {k: json.loads(v) if v else None for k, v in t.system_attrs.items() if k.startswith("artifacts:")}
        live = [m for m in metas.values() if m is not None]
        assert [m["filename"] for m in live] == (["weights.pt"] if t in done[:2] else [])


@pytest.mark.slow  # the module's 6-trial study
def test_export_writes_the_weights_at_the_storage_dtype_and_they_score_the_trial(study: dict) -> None:
    s: optuna.Study = study["study"]
    out = study["tmp"] / "best.yaml"
    t = export(s, out, study["url"], artifact_dir=study["artifacts"])
    weights = out.with_suffix(".pt")
    prov = yaml.safe_load(out.read_text())["provenance"]
    assert prov["weights"] == {"file": "best.pt", "dtype": "fp32", "bytes": weights.stat().st_size}
    assert weights.stat().st_size == stored_figures(t)["model_bytes"]  # the meter's figure, exactly
    cfg = load_config(out)
    stored = torch.load(weights, weights_only=True)
    assert score(cfg, stored)["val_acc"] == t.value  # the trial's last-epoch val_acc, without training
    cli = subprocess.run([str(BIN / "hps"), "evaluate", str(out), "--weights", str(weights)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and f"val_acc {t.value:.4f}" in cli.stdout, cli.stdout + cli.stderr


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
def test_stored_weights_load_back_at_every_storage_dtype(dtype: str) -> None:
    from hps.trainers import create_model

    model = create_model("airnet", num_classes=10, width=0.25)
    stored = state_dict_at(model, dtype)
    back = state_dict_from(stored)
    assert back.keys() == model.state_dict().keys()
    tol = {"fp16": 1e-3, "bf16": 1e-2, "int8": 1e-2}[dtype]
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(back[k], v, atol=tol * max(1.0, float(v.abs().max()))), k
    assert saved_bytes(stored) < saved_bytes(state_dict_at(model, "fp32"))


@pytest.mark.slow  # the module's 6-trial study
def test_the_stock_dashboard_lists_and_serves_the_weights(study: dict) -> None:
    s: optuna.Study = study["study"]
    best = s.best_trial
    port = free_port()
    dash = subprocess.Popen([str(BIN / "optuna-dashboard"), study["url"], "--port", str(port), "--host", "127.0.0.1",
                             "--artifact-dir", str(study["artifacts"])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/api/studies")
        data = json.load(urllib.request.urlopen(f"{url}/api/studies/{s._study_id}", timeout=10))
        listed = next(t for t in data["trials"] if t["number"] == best.number)["artifacts"]
        assert [(a["filename"], a["artifact_id"]) for a in listed] == [("weights.pt", best.system_attrs[WEIGHTS])]
        body = urllib.request.urlopen(f"{url}/artifacts/{s._study_id}/{best._trial_id}/{listed[0]['artifact_id']}",
                                      timeout=10).read()
        assert body == (study["artifacts"] / listed[0]["artifact_id"]).read_bytes()
    finally:
        dash.terminate()
        dash.wait(10)


def test_a_retry_with_an_unreadable_checkpoint_trains_from_the_start(tmp_path: Path) -> None:
    """A corrupted checkpoint never fails the retry of its trial: the retry starts afresh and says so."""
    from optuna.artifacts import FileSystemArtifactStore

    from hps.search.checkpoints import TrialCheckpoint
    from hps.search.record import RESUMED_FROM

    store = FileSystemArtifactStore(str(tmp_path))
    (tmp_path / "checkpoint-broken").write_bytes(b"not a checkpoint")
    study = optuna.create_study()
    first = study.ask()
    first.suggest_float("x", 0, 1)
    first.storage.set_trial_system_attr(first._trial_id, CHECKPOINT, {"id": "checkpoint-broken", "epoch": 2})
    study.tell(first, state=TrialState.FAIL)
    frozen = study.trials[0]
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
                                              system_attrs={"failed_trial": 0}))
    retry = study.ask()
    assert TrialCheckpoint(retry, store).load() is None  # train from the start
    resumed = study._storage.get_trial_system_attrs(retry._trial_id)[RESUMED_FROM]
    assert resumed["trial"] == 0 and resumed["epoch"] == 0 and resumed["unreadable"].startswith("UnpicklingError")


@pytest.mark.slow
def test_a_trained_trial_stays_complete_when_its_weights_cannot_be_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hps.search.objective as objective_module
    from hps.search.record import PROBLEM

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(objective_module, "keep_if_best", full_disk)
    space = load_space(write_space(tmp_path, "weights", study__trials=1, study__pruner={"name": "none"},
                                   warm_start=[{"model.width": 0.25, "optimizer.lr": 0.05}]))
    result = run(space, f"sqlite:///{tmp_path / 'w.db'}", trials=1, progress="none")
    (t,) = result.study.trials
    assert t.state == TrialState.COMPLETE and t.value is not None and result.best_trial is not None
    assert t.system_attrs[PROBLEM] == "weights not kept: OSError: [Errno 28] No space left on device"
