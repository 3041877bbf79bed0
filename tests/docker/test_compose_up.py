"""``docker compose up`` for real, on a local Docker engine (CPU only): the project's images built
against a pip mirror, the whole stack up with docker/cpu.yml, a study run through Ray on PostgreSQL,
a worker container killed mid-trial, ``down`` and ``up`` resuming the study, ``hps export`` through
``docker-compose run``, the stock optuna-dashboard through its published port in Chromium.

Runs with ``make compose-test`` (``HPS_COMPOSE_TEST=1``); engine, base images and mirror:
tests/docker/engine.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hps.search.record import CHECKPOINT, DATA, RESUMED_FROM, WORKER, reason, stored_figures
from hps.trainers.data import file_sha256
from tests.browser import chromium
from tests.conftest import MINI, REPO
from tests.docker import engine as E
from tests.helpers import free_port
from tests.search.conftest import SMALL

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("HPS_COMPOSE_TEST") != "1",
                                                   reason="the real compose run: make compose-test")]
PROJECT = "hpstest"
PASSWORD = "p@ss/w#rd:x"  # every character that breaks a URL pasted raw
STUDY, TARGET = "compose-test", 10
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SCREENSHOTS = Path(os.environ.get("HPS_SCREENSHOTS", REPO / "out" / "screenshots"))


class Stack:
    """docker-compose on this repo's files, project ``hpstest``, with a test .env."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.files = ["-f", "docker-compose.yml", "-f", "docker/cpu.yml", "-f", str(tmp / "test.yml")]

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
        return E.run("docker-compose", "-p", PROJECT, "--env-file", str(self.tmp / ".env"), *self.files, *args,
                     env=self.env, timeout=timeout, check=check)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return E.run("docker", *args, env=self.env, check=check)

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def logs(self, *services: str) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", *services, check=False).stdout[-6000:]

    def storage(self) -> optuna.storages.RDBStorage:
        url = f"postgresql+psycopg2://hps@127.0.0.1:{self.env['POSTGRES_PORT']}/hps"
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"password": PASSWORD}})

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        storage = self.storage()
        try:
            return optuna.load_study(study_name=STUDY, storage=storage).get_trials()
        except KeyError:
            return []
        finally:
            storage.engine.dispose()

    def wait(self, what: str, pred: Any, timeout: float, *services: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if got := pred():
                    return got
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}:\n{self.logs(*services)}")

    def search_exit(self) -> int | None:
        ids = self.containers("search")
        if not ids:
            return None
        state = json.loads(self.docker("inspect", ids[0]).stdout)[0]["State"]
        return None if state["Running"] else int(state["ExitCode"])


