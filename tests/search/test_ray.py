"""Ray workers on a real Ray cluster started here: a head and a second node on 127.0.0.1 (CPU only;
the second node advertises 2 fake GPUs to test placement), PostgreSQL storage, real CIFAR images."""

from __future__ import annotations

import copy
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hps.search.errors import RunFailed, StudyError
from hps.search.record import CHECKPOINT, FAILED, RESUMED_FROM, WEIGHTS, WORKER, reason, study_attrs
from hps.search.run import run
from hps.search.space import load_space
from tests.conftest import REPO, kill_all, pids_using
from tests.helpers import free_port
from tests.search.conftest import PG_URL, SMALL, trials, write_space

pytestmark = pytest.mark.slow  # a real Ray cluster per module
RAY = str(Path(sys.executable).parent / "ray")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[dict[str, str]]:
    """``ray start --head`` plus a second node, torn down by process id afterwards."""
    tmp = tempfile.mkdtemp(prefix="hpsray-", dir="/tmp")
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--temp-dir", tmp, "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    subprocess.run([RAY, "start", "--head", "--port", str(port), "--num-cpus", "2", "--num-gpus", "0",
                    "--ray-client-server-port", str(free_port()),
                    "--include-dashboard", "false", *common], check=True, capture_output=True, env=env)
    try:
        subprocess.run([RAY, "start", "--address", address, "--num-cpus", "2", "--num-gpus", "2",
                        "--resources", '{"second_node": 1}', *common], check=True, capture_output=True, env=env)
        yield {"address": address, "tmp": tmp}
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        kill_all(tmp)
        assert pids_using(tmp) == []


@pytest.fixture
def connected(ray_cluster: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("HPS_HEARTBEAT_SECONDS", "1")
    yield ray_cluster["address"]
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _wait_finished(name: str, n: int, seconds: float, url: str = PG_URL) -> None:
    """Poll until the study holds ``n`` finished trials (or ``seconds`` pass)."""
    for _ in range(int(seconds * 10)):
        time.sleep(0.1)
        try:
            if len([t for t in _trials(name, url) if t.state in FINISHED]) >= n:
                return
        except KeyError:  # the study does not exist yet
            continue


def _trials(name: str, url: str = PG_URL) -> list[optuna.trial.FrozenTrial]:
    return trials(url, name)


def test_two_concurrent_trials_on_two_nodes(tmp_path: Path, connected: str, study_name: str) -> None:
    space = load_space(write_space(tmp_path, study_name, study__trials=6, budget={"max_params": 300_000},
                                   space={"model.width": {"low": 0.125, "high": 0.3},
                                          "optimizer.lr": {"low": 0.01, "high": 0.2, "log": True}},
                                   warm_start=[]))
    run(space, PG_URL, trials=6, ray=connected, workers=4, cpus_per_trial=1, progress="none")  # the cluster default
    ts = _trials(study_name)
    finished = [t for t in ts if t.state in FINISHED]
    assert 6 <= len(finished) <= 7  # workers count each other's running trials; two asking at one instant make 7
    workers = {(t.system_attrs[WORKER]["node"], t.system_attrs[WORKER]["pid"]) for t in finished}
    assert len({node for node, _ in workers}) == 2 and len(workers) == 4  # both nodes, four slots
    spans = sorted((t.datetime_start, t.datetime_complete) for t in finished)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))  # trials overlapped in time
    assert len({tuple(sorted(t.params.items())) for t in ts}) == len(ts)  # no point handed out twice


def test_fractional_gpus_land_on_the_gpu_node(tmp_path: Path, connected: str, study_name: str) -> None:
    space = load_space(write_space(tmp_path, study_name, study__trials=4, warm_start=[]))
    run(space, PG_URL, trials=4, ray=connected, workers=4, gpus_per_trial=0.5, cpus_per_trial=0.5, progress="none")
    info = [t.system_attrs[WORKER] for t in _trials(study_name, PG_URL) if WORKER in t.system_attrs]
    assert info and all(w["gpus"] and w["cuda_visible"] in ("0", "1") for w in info)
    assert all(w["gpu_share"] == 0.5 and w["memory_fraction"] is None for w in info)  # (fake GPUs: no CUDA to cap)
    import ray

    gpu_node = next(n["NodeID"] for n in ray.nodes() if n["Resources"].get("GPU"))
    assert {w["node"] for w in info} == {gpu_node[:12]}  # four half-GPU slots share the 2 fake GPUs there


