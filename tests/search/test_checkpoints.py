"""Checkpoints and kept weights in Optuna's artifact store, on a real study (SQLite file, real CIFAR
images); the resume of a killed Ray worker's trial is in test_ray.py."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


class _Payload:
    """What a writer of the artifact store could plant: unpickling it calls ``Path.write_text``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return Path.write_text, (self.marker, "the payload ran")


@pytest.mark.slow  # one trial of 3 epochs
def test_a_checkpoint_holding_code_is_refused_and_the_retry_trains_from_the_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry loads its original's checkpoint with weights_only=True: a pickled callable is
    refused without running, said in one line in the retry's record, and the retry trains all
    its epochs from the start."""
    from hps.search.record import RESUMED_FROM

    art, marker = tmp_path / "art", tmp_path / "marker"
    art.mkdir()
    monkeypatch.setenv("HPS_ARTIFACTS", str(art))
    monkeypatch.setenv("HPS_DATA", str(MINI))
    with open(art / "checkpoint-planted", "wb") as f:
        torch.save({"epoch": 2, "step": 24, "history": [], "model": _Payload(marker), "optimizer": {}, "rng": {}}, f)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    space = load_space(write_space(tmp_path, "planted", study__trials=1, study__pruner={"name": "none"}, warm_start=[]))
    study = optuna.create_study(study_name="planted", storage=url, direction="maximize")
    dist = optuna.distributions.FloatDistribution(0.125, 1.0)
    lr = optuna.distributions.FloatDistribution(1e-4, 0.2, log=True)
    params, dists = {"model.width": 0.25, "optimizer.lr": 0.05}, {"model.width": dist, "optimizer.lr": lr}
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, params=params, distributions=dists,
                                              system_attrs={CHECKPOINT: {"id": "checkpoint-planted", "epoch": 2}}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=params, distributions=dists,
                                              system_attrs={"failed_trial": 0}))
    run(space, url, trials=1, progress="none")
    retry = optuna.load_study(study_name="planted", storage=url).trials[1]
    assert not marker.exists()  # the payload never ran
    assert retry.state == TrialState.COMPLETE and sorted(retry.intermediate_values) == [1, 2, 3]
    why = retry.system_attrs[RESUMED_FROM]
    assert why["trial"] == 0 and why["epoch"] == 0
    assert why["unreadable"] == ("UnpicklingError: refused to load: it holds getattr, not only tensors and plain values "
                                 "(weights_only); trained from the start")


class _FullAt:
    """An artifact store whose ``full_at``-th write fills the disk: half the bytes land, then ENOSPC."""

    def __init__(self, root: Path, full_at: int) -> None:
        from optuna.artifacts import FileSystemArtifactStore

        self.inner, self.root, self.full_at, self.writes = FileSystemArtifactStore(str(root)), root, full_at, 0
        self.on_disk_when_full: set[str] = set()

    def write(self, artifact_id: str, content_body: Any) -> None:
        self.writes += 1
        if self.writes == self.full_at:
            (self.root / artifact_id).write_bytes(content_body.read()[:1000])
            self.on_disk_when_full = set(os.listdir(self.root))
            raise OSError(errno.ENOSPC, "No space left on device")
        self.inner.write(artifact_id, content_body)

    def open_reader(self, artifact_id: str) -> Any:
        return self.inner.open_reader(artifact_id)

    def remove(self, artifact_id: str) -> None:
        self.inner.remove(artifact_id)


@pytest.mark.slow  # one trial of 3 epochs
def test_a_full_disk_at_a_checkpoint_keeps_the_old_one_and_the_trial_trains_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Write, then swap: the checkpoint after epoch 2 hits a full disk; the partial file goes, the
    one from epoch 1 stays until a new one is written, the trial completes with one line said."""
    import hps.search.objective as objective_module
    from hps.search.record import PROBLEM

    store = _FullAt(tmp_path / "art", full_at=2)
    (tmp_path / "art").mkdir()
    monkeypatch.setattr(objective_module, "artifact_store", lambda: store)
    monkeypatch.setenv("HPS_CHECKPOINT_SECONDS", "0")
    monkeypatch.setenv("HPS_KEEP_WEIGHTS", "0")
    space = load_space(write_space(tmp_path, "full", study__trials=1, study__pruner={"name": "none"},
                                   warm_start=[{"model.width": 0.25, "optimizer.lr": 0.05}]))
    result = run(space, f"sqlite:///{tmp_path / 'f.db'}", trials=1, progress="none")
    (t,) = result.study.trials
    assert t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [1, 2, 3]
    assert t.system_attrs[PROBLEM] == ("checkpoint after epoch 2 not saved (OSError: [Errno 28] No space left on device); "
                                       "the one after epoch 1 is kept")
    assert len(store.on_disk_when_full) == 2  # epoch 1's checkpoint and the partial one, at the failed write
    assert t.system_attrs[CHECKPOINT]["epoch"] == 3 and os.listdir(tmp_path / "art") == []  # the trial's end removed it