def _space(tmp: Path) -> Path:
    space = json.loads(json.dumps(SMALL))
    space["study"].update(name=STUDY, trials=TARGET)
    space["study"]["pruner"] = {"name": "median", "args": {"n_startup_trials": 4, "n_warmup_steps": 3}}
    space["base"]["data"]["subset"] = 4000
    space["base"]["train"]["epochs"] = 6
    space["budget"]["max_epochs"] = 6
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if missing := E.missing_tools():
        pytest.fail(f"{', '.join(missing)} missing: make system-deps installs them")
    tmp = tmp_path_factory.mktemp("compose")
    env_file = (REPO / ".env.example").read_text()
    env_file = env_file.replace("POSTGRES_PASSWORD=\n", f"POSTGRES_PASSWORD={PASSWORD}\n")
    env_file = env_file.replace("RAY_AUTH_TOKEN=\n", "RAY_AUTH_TOKEN=" + os.urandom(16).hex() + "\n")
    (tmp / ".env").write_text(env_file)
    # the test's own space, mounted where the driver reads it (bases resolve next to it, in the image)
    (tmp / "test.yml").write_text(yaml.safe_dump({"services": {"search": {"volumes": [
        f"{_space(tmp)}:/app/spaces/compose-test.yaml:ro"]}}}))
    seen: dict[str, Any] = {"tmp": tmp}
    with E.engine() as engine:
        base = E.base_images(engine)
        ports = {"POSTGRES_PORT": str(free_port()), "DASHBOARD_PORT": str(free_port()), "RAY_DASHBOARD_PORT": str(free_port())}
        env = {**engine, **base, **ports, "SPACE": "spaces/compose-test.yaml", "WORKERS": "2", "CPUS_PER_TRIAL": "1",
               "HPS_HEARTBEAT_SECONDS": "5", "HPS_CHECKPOINT_SECONDS": "0", "COMPOSE_HTTP_TIMEOUT": "300"}
        s = Stack(env, tmp)
        E.check_disk(engine, ("hps-worker:0.1.0", "hps-ray:0.1.0", "hps-dashboard:0.1.0"))
        with E.pip_mirror(engine) as mirror:
            s.env.update(mirror)
            s.compose("build", "ray-head", "ray-worker", "dashboard", timeout=1800)
        s.compose("down", "-v", "--remove-orphans", check=False)  # leftovers of an interrupted run
        try:
            # the data lands once in the shared volume: the mini CIFAR file as /data/cifar10.npz
            s.compose("run", "--rm", "--no-deps", "-v", f"{MINI}:/in.npz:ro", "--entrypoint", "cp", "search",
                      "/in.npz", "/data/cifar10.npz")
            s.compose("up", "-d", "--scale", "cpu-worker=2")
            seen["first"] = s.wait("3 finished trials", lambda: len([t for t in s.trials() if t.state in FINISHED]) >= 3,
                                   600, "search", "cpu-worker")
            # kill the worker container of a trial that has reported an epoch, early in its 6 (one near its end
            # could finish, or be pruned from epoch 4 on, between this look and the kill: then no FAIL comes)
            running = s.wait("a running trial past epoch 1", lambda: [t for t in s.trials() if t.state == TrialState.RUNNING
                                                                     and 1 <= len(t.intermediate_values) <= 2], 300, "search")
            victim = running[0]
            host = victim.system_attrs[WORKER]["host"]
            s.docker("kill", host)  # a container's hostname is its short id
            seen["killed"] = (victim.number, host)
            s.wait("the killed trial's FAIL", lambda: s.trials()[victim.number].state == TrialState.FAIL, 120, "search")
            # down mid-study (not -v): what finished must survive, and not be run again
            s.wait("5 finished trials", lambda: len([t for t in s.trials() if t.state in FINISHED]) >= 5, 600, "search")
            seen["before_down"] = {t.number: (t.state, t.values, t.params) for t in s.trials() if t.state in FINISHED}
            s.compose("down")
            s.compose("up", "-d", "--scale", "cpu-worker=2")
            s.wait("the driver to finish", lambda: s.search_exit() is not None, 900, "search", "cpu-worker")
            seen["search_exit"], seen["search_log"] = s.search_exit(), s.logs("search")
            seen["trials"] = s.trials()
            # export through the driver's image, into the artifacts volume
            export = s.compose("run", "--rm", "--no-deps", "search", "hps", "export", STUDY, "-o", "/artifacts/best.yaml")
            seen["export_out"] = export.stdout + export.stderr
            seen["export"] = s.compose("run", "--rm", "--no-deps", "--entrypoint", "cat", "search", "/artifacts/best.yaml").stdout
            # Ray's token: a process without the cluster's token is refused by the head
            seen["wrong_token"] = s.compose("run", "--rm", "--no-deps", "-e", "RAY_AUTH_TOKEN=" + "0" * 32, "search",
                                            "ray", "status", "--address=ray-head:6379", check=False, timeout=120)
            seen["right_token"] = s.compose("run", "--rm", "--no-deps", "search", "ray", "status",
                                            "--address=ray-head:6379", check=False, timeout=120)
            # train.compile: inductor builds its kernels with a C compiler at run time, which the image carries
            seen["compiled"] = s.compose(
                "run", "--rm", "--no-deps", "search", "hps", "run", "spaces/compose-test.yaml", "--no-live",
                "--set", "study.name=compiled", "--set", "study.trials=1", "--set", "warm_start=[]",
                "--set", "space.model.width=null",  # the base's width, within the budget: the trial trains
                "--set", "fixed.train.compile=true", "--set", "fixed.train.epochs=1", "--set", "budget.max_epochs=1",
                "--set", "fixed.data.subset=500", check=False, timeout=900)
            storage = s.storage()
            try:
                seen["compiled_trials"] = optuna.load_study(study_name="compiled", storage=storage).get_trials()
            except KeyError:
                seen["compiled_trials"] = []
            finally:
                storage.engine.dispose()
            seen["dashboard"] = f"http://127.0.0.1:{env['DASHBOARD_PORT']}"
            s.wait("the dashboard", lambda: urllib.request.urlopen(f"{seen['dashboard']}/api/studies", timeout=3), 120, "dashboard")
            seen["stack"] = s
            yield seen
        finally:
            s.compose("down", "-v", "--remove-orphans", check=False)
            E.prune(engine)


def test_the_study_finishes_on_the_stack(stack: dict[str, Any]) -> None:
    assert stack["search_exit"] == 0, stack["search_log"]
    ts = stack["trials"]
    finished = [t for t in ts if t.state in FINISHED]
    assert TARGET <= len(finished) <= TARGET + 2  # in-flight trials finish when the target is reached
    hosts = {t.system_attrs[WORKER]["host"] for t in finished if WORKER in t.system_attrs}
    assert len(hosts) >= 2  # trials ran in the cpu-worker containers, not in the driver
    assert all(t.system_attrs[DATA]["sha256"] == file_sha256(str(MINI)) for t in finished if DATA in t.system_attrs)