def test_gpus_per_trial_0_on_a_gpu_cluster_is_refused_unless_trials_run_on_the_cpu(tmp_path: Path, connected: str,
                                                                                   study_name: str) -> None:
    """Ray 2.60 sets no CUDA_VISIBLE_DEVICES for an actor that asks for no GPU: every trial on a GPU
    node would train on its GPU 0 while Ray counted none. Refused in one line before anything runs;
    a space that trains on the CPU runs, its workers seeing no GPU."""
    base = copy.deepcopy(SMALL["base"])
    base["train"]["device"] = "auto"
    space = load_space(write_space(tmp_path, study_name, study__trials=2, warm_start=[], base=base))
    with pytest.raises(StudyError) as e:
        run(space, PG_URL, trials=2, ray=connected, workers=2, gpus_per_trial=0, cpus_per_trial=0.5, progress="none")
    assert str(e.value) == (f"--ray {connected}: the cluster has 2 GPUs but --gpus-per-trial is 0, so Ray would give no "
                            "trial a GPU and every trial on a node would share its first one; give --gpus-per-trial 1 (0.5 "
                            "puts two trials on a GPU), or set train.device: cpu")
    assert _trials(study_name) == []
    space = load_space(write_space(tmp_path, study_name, study__trials=2, warm_start=[]))  # device: cpu
    run(space, PG_URL, trials=2, ray=connected, workers=2, gpus_per_trial=0, cpus_per_trial=0.5, progress="none")
    info = [t.system_attrs[WORKER] for t in _trials(study_name)]
    assert info and all(w["cuda_visible"] == "" and w["gpus"] == [] for w in info)


def test_a_gpu_share_without_cuda_fails_with_why(tmp_path: Path, connected: str, study_name: str) -> None:
    """Ray hands out the fake GPUs of the second node; torch sees no CUDA there: each trial fails
    with that reason (never trains on the CPU), and the study stops on the failures."""
    base = copy.deepcopy(SMALL["base"])
    base["train"]["device"] = "auto"
    space = load_space(write_space(tmp_path, study_name, study__trials=4, warm_start=[], base=base))
    with pytest.raises(RunFailed, match="torch sees no CUDA device") as failed:
        run(space, PG_URL, trials=4, ray=connected, workers=2, gpus_per_trial=0.5, cpus_per_trial=0.5, progress="none")
    assert failed.value.result is None or failed.value.result.counts.get("fail", 0) >= 3
    ts = _trials(study_name)
    assert ts and all(t.state == TrialState.FAIL for t in ts)
    assert all("torch sees no CUDA device" in reason(t) for t in ts)
    assert all("device_seconds" not in t.user_attrs for t in ts)  # nothing trained
    study = optuna.load_study(study_name=study_name, storage=PG_URL)
    assert "torch sees no CUDA device" in study_attrs(study)[FAILED]


