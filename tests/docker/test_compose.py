"""docker-compose.yml: validated offline, checked for what the validator cannot see, and run
natively: the exact commands and environment of its services, hosts mapped to 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

from tests.conftest import MINI, REPO, free_port, kill_all, pids_using
from tests.search.conftest import opened, trials, write_space

BIN = Path(sys.executable).parent
COMMANDS = ("hps ", "ray ", "optuna-dashboard ")


def resolved(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file as docker-compose resolves it (variables from .env.example + env)."""
    out = subprocess.run(["docker-compose", "--env-file", ".env.example", "config"], cwd=REPO, capture_output=True,
                         text=True, check=True, env={**os.environ, **(env or {})})
    return yaml.safe_load(out.stdout)


def test_compose_file_is_valid_offline() -> None:
    proc = subprocess.run(["docker-compose", "--env-file", ".env.example", "config", "-q"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_compose_needs_a_password_from_the_environment() -> None:
    proc = subprocess.run(["docker-compose", "config", "-q"], cwd=REPO, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"})
    assert proc.returncode != 0 and "set POSTGRES_PASSWORD in .env" in proc.stderr
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_what_the_validator_cannot_check() -> None:
    cfg = resolved()
    services = cfg["services"]
    assert set(services) == {"postgres", "ray-head", "ray-worker", "search", "dashboard"}
    for name, svc in services.items():
        if name != "postgres":  # the official image's own server
            assert svc["command"].startswith(COMMANDS), name
        for port in svc.get("ports", []):
            host_ip = port["host_ip"] if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert {"pgdata", "artifacts", "data"} <= set(cfg["volumes"])  # named volumes persist
    vol = services["postgres"]["volumes"][0]
    assert (vol["source"] if isinstance(vol, dict) else vol.split(":")[0]) == "pgdata"
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["ray-head"]
    assert services["search"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["search"]["environment"]["HPS_STORAGE"].startswith("postgresql://hps:")
    raw = (REPO / "docker-compose.yml").read_text() + (REPO / ".env.example").read_text()
    assert "change-me" not in (REPO / "docker-compose.yml").read_text() and "POSTGRES_PASSWORD=change-me" in raw
    for dockerfile in ("worker", "dashboard"):
        text = (REPO / "docker" / f"{dockerfile}.Dockerfile").read_text()
        assert "USER hps" in text and "FROM python:3.11.7-slim-bookworm AS build" in text


# ---- the same topology, natively ------------------------------------------------------------

def _native(svc: dict[str, Any], mapping: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    command = svc["command"]
    env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
    for old, new in mapping.items():
        command = command.replace(old, new)
        env = {k: v.replace(old, new) for k, v in env.items()}
    args = command.split()
    if args[:2] == ["ray", "start"]:  # each container's own address is 127.0.0.1 here too
        args.append("--node-ip-address=127.0.0.1")
    args[0] = str(BIN / args[0])
    return args, env


def _ensure_pg_role() -> None:
    conn = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("select 1 from pg_roles where rolname = 'hps'")
        if not cur.fetchone():
            cur.execute("create role hps login password 'native-test'")
        cur.execute("select 1 from pg_database where datname = 'hps'")
        if not cur.fetchone():
            cur.execute("create database hps owner hps")
    conn.close()


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Postgres (the local server), a Ray head, two Ray workers, the driver on a cut quickstart,
    and the dashboard; torn down by process id."""
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose (Debian package) is needed: make test installs it")
    _ensure_pg_role()
    tmp = tmp_path_factory.mktemp("native")
    space = write_space(tmp, "native-quickstart", study__trials=4)
    ray_tmp = f"/tmp/hpsnative-{os.getpid()}"
    env_vars = {"RAY_PORT": str(free_port()), "RAY_CLIENT_PORT": str(free_port()), "RAY_DASHBOARD_HOST": "127.0.0.1",
                "SPACE": str(space), "WORKERS": "2", "GPUS_PER_TRIAL": "0", "CPUS_PER_TRIAL": "1",
                "HPS_DATA": str(MINI), "HPS_HEARTBEAT_SECONDS": "5", "POSTGRES_PASSWORD": "native-test"}
    cfg = resolved(env_vars)["services"]
    artifacts = tmp / "artifacts"
    mapping = {"@postgres:5432": "@127.0.0.1:5432", "ray-head:": "127.0.0.1:", "/artifacts": str(artifacts)}
    base_env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled"}
    procs: list[subprocess.Popen[str]] = []
    logs = tmp / "logs"
    logs.mkdir()

    def start(name: str, svc: str, **extra: str) -> subprocess.Popen[str]:
        args, env = _native(cfg[svc], mapping)
        out = open(logs / f"{name}.log", "a")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(args, cwd=REPO, env={**base_env, **env, **extra}, stdout=out, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
        procs.append(p)
        return p

    try:
        start("ray-head", "ray-head")
        health = cfg["ray-head"]["healthcheck"]["test"][1].replace("ray status", str(BIN / "ray") + " status")
        for _ in range(120):
            if subprocess.run(health, shell=True, env=base_env, capture_output=True).returncode == 0:
                break
            time.sleep(1)
        else:
            raise AssertionError("ray-head never became healthy: " + (logs / "ray-head.log").read_text()[-2000:])
        # The workers join one after the other, before the driver starts: two Ray nodes starting at
        # once on 2 cores can miss Ray's node-registration timeout (seen in a fresh clone and here).
        # A worker that exits is started again, as compose's `restart: unless-stopped` does.
        for i, name in enumerate(("ray-worker-1", "ray-worker-2")):
            worker = start(name, "ray-worker")
            for _ in range(180):
                status = subprocess.run(health, shell=True, env=base_env, capture_output=True, text=True).stdout
                active = status.split("Active:", 1)[-1].split("Pending:", 1)[0]
                if len(re.findall(r"^\s*\d+ node_", active, re.MULTILINE)) >= 2 + i:  # the head and i + 1 workers
                    break
                if worker.poll() is not None:
                    worker = start(name, "ray-worker")
                time.sleep(1)
            else:
                raise AssertionError(f"{name} never joined: " + (logs / f"{name}.log").read_text()[-2000:])
        dash_port = free_port()
        args, dash_env = _native(cfg["dashboard"], mapping)
        dash_cmd = " ".join(args).replace("--port 8080", f"--port {dash_port}").replace("--host 0.0.0.0", "--host 127.0.0.1")
        search = start("search", "search")
        rc = search.wait(timeout=420)
        assert rc == 0, (logs / "search.log").read_text()[-3000:]
        storage = _native(cfg["search"], mapping)[1]["HPS_STORAGE"]
        export = subprocess.run([str(BIN / "hps"), "export", "native-quickstart", "-o", str(tmp / "best.yaml"),
                                 "--artifacts", str(artifacts)], cwd=REPO, capture_output=True, text=True,
                                env={**os.environ, "HPS_STORAGE": storage})
        assert export.returncode == 0, export.stderr
        dash = subprocess.Popen(dash_cmd.split(), cwd=REPO, env={**base_env, **dash_env}, stdout=open(logs / "dashboard.log", "w"),  # noqa: SIM115
                                stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(dash)
        url = f"http://127.0.0.1:{dash_port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/api/studies", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        yield {"storage": storage, "study": "native-quickstart",
               "dashboard": url, "tmp": tmp, "artifacts": artifacts, "logs": logs}
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        kill_all(ray_tmp)
        assert pids_using(ray_tmp) == []
        import optuna

        with contextlib.suppress(KeyError), opened(_native(cfg["search"], mapping)[1]["HPS_STORAGE"]) as storage:
            optuna.delete_study(study_name="native-quickstart", storage=storage)


@pytest.mark.slow
def test_native_topology_runs_the_study(topology: dict[str, Any]) -> None:
    ts = trials(topology["storage"], topology["study"])
    states = [t.state.name for t in ts]
    assert states.count("COMPLETE") + states.count("PRUNED") >= 4
    nodes = {t.user_attrs["worker"]["pid"] for t in ts if "worker" in t.user_attrs}
    assert len(nodes) == 2  # both worker slots ran trials

    out = topology["tmp"] / "best.yaml"  # written by `hps export` against the native stack
    assert yaml.safe_load(out.read_text())["provenance"]["study"] == topology["study"]

    summaries = json.load(urllib.request.urlopen(f"{topology['dashboard']}/api/studies", timeout=10))["study_summaries"]
    sid = next(s["study_id"] for s in summaries if s["study_name"] == topology["study"])
    data = json.load(urllib.request.urlopen(f"{topology['dashboard']}/api/studies/{sid}", timeout=10))
    assert len(data["trials"]) == len(ts)
    assert [a["filename"] for a in data["artifacts"]] == ["best.yaml"]


# ---- the dashboard in a real browser ----------------------------------------------------------

SCREENSHOTS = Path(os.environ.get("HPS_SCREENSHOTS", REPO / "out" / "screenshots"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium and chromedriver (Debian packages) are needed: make test installs them")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(flag)
    b = webdriver.Chrome(service=Service(driver), options=opts)
    yield b
    b.quit()


def _wait_text(b: Any, *needles: str, timeout: float = 30) -> str:
    deadline = time.time() + timeout
    body = ""
    while time.time() < deadline:
        body = b.find_element("tag name", "body").text
        if all(n in body for n in needles):
            return body
        time.sleep(0.5)
    raise AssertionError(f"{needles} not on the page; it shows: {body[:1500]}")


@pytest.mark.slow
def test_dashboard_in_a_real_browser(topology: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    summaries = json.load(urllib.request.urlopen(f"{topology['dashboard']}/api/studies", timeout=10))["study_summaries"]
    sid = next(s["study_id"] for s in summaries if s["study_name"] == topology["study"])

    # the study page: charts, the intermediate-values chart among them, and the exported artifact
    browser.get(f"{topology['dashboard']}/dashboard/studies/{sid}")
    _wait_text(browser, topology["study"], "Study Artifacts", "best.yaml")
    plots = browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
    curves = [p for p in plots if "Step" in p.text]
    assert curves, "no intermediate-values chart"
    assert curves[0].find_elements(By.CSS_SELECTOR, ".scatterlayer .trace"), "the intermediate-values chart drew no curve"
    browser.save_screenshot(str(SCREENSHOTS / "dashboard-study.png"))

    # the trial list: complete and pruned trials; a pruned trial's reason
    browser.get(f"{topology['dashboard']}/dashboard/studies/{sid}/trials")
    _wait_text(browser, "Complete", "Pruned")
    browser.find_element(By.XPATH, "//*[normalize-space(text())='Trial 0']").click()
    body = _wait_text(browser, "prune_reason", "over budget: params 1.97M > max_params 300k")
    assert "Pruned" in body
    browser.save_screenshot(str(SCREENSHOTS / "dashboard-trials.png"))


@pytest.mark.slow
def test_stock_dashboard_shows_budgets_sortable_and_feasibility(topology: dict[str, Any], browser: Any) -> None:
    """The stock optuna-dashboard (compose's dashboard command) on the postgresql:// study that hps
    ran through Ray: every trial's constraints in its API, the budget figures as sortable columns,
    and infeasible (over-budget) trials filtered out by the dashboard's own feasibility switch."""
    from selenium.webdriver.common.by import By

    summaries = json.load(urllib.request.urlopen(f"{topology['dashboard']}/api/studies", timeout=10))["study_summaries"]
    sid = next(s["study_id"] for s in summaries if s["study_name"] == topology["study"])
    data = json.load(urllib.request.urlopen(f"{topology['dashboard']}/api/studies/{sid}", timeout=10))
    over = next(t for t in data["trials"] if t["number"] == 0)  # the warm start over budget
    assert over["constraints"] == [1_972_792 - 300_000, 0] and over["state"] == "Pruned"
    sortable = {a["key"] for a in data["union_user_attrs"] if a["sortable"]}
    assert {"params", "model_bytes", "macs", "flops", "device_seconds"} <= sortable

    browser.get(f"{topology['dashboard']}/dashboard/studies/{sid}/smartSelection")
    _wait_text(browser, "Include Infeasible trials", "UserAttribute params")
    header = next(h for h in browser.find_elements(By.CSS_SELECTOR, "th") if h.text.startswith("UserAttribute params"))
    column = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "th")].index(header.text)
    header.find_element(By.CSS_SELECTOR, ".MuiTableSortLabel-root").click()
    time.sleep(1)

    def params_column() -> list[float]:
        rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
        cells = [r.find_elements(By.CSS_SELECTOR, "td") for r in rows]
        return [float(c[column].text) for c in cells if len(c) > column and c[column].text]

    shown = params_column()
    assert len(shown) >= 4 and shown == sorted(shown) and max(shown) == 1_972_792
    browser.execute_script("arguments[0].scrollIntoView()", header)
    browser.save_screenshot(str(SCREENSHOTS / "dashboard-budget-table.png"))
    # feasibility is a sortable column too: above 0 exactly for the trials pruned as over budget
    attrs = {t["number"]: {a["key"]: a["value"] for a in t["user_attrs"]} for t in data["trials"]}
    excess = {n: float(a["budget_excess"]) for n, a in attrs.items() if "budget_excess" in a}
    assert excess[0] == pytest.approx((1_972_792 - 300_000) / 300_000)
    assert {n for n, v in excess.items() if v > 0} == {n for n, a in attrs.items()
                                                       if a.get("prune_reason", "").startswith("over budget")}
