"""The compose files, offline: what docker-compose resolves them to, and what its validator cannot
check (ports on 127.0.0.1, secrets never in a URL, one GPU worker per host). The real run of the
whole stack is tests/docker/test_compose_up.py."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

SECRETS = {"POSTGRES_PASSWORD": "p@ss/w#rd:x", "RAY_AUTH_TOKEN": "t0ken"}
FILES = {"single host": ["docker-compose.yml"], "cpu": ["docker-compose.yml", "docker/cpu.yml"],
         "cluster head": ["docker-compose.yml", "docker/cluster.yml"], "worker host": ["docker/worker.yml"]}


def compose(files: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    flags = [a for f in files for a in ("-f", f)]
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(["docker-compose", "--env-file", ".env.example", *flags, *args], cwd=REPO, capture_output=True,
                          text=True, env={**clean, **env})


def resolved(files: list[str], **extra: str) -> dict[str, Any]:
    out = compose(files, {**SECRETS, "HEAD_IP": "10.0.0.5", "NODE_IP": "10.0.0.6", **extra}, "config")
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def host_ip(port: str | dict[str, Any]) -> str:
    return port["host_ip"] if isinstance(port, dict) else str(port).split(":")[0]


@pytest.mark.parametrize("setup", FILES)
def test_every_setup_resolves(setup: str) -> None:
    assert resolved(FILES[setup])["services"]


@pytest.mark.parametrize("missing", SECRETS)
def test_the_example_env_is_refused_until_its_secrets_are_set(missing: str) -> None:
    """.env.example ships no password or token: copied as it is, `up` refuses with one line naming the variable."""
    example = (REPO / ".env.example").read_text()
    assert re.search(rf"^{missing}=$", example, re.MULTILINE)  # empty, not a placeholder that would pass
    others = {k: v for k, v in SECRETS.items() if k != missing}
    proc = compose(FILES["single host"], others, "config", "-q")
    assert proc.returncode != 0
    line = proc.stderr.strip()
    assert "\n" not in line and f"set {missing} in .env" in line
    assert ".env" in (REPO / ".gitignore").read_text().split()


@pytest.mark.parametrize("setup", FILES)
def test_the_password_never_sits_in_a_url(setup: str) -> None:
    text = yaml.safe_dump(resolved(FILES[setup]))
    assert "p@ss" not in re.sub(r"(PGPASSWORD|POSTGRES_PASSWORD): .*", "", text)  # only where libpq / initdb read it
    for svc in resolved(FILES[setup])["services"].values():
        env = svc.get("environment") or {}
        if "HPS_STORAGE" in env:
            assert re.fullmatch(r"postgresql://hps@[\w.-]+:\d+/hps", env["HPS_STORAGE"]), env["HPS_STORAGE"]
            assert env["PGPASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
        if "RAY_AUTH_TOKEN" in env or str(svc.get("command", "")).startswith(("ray ", "sh -c 'ray")):
            assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == SECRETS["RAY_AUTH_TOKEN"]


@pytest.mark.parametrize("setup", ["single host", "cpu"])
def test_ports_bind_to_localhost(setup: str) -> None:
    for name, svc in resolved(FILES[setup])["services"].items():
        for port in svc.get("ports", []):
            assert host_ip(port) == "127.0.0.1", (name, port)


def test_a_cluster_head_publishes_on_its_private_address_only() -> None:
    services = resolved(FILES["cluster head"])["services"]
    assert {host_ip(p) for p in services["postgres"]["ports"]} == {"127.0.0.1", "10.0.0.5"}
    for name in ("ray-head", "ray-worker", "search"):
        assert services[name]["network_mode"] == "host"
        assert "--node-ip-address=10.0.0.5" in services[name]["command"]
    assert "--dashboard-host=127.0.0.1" in services["ray-head"]["command"]


def test_one_gpu_worker_per_host() -> None:
    """GPUs are reserved by one service only, which sees them all (Ray packs fractional trials
    inside it); nothing in the README scales it, which would count the host's GPUs once per copy."""
    for setup in ("single host", "worker host"):
        services = resolved(FILES[setup])["services"]
        gpu = [n for n, s in services.items() if s.get("deploy", {}).get("resources", {}).get("reservations")]
        assert gpu == ["ray-worker"], setup
        devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"capabilities": ["gpu"], "count": "all", "driver": "nvidia"}]
    readme = (REPO / "README.md").read_text()
    assert "--scale ray-worker=" not in readme  # the README warns against it, never does it
    cpu = resolved(FILES["cpu"])["services"]
    assert cpu["ray-worker"]["profiles"] == ["gpu"] and "deploy" not in cpu["cpu-worker"]
    assert cpu["search"]["environment"]["GPUS_PER_TRIAL"] == "0"


def test_services_and_their_images() -> None:
    services = resolved(FILES["single host"])["services"]
    assert set(services) == {"postgres", "ray-head", "ray-worker", "search", "dashboard"}
    assert services["ray-head"]["build"]["target"] == "ray"  # Ray alone: no torch, no CUDA
    assert services["ray-worker"]["build"]["target"] == services["search"]["build"]["target"] == "worker"
    assert "data:/data:rw" in services["ray-worker"]["volumes"] and services["ray-worker"]["environment"]["HPS_DATA"] == "/data"
    assert services["search"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert {"pgdata", "artifacts", "data"} <= set(resolved(FILES["single host"])["volumes"])
    # base images and the package index are variables whose defaults are the official ones
    assert services["postgres"]["image"] == "postgres:15.10-bookworm"
    assert services["ray-head"]["build"]["args"]["PYTHON_IMAGE"] == "python:3.11.7-slim-bookworm"
    assert services["ray-head"]["build"]["args"]["PIP_INDEX_URL"] == "https://pypi.org/simple"
    mirror = resolved(FILES["single host"], PIP_INDEX_URL="http://mirror.local/simple", PYTHON_IMAGE="local/python:3.11")
    assert mirror["services"]["dashboard"]["build"]["args"]["PIP_INDEX_URL"] == "http://mirror.local/simple"
    assert mirror["services"]["ray-worker"]["build"]["args"]["PYTHON_IMAGE"] == "local/python:3.11"
    for dockerfile in ("hps", "dashboard"):
        text = (REPO / "docker" / f"{dockerfile}.Dockerfile").read_text()
        assert "USER hps" in text and "ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm" in text


def test_the_build_context_leaves_out_what_images_do_not_need() -> None:
    ignore = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert ignore[0] == "*" and {"!pyproject.toml", "!README.md", "!src/", "!search/", "!trainers/", "!spaces/"} <= set(ignore)


@pytest.mark.parametrize("setup", ["single host", "cpu"])
def test_your_own_folder_reaches_every_container_that_runs_trials(setup: str) -> None:
    """Spaces, model files and images of the user's own sit in HPS_MINE (default ./mine), read-only
    at /app/mine in the driver and every worker: a space there names them relative to itself."""
    services = resolved(FILES[setup], HPS_MINE="/srv/mine")["services"]
    runners = {"search", "cpu-worker"} if setup == "cpu" else {"search", "ray-worker"}
    for name in runners:
        assert "/srv/mine:/app/mine:ro" in services[name]["volumes"], name
    assert "/app/mine" not in yaml.safe_dump(services["dashboard"]) and "/app/mine" not in yaml.safe_dump(services["postgres"])