@pytest.fixture()
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (root only: the test skips where mount fails)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.slow  # one trial of 3 epochs
def test_an_export_onto_a_full_disk_keeps_the_earlier_export(tmp_path: Path, tiny_fs: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The export's weights and YAML are written beside the old ones, then swapped in: a full disk
    is one line and leaves the earlier export as it was."""
    from hps.search.errors import StudyError

    monkeypatch.setenv("HPS_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.setenv("HPS_KEEP_WEIGHTS", "1")
    space = load_space(write_space(tmp_path, "exp", study__trials=1, study__pruner={"name": "none"},
                                   warm_start=[{"model.width": 0.125, "optimizer.lr": 0.05}]))
    url = f"sqlite:///{tmp_path / 'e.db'}"
    s = run(space, url, trials=1, progress="none").study
    out = tiny_fs / "best.yaml"
    export(s, out, url, artifact_dir=tmp_path / "art")
    before = {p.name: p.read_bytes() for p in tiny_fs.iterdir()}
    assert set(before) == {"best.yaml", "best.pt"}
    with contextlib.suppress(OSError), open(tiny_fs / "filler", "wb") as f:  # the disk fills up
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    with pytest.raises(StudyError) as e:
        export(s, out, url, artifact_dir=tmp_path / "art")
    assert str(e.value) == f"{out}: cannot write the export (No space left on device); the files there are unchanged"
    assert {p.name: p.read_bytes() for p in tiny_fs.iterdir() if p.name != "filler"} == before


@pytest.mark.slow  # three hps commands, two trials
def test_after_allow_change_the_new_best_keeps_weights_and_export_writes_them(tmp_path: Path) -> None:
    """HPS_KEEP_WEIGHTS ranks the trials of the study's current definition, the ones export picks
    from: after --allow-change a worse trial of the new definition keeps its weights (the old
    definition's go) and hps export writes them beside its YAML."""
    env = {**os.environ, "HPS_ARTIFACTS": str(tmp_path / "art"), "HPS_KEEP_WEIGHTS": "1", "HPS_DATA": str(MINI),
           "COLUMNS": "200"}
    url = f"sqlite:///{tmp_path / 'k.db'}"
    path = write_space(tmp_path, "kept", study__trials=1, study__pruner={"name": "none"},
                       warm_start=[{"model.width": 0.25, "optimizer.lr": 0.05}])

    def hps(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hps", *args], capture_output=True, text=True, cwd=tmp_path,
                              env=env, timeout=600)

    first = hps("run", str(path), "--storage", url, "--no-live")
    assert first.returncode == 0, first.stderr
    data = yaml.safe_load(path.read_text())
    data["budget"]["max_epochs"] = data["base"]["train"]["epochs"] = 1  # a new definition, whose trials score lower
    data["warm_start"] = [{"model.width": 0.25, "optimizer.lr": 0.04}]
    data["space"]["model.width"]["high"] = 0.25  # every trial fits the budget
    path.write_text(yaml.safe_dump(data))
    again = hps("run", str(path), "--storage", url, "--no-live", "--allow-change", "--trials", "2")
    assert again.returncode == 0, again.stderr
    out = hps("export", "kept", "-o", str(tmp_path / "best.yaml"), "--storage", url)
    assert out.returncode == 0, out.stderr
    trials = optuna.load_study(study_name="kept", storage=url).get_trials(states=(TrialState.COMPLETE,))
    old, new = trials[0], max(trials[1:], key=lambda t: t.value)
    assert new.value < old.value and WEIGHTS not in old.system_attrs  # the old definition's weights dropped out
    prov = yaml.safe_load((tmp_path / "best.yaml").read_text())["provenance"]
    assert prov["trial"] == new.number and prov["weights"]["file"] == "best.pt"
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "art" / new.system_attrs[WEIGHTS]).read_bytes()