@pytest.mark.parametrize("url", [PG_URL], ids=["postgres"])
def test_sigkill_a_worker_mid_trial_resumes_from_its_checkpoint(tmp_path: Path, connected: str, study_name: str, url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL a worker at epoch k of a trial: the trial FAILs through heartbeats (with why), and its
    retry resumes from the last checkpoint at k + 1 with the original's curve up to k; the study
    finishes, no checkpoint file is left."""
    artifacts = tmp_path / "artifacts"
    monkeypatch.setenv("HPS_ARTIFACTS", str(artifacts))
    monkeypatch.setenv("HPS_CHECKPOINT_SECONDS", "0")  # after every epoch
    epochs = 6
    space = load_space(write_space(tmp_path, study_name, study__trials=4, warm_start=[],
                                   base={"model": {"name": "airnet", "width": 0.25},
                                         "data": {"subset": 3000, "val_fraction": 0.2},
                                         "optimizer": {"lr": 0.05}, "train": {"epochs": epochs, "batch_size": 100, "device": "cpu"}},
                                   space={"optimizer.lr": {"low": 0.02, "high": 0.2, "log": True}},
                                   study__pruner={"name": "none"}, budget={}))
    import threading

    def killer() -> None:
        for _ in range(1200):
            time.sleep(0.1)
            try:
                running = [t for t in _trials(study_name, url) if t.state == TrialState.RUNNING and WORKER in t.system_attrs
                           and "resumed_from" not in t.user_attrs]
            except KeyError:
                continue
            if running and (running[0].system_attrs.get(CHECKPOINT) or {}).get("epoch", 0) >= 2:
                os.kill(running[0].system_attrs[WORKER]["pid"], signal.SIGKILL)
                killed.append(running[0].number)
                return

    killed: list[int] = []
    thread = threading.Thread(target=killer)
    thread.start()
    run(space, url, trials=4, ray=connected, workers=2, cpus_per_trial=1, progress="none")
    thread.join()
    assert len(killed) == 1
    ts = _trials(study_name, url)
    dead = ts[killed[0]]
    assert dead.state == TrialState.FAIL  # with the reason stored: on one machine the driver sees the process gone
    assert reason(dead).startswith((f"its worker's process is gone (pid {dead.system_attrs[WORKER]['pid']} on ",
                                    "no heartbeat from its worker for "))
    retries = [t for t in ts if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].params == dead.params and retries[0].state == TrialState.COMPLETE
    retry, k = retries[0], dead.system_attrs[CHECKPOINT]["epoch"]
    assert retry.system_attrs[RESUMED_FROM] == {"trial": dead.number, "epoch": k} and k >= 2
    assert sorted(retry.intermediate_values) == list(range(1, epochs + 1))
    assert all(retry.intermediate_values[e] == dead.intermediate_values[e] for e in range(1, k + 1))  # the original's curve
    trained = len(dead.intermediate_values) + (epochs - k)  # epochs trained for this config, kill included
    assert trained <= epochs + 1
    assert retry.user_attrs["best_epoch"] in range(1, epochs + 1)
    finished = [t for t in ts if t.state in FINISHED]
    assert len(finished) >= 4
    assert [t.state for t in ts].count(TrialState.FAIL) == 1
    left = set(os.listdir(artifacts))
    assert not any(name.startswith("checkpoint-") for name in left)  # the original's and every finished trial's are gone
    assert left == {t.system_attrs[WEIGHTS] for t in ts if WEIGHTS in t.system_attrs}


@pytest.mark.parametrize("url, per_worker", [(PG_URL, 2)], ids=["postgres"])
def test_bounded_postgres_connections(tmp_path: Path, connected: str, study_name: str, url: str, per_worker: int) -> None:
    import threading

    import psycopg2

    space = load_space(write_space(tmp_path, study_name, study__trials=12, warm_start=[],
                                   space={"model.width": {"low": 0.125, "high": 0.2},
                                          "optimizer.lr": {"low": 0.01, "high": 0.2, "log": True}}))
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        conn = psycopg2.connect(PG_URL.replace("postgresql+psycopg2", "postgresql"))
        conn.autocommit = True
        with conn.cursor() as cur:
            while not stop.wait(0.05):
                cur.execute("select count(*) from pg_stat_activity where application_name = 'hps'")
                peak[0] = max(peak[0], cur.fetchone()[0])
        conn.close()

    thread = threading.Thread(target=watch)
    thread.start()
    run(space, url, trials=12, ray=connected, workers=8, cpus_per_trial=0.5, progress="none")
    stop.set()
    thread.join()
    assert 8 <= peak[0] <= 8 * per_worker + 2 * per_worker  # every worker connected; the driver holds two storages


def _hps(*args: str, env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([str(Path(sys.executable).parent / "hps"), *args], cwd=REPO, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_kill_the_driver_and_rerun_resumes(tmp_path: Path, connected: str, study_name: str) -> None:
    path = write_space(tmp_path, study_name, study__trials=6)
    env = {"HPS_STORAGE": PG_URL, "RAY_AUTH_MODE": "disabled", "HPS_HEARTBEAT_SECONDS": "1"}
    args = ("run", str(path), "--ray", connected, "--workers", "2", "--no-live")
    proc = _hps(*args, env=env, start_new_session=True)
    _wait_finished(study_name, 2, 90)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    before = {t.number: t.values for t in _trials(study_name) if t.state in FINISHED}
    assert 2 <= len(before) < 6
    again = _hps(*args, env=env)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    ts = _trials(study_name)
    assert 6 <= len([t for t in ts if t.state in FINISHED]) <= 7
    assert all(ts[n].values == v for n, v in before.items())  # finished trials kept, not rerun


@pytest.mark.parametrize("url", [PG_URL], ids=["postgres"])
def test_postgres_restart_mid_study(tmp_path: Path, connected: str, study_name: str, url: str) -> None:
    space = load_space(write_space(tmp_path, study_name, study__trials=8, warm_start=[],
                                   base={"model": {"name": "airnet", "width": 0.25},
                                         "data": {"subset": 3000, "val_fraction": 0.2},
                                         "optimizer": {"lr": 0.05}, "train": {"epochs": 3, "batch_size": 100, "device": "cpu"}},
                                   space={"optimizer.lr": {"low": 0.02, "high": 0.2, "log": True}}, budget={}))
    import threading

    def restart() -> None:
        _wait_finished(study_name, 2, 60, url)
        version = os.listdir("/etc/postgresql")[0]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True)
        restarted.append(True)

    restarted: list[bool] = []
    thread = threading.Thread(target=restart)
    thread.start()
    run(space, url, trials=8, ray=connected, workers=2, cpus_per_trial=1, progress="none")
    thread.join()
    assert restarted
    ts = _trials(study_name, url)
    assert len([t for t in ts if t.state in FINISHED]) >= 8
    # RDBStorage may fail the trial in flight; it says why
    assert all(reason(t) for t in ts if t.state == TrialState.FAIL)


def test_an_own_model_file_reaches_the_workers_and_the_tools_agree(tmp_path: Path, connected: str, study_name: str) -> None:
    """A model file outside the repository, searched on the 2-node cluster on PostgreSQL: the space
    ships the file's source, so workers build the version the study started with even when their
    disk holds another; export, evaluate, retrain and python -m hps.trainers then agree, and a
    changed file is refused by retrain in one line."""
    import json

    import yaml

    import hps
    from tests.trainers.test_own import MYCNN

    model = tmp_path / "models" / "mycnn.py"
    model.parent.mkdir()
    model.write_text(MYCNN)
    base = {**copy.deepcopy(SMALL["base"]), "model": {"name": "models/mycnn.py:build", "width": 1.0}}
    space = load_space(write_space(tmp_path, study_name, study__trials=4, warm_start=[], base=base, budget={"max_params": 50_000},
                                   space={"model.width": {"low": 0.5, "high": 2.0}, "model.args.hidden": {"low": 16, "high": 48},
                                          "optimizer.lr": {"low": 0.02, "high": 0.2, "log": True}}))
    model.write_text(MYCNN + "\nraise RuntimeError('a version the study did not start with')\n")  # the workers' disk
    result = run(space, PG_URL, trials=4, ray=connected, workers=2, cpus_per_trial=1, progress="none")
    assert result.failures == [] and result.finished >= 4
    shas = {t.system_attrs["hps:config"]["model"]["sha256"] for t in result.study.trials}
    assert shas == {space.base.model.sha256}
    assert all(WORKER in t.system_attrs for t in result.study.trials)  # trained in Ray workers

    model.write_text(MYCNN)  # the file as the study knew it
    out = tmp_path / "best.yaml"
    best = hps.export(result, out)
    exported = yaml.safe_load(out.read_text())
    assert exported["provenance"]["model"]["sha256"] == space.base.model.sha256
    bin_dir = Path(sys.executable).parent
    evaluated = subprocess.run([str(bin_dir / "hps"), "evaluate", str(out), "--weights", str(out.with_suffix(".pt"))],
                               capture_output=True, text=True, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    retrained = subprocess.run([str(bin_dir / "hps"), "retrain", str(out), "--out", str(tmp_path / "r")],
                               capture_output=True, text=True, cwd=tmp_path)
    alone = subprocess.run([sys.executable, "-m", "hps.trainers", str(out), "--out", str(tmp_path / "r2")],
                           capture_output=True, text=True, cwd=tmp_path)
    assert retrained.returncode == 0 and alone.returncode == 0, retrained.stderr + alone.stderr
    val = [json.loads((tmp_path / d / "metrics.json").read_text())["val_acc"] for d in ("r", "r2")]
    assert val[0] == val[1] == pytest.approx(best.value, abs=0.02)  # the trainer alone (a worker ran at 1 CPU thread)
    assert f"val_acc {best.value:.4f}" in evaluated.stdout  # the kept weights score exactly the trial's value

    model.write_text(MYCNN + "\n# edited\n")
    refused = subprocess.run([str(bin_dir / "hps"), "retrain", str(out), "--out", str(tmp_path / "r3")],
                             capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "the model code changed since this config was made (retrain with --allow-model-change" in refused.stderr


def test_soak_three_runs_on_one_study_killed_and_stopped_at_random(tmp_path: Path, connected: str, study_name: str) -> None:
    """Three ``hps run`` processes on one PostgreSQL study (two in-process, one through Ray with two
    workers), SIGKILLed and SIGTERMed at random for two minutes (and Ray workers SIGKILLed under
    their driver), each restarted as a supervisor would; then all three run to a common target.
    At the end: no trial RUNNING or WAITING, no params trained twice outside a retry (and no trial
    retried twice), every FAIL with its reason, every COMPLETE with its value and whole curve, and
    the counts add up: the target, give or take trials asked at one instant."""
    path = write_space(tmp_path, study_name, warm_start=[], budget={},
                       base={"model": {"name": "airnet", "width": 0.25}, "data": {"subset": 1000, "val_fraction": 0.2},
                             "optimizer": {"name": "sgd", "lr": 0.05}, "train": {"epochs": 2, "batch_size": 100, "device": "cpu"}},
                       space={"model.width": {"low": 0.125, "high": 0.5}, "optimizer.lr": {"low": 1e-3, "high": 0.2, "log": True}})
    env = {"HPS_STORAGE": PG_URL, "RAY_AUTH_MODE": "disabled", "HPS_HEARTBEAT_SECONDS": "1", "HPS_CHECKPOINT_SECONDS": "0",
           "HPS_ARTIFACTS": str(tmp_path / "art")}
    extra = {"a": [], "b": [], "ray": ["--ray", connected, "--workers", "2"]}

    def start(kind: str, trials: int = 10_000) -> subprocess.Popen[str]:
        return _hps("run", str(path), "--no-live", "--trials", str(trials), *extra[kind], env=env, start_new_session=True)

    procs = {kind: start(kind) for kind in extra}
    _wait_finished(study_name, 2, 180)
    rng = random.Random(7)
    actions = ["kill:a", "term:b", "kill-worker:ray", "term:ray", "kill:ray"]  # each at least once, then at random
    rng.shuffle(actions)
    done: list[str] = []
    end = time.time() + 120
    try:
        while time.time() < end or actions:
            time.sleep(rng.uniform(5, 10))
            action = actions.pop() if actions else rng.choice(["kill:a", "kill:b", "term:a", "term:b", "kill:ray",
                                                                "term:ray", "kill-worker:ray"])
            how, _, kind = action.partition(":")
            proc = procs[kind]
            assert proc.poll() is None, proc.communicate()[0][-3000:]  # nobody reached 10,000 trials or gave up
            if how == "kill-worker":
                running = [t for t in _trials(study_name) if t.state == TrialState.RUNNING and "node" in (t.system_attrs.get(WORKER) or {})]
                if not running:  # (the driver is between trials or starting): try it again next round
                    actions.append(action)
                    continue
                os.kill(running[0].system_attrs[WORKER]["pid"], signal.SIGKILL)
            else:
                if how == "kill":
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.send_signal(signal.SIGTERM)
                out, _ = proc.communicate(timeout=120)
                if how == "term" and proc.returncode == -signal.SIGTERM:  # before Python ran hps: nothing to keep
                    assert not out, out[-3000:]
                else:
                    assert proc.returncode == (-signal.SIGKILL if how == "kill" else 143), out[-3000:]
                if how == "term" and out:
                    assert "terminated (SIGTERM); rerun the same command" in " ".join(out.split()), out[-3000:]
                    assert "Traceback" not in out, out[-3000:]
                procs[kind] = start(kind)
            done.append(action)
        for proc in procs.values():  # stop the chaos: a clean stop, then all three to one target
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=120)
        target = len([t for t in _trials(study_name) if t.state in FINISHED]) + 8
        procs = {kind: start(kind, target) for kind in extra}
        for proc in procs.values():
            out, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, out[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert {"kill:a", "term:b", "kill-worker:ray", "term:ray", "kill:ray"} <= set(done)
    ts = _trials(study_name)
    by_state = {s: [t for t in ts if t.state == s] for s in TrialState}
    assert not by_state[TrialState.RUNNING] and not by_state[TrialState.WAITING]
    finished = by_state[TrialState.COMPLETE] + by_state[TrialState.PRUNED]
    assert target <= len(finished) <= target + 2, (target, len(finished))
    assert sum(len(v) for v in by_state.values()) == len(ts)
    for t in by_state[TrialState.FAIL]:
        assert t.user_attrs.get("fail_reason") in ("interrupted", "terminated", "lost_worker"), t
        assert reason(t), t
    for t in by_state[TrialState.COMPLETE]:
        assert t.values and sorted(t.intermediate_values) == [1, 2], t
    fresh = [json.dumps(t.params, sort_keys=True) for t in ts if "failed_trial" not in t.system_attrs
             and t.params]  # (a trial stopped before it drew anything has none)
    twice = [[(t.number, t.state.name, t.user_attrs.get("fail_reason"), sorted(t.system_attrs),
               (t.system_attrs.get(WORKER) or {}).get("pid"), str(t.datetime_start)) for t in ts
              if json.dumps(t.params, sort_keys=True) == p] for p in {p for p in fresh if fresh.count(p) > 1}]
    assert not twice  # no params drawn twice
    retried = [t.system_attrs["failed_trial"] for t in ts if "failed_trial" in t.system_attrs]
    assert len(retried) == len(set(retried))  # no trial retried twice
    for t in ts:
        if "failed_trial" in t.system_attrs:
            # the original's params (all of them, or those it drew before it was killed; the retry draws the rest)
            assert ts[t.system_attrs["failed_trial"]].params.items() <= t.params.items()
            assert ts[t.system_attrs["failed_trial"]].state == TrialState.FAIL
    ray_stopped = [t for t in by_state[TrialState.FAIL] if "node" in (t.system_attrs.get(WORKER) or {})]
    assert {t.user_attrs["fail_reason"] for t in ray_stopped} >= {"lost_worker"}


def test_a_worker_on_another_node_is_seen_alive_through_its_actor(connected: str) -> None:
    """A trial's worker on another machine cannot be looked at through /proc: its Ray actor, alive
    in the process that ran the trial, keeps the trial (a late heartbeat alone fails nothing)."""
    import ray

    from hps.search.ray import actor_alive
    from hps.search.trials import seen_alive

    ray.init(address=connected, namespace="hps", include_dashboard=None, configure_logging=False)

    @ray.remote(num_cpus=0.1)
    class Probe:
        def who(self) -> tuple[str, int]:
            return ray.get_runtime_context().get_actor_id(), os.getpid()

    actor = Probe.remote()  # type: ignore[attr-defined]
    actor_id, pid = ray.get(actor.who.remote())
    elsewhere = {"host": "another-machine", "boot": "b", "pid": pid, "started": 1, "actor": actor_id}
    assert actor_alive(actor_id, pid) and seen_alive(elsewhere)
    assert not actor_alive(actor_id, pid + 1)  # a restarted actor runs in another process: its trial is lost
    ray.kill(actor)
    deadline = time.time() + 30
    while actor_alive(actor_id, pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not seen_alive(elsewhere)


def test_ray_workers_run_the_pinned_training_function_after_the_file_changed(tmp_path: Path, connected: str,
                                                                               study_name: str) -> None:
    """A ``train.fn`` file ships with the space like a model file: workers run the version the study
    started with while the file on disk holds another, and retrain runs it too."""
    import hps
    from tests.search.test_custom import LOOP

    loop = tmp_path / "loop.py"
    loop.write_text(LOOP)
    base = {**copy.deepcopy(SMALL["base"]), "train": {**SMALL["base"]["train"], "epochs": 2, "fn": "loop.py:fit"}}
    space = load_space(write_space(tmp_path, study_name, study__trials=2, warm_start=[], base=base,
                                   budget={"max_params": 300_000, "max_epochs": 2},
                                   space={"optimizer.lr": {"low": 0.02, "high": 0.2, "log": True},
                                          "train.args.smoothing": {"low": 0.0, "high": 0.2}}))
    loop.write_text(LOOP + "\nraise RuntimeError('a version the study did not start with')\n")
    result = run(space, PG_URL, trials=2, ray=connected, workers=2, cpus_per_trial=1, progress="none")
    assert result.failures == [] and result.counts.get("complete", 0) + result.counts.get("pruned", 0) >= 2
    assert {t.system_attrs["hps:config"]["train"]["fn_sha256"] for t in result.study.trials} == {space.base.train.fn_sha256}
    assert all(WORKER in t.system_attrs for t in result.study.trials)
    out = tmp_path / "best.yaml"
    hps.export(result, out)
    refused = subprocess.run([sys.executable, "-m", "hps.trainers", str(out), "--out", str(tmp_path / "r")],
                             capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 2 and "the training code changed since this config was made" in refused.stderr
    loop.write_text(LOOP)
    alone = subprocess.run([sys.executable, "-m", "hps.trainers", str(out), "--out", str(tmp_path / "r")],
                           capture_output=True, text=True, cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-2000:]


def test_rechecks_run_on_ray_workers(tmp_path: Path, connected: str, study_name: str) -> None:
    """``study.recheck`` on Ray: the queued rechecks are asked by the workers like any trial, run to
    the end with the next seed, and no worker trains a search trial past the target."""
    from hps.search.record import CONFIG, RECHECK_OF, trial_info

    sound = [{"model.width": 0.25, "optimizer.lr": 0.05}, {"model.width": 0.125, "optimizer.lr": 0.05}]
    space = load_space(write_space(tmp_path, study_name, study__recheck=2, study__pruner={"name": "none"},
                                   warm_start=sound))
    result = run(space, PG_URL, trials=3, ray=connected, workers=3, cpus_per_trial=0.5, progress="none")
    ts = _trials(study_name)
    rechecks = [t for t in ts if RECHECK_OF in t.system_attrs]
    assert len(rechecks) == 2 and all(t.state == TrialState.COMPLETE and WORKER in t.system_attrs for t in rechecks)
    assert all(trial_info(t, CONFIG)["train"]["seed"] == trial_info(ts[t.system_attrs[RECHECK_OF]], CONFIG)["train"]["seed"] + 1
               for t in rechecks)
    assert 3 <= result.finished <= 4 and result.rechecks == 2  # (workers asking at one instant may make a 4th)
    assert not [t for t in ts if t.state in (TrialState.WAITING, TrialState.RUNNING)]