def test_a_killed_worker_fails_its_trial_and_the_retry_runs(stack: dict[str, Any]) -> None:
    number, host = stack["killed"]
    ts = {t.number: t for t in stack["trials"]}
    killed = ts[number]
    assert killed.state == TrialState.FAIL
    assert "no heartbeat from its worker" in reason(killed) and host in reason(killed)
    retries = [t for t in ts.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].state in (*FINISHED, TrialState.FAIL)  # FAIL only if the `down` caught it too
    if CHECKPOINT in killed.system_attrs and retries[0].state in FINISHED:  # it trained: from the checkpoint
        assert retries[0].system_attrs.get(RESUMED_FROM) == {"trial": number, "epoch": killed.system_attrs[CHECKPOINT]["epoch"]}, (
            retries[0].state, retries[0].system_attrs)


def test_down_and_up_resume_without_rerunning(stack: dict[str, Any]) -> None:
    now = {t.number: (t.state, t.values, t.params) for t in stack["trials"]}
    for number, before in stack["before_down"].items():
        assert now[number] == before  # finished trials kept as they were
    # no finished point trained twice, but for Optuna's retries of failed (killed/stopped) trials
    retried = {t.number for t in stack["trials"] if "failed_trial" in t.system_attrs}
    retried |= {t.system_attrs["failed_trial"] for t in stack["trials"] if "failed_trial" in t.system_attrs}
    points = [tuple(sorted(t.params.items())) for t in stack["trials"] if t.state in FINISHED and t.number not in retried]
    assert len(points) == len(set(points))


def test_compiled_trials_train_in_the_worker_image(stack: dict[str, Any]) -> None:
    """``train.compile: true`` in the image's Python: inductor compiles its kernels with the image's
    C compiler (the image had none: every such trial failed)."""
    out = stack["compiled"]
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    (t,) = stack["compiled_trials"]
    assert t.state == TrialState.COMPLETE and t.system_attrs["hps:config"]["train"]["compile"] is True


def test_export_through_compose_run(stack: dict[str, Any]) -> None:
    exported = yaml.safe_load(stack["export"])
    best = max((t for t in stack["trials"] if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert exported["provenance"]["study"] == STUDY and exported["provenance"]["trial"] == best.number
    assert PASSWORD not in stack["export"] and "p@ss" not in stack["export"]  # nothing of the password
    assert exported["provenance"]["weights"]["file"] == "best.pt"  # the weights beside it, in the artifacts volume
    assert exported["provenance"]["weights"]["bytes"] == stored_figures(best)["model_bytes"]


def test_ray_refuses_a_process_without_the_token(stack: dict[str, Any]) -> None:
    right, wrong = stack["right_token"], stack["wrong_token"]
    assert right.returncode == 0 and "node_" in right.stdout, right.stdout + right.stderr
    assert wrong.returncode != 0 and "node_" not in wrong.stdout
    assert "auth" in (wrong.stdout + wrong.stderr).lower()


def test_no_password_in_any_log(stack: dict[str, Any]) -> None:
    s: Stack = stack["stack"]
    logs = s.compose("logs", "--no-color", check=False).stdout + stack["export_out"]
    assert PASSWORD not in logs and "w#rd" not in logs


def test_stock_dashboard_through_its_published_port(stack: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    url = stack["dashboard"]
    summaries = json.load(urllib.request.urlopen(f"{url}/api/studies", timeout=10))["study_summaries"]
    sid = next(s["study_id"] for s in summaries if s["study_name"] == STUDY)
    data = json.load(urllib.request.urlopen(f"{url}/api/studies/{sid}", timeout=10))
    assert len(data["trials"]) == len(stack["trials"])
    over = next(t for t in data["trials"] if t["number"] == 0)  # the warm start over budget
    assert over["state"] == "Pruned" and over["constraints"][0] > 0
    assert "params" in {a["key"] for a in data["union_user_attrs"] if a["sortable"]}
    best = max((t for t in stack["trials"] if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    listed = next(t for t in data["trials"] if t["number"] == best.number)["artifacts"]
    assert [a["filename"] for a in listed] == ["weights.pt"]  # the best trial's kept weights, from the shared volume
    body = urllib.request.urlopen(f"{url}/artifacts/{sid}/{best._trial_id}/{listed[0]['artifact_id']}", timeout=10).read()
    assert len(body) == stored_figures(best)["model_bytes"]

    with chromium(1400, 1000) as b:
        b.get(f"{url}/dashboard/studies/{sid}")
        deadline = time.time() + 30
        while STUDY not in b.find_element(By.TAG_NAME, "body").text and time.time() < deadline:
            time.sleep(0.5)
        plots = b.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
        curves = [p for p in plots if "Step" in p.text]
        assert curves and curves[0].find_elements(By.CSS_SELECTOR, ".scatterlayer .trace"), "no learning curve drawn"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        b.save_screenshot(str(SCREENSHOTS / "compose-dashboard.png"))
        b.get(f"{url}/dashboard/studies/{sid}/trials")
        deadline = time.time() + 30
        while "Fail" not in (body := b.find_element(By.TAG_NAME, "body").text) and time.time() < deadline:
            time.sleep(0.5)
        assert "Complete" in body and "Pruned" in body and "Fail" in body
