"""A real Docker engine for the compose test, on a machine without Docker Hub.

- ``dockerd`` (Debian's docker.io) with its own data, exec and socket dirs under ``HPS_DOCKER_CACHE``
  (default ``~/.cache/hps-docker``; images survive between runs there), stopped by process id;
  ``DOCKER_HOST`` set already means "use that engine".
- stand-ins for the official base images, made offline: Debian bookworm by debootstrap, then
  ``local/python:3.11`` and ``local/postgres:15`` (tests/docker/images/).
- a pip mirror: this machine's wheels for hps and its images (``pip download``, which reads the
  machine's local indexes first), served as a PEP 503 index on the Docker bridge's gateway address,
  given to the builds as ``PIP_INDEX_URL`` as a user's corporate mirror would be.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGES = Path(__file__).resolve().parent / "images"
CACHE = Path(os.environ.get("HPS_DOCKER_CACHE", Path.home() / ".cache" / "hps-docker"))
DEBIAN_MIRROR = os.environ.get("HPS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# what the three images install, resolved on this machine into the mirror
MIRRORED = [str(REPO), "ray[default,client,tune]==2.60.0", "optuna==5.0.*", "optuna-dashboard==0.21.*",
            "psycopg[binary]>=3.2", "plotly>=5", "setuptools>=68", "wheel"]


def run(*cmd: str, env: dict[str, str] | None = None, timeout: float = 900, check: bool = True,
        cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def missing_tools() -> list[str]:
    return [t for t in ("dockerd", "docker", "docker-compose", "debootstrap") if shutil.which(t) is None]


@contextlib.contextmanager
def engine() -> Iterator[dict[str, str]]:
    """``{"DOCKER_HOST": ...}`` of a running engine; one this function started is stopped after."""
    if os.environ.get("DOCKER_HOST"):
        yield {"DOCKER_HOST": os.environ["DOCKER_HOST"]}
        return
    d = CACHE / "engine"
    d.mkdir(parents=True, exist_ok=True)
    sock = d / "sock"
    env = {"DOCKER_HOST": f"unix://{sock}"}
    log = open(d / "dockerd.log", "ab")  # noqa: SIM115 - open for the daemon's lifetime
    proc = subprocess.Popen(["dockerd", "--data-root", str(d / "root"), "--exec-root", str(d / "exec"),
                             "--pidfile", str(d / "pid"), "-H", f"unix://{sock}"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while run("docker", "version", env=env, check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start; see {d / 'dockerd.log'}")
            time.sleep(0.5)
        yield env
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def check_disk(env: dict[str, str], images: tuple[str, ...]) -> None:
    """Fail up front, saying so, when the images to build cannot fit (the worker image is 7 GB)."""
    need = 3 + (20 if not all(has_image(env, tag) for tag in images) else 0)
    free = shutil.disk_usage(CACHE).free / 2**30
    if free < need:
        raise RuntimeError(f"{free:.1f} GiB free under {CACHE}; the compose test needs about {need} GiB "
                           "(images, volumes); free some space (e.g. old Docker data roots) and rerun")


def prune(env: dict[str, str]) -> None:
    """Drop images that rebuilds left untagged, so repeated runs do not fill the disk."""
    run("docker", "image", "prune", "-f", env=env, check=False)


def has_image(env: dict[str, str], tag: str) -> bool:
    return run("docker", "image", "inspect", tag, env=env, check=False).returncode == 0


def base_images(env: dict[str, str]) -> dict[str, str]:
    """Build (once) the stand-ins for python:3.11-slim and postgres:15; returns the compose variables."""
    if not has_image(env, "local/debian:bookworm"):
        rootfs = CACHE / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        run("debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR, timeout=600)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", "local/debian:bookworm"], stdin=tar.stdout, check=True,
                       env={**os.environ, **env}, capture_output=True)
        tar.wait()
        shutil.rmtree(rootfs, ignore_errors=True)
    # tagged by the content of tests/docker/images/: an edited stand-in is built again
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(IMAGES.iterdir()))).hexdigest()[:10]
    tags = {"python": f"local/python:3.11-{digest}", "postgres": f"local/postgres:15-{digest}"}
    for name, tag in tags.items():
        if not has_image(env, tag):
            run("docker", "build", "-q", "-t", tag, "-f", str(IMAGES / f"{name}.Dockerfile"), str(IMAGES), env=env)
    return {"PYTHON_IMAGE": tags["python"], "POSTGRES_IMAGE": tags["postgres"]}


def bridge_gateway(env: dict[str, str]) -> str:
    cfg = json.loads(run("docker", "network", "inspect", "bridge", env=env).stdout)[0]["IPAM"]["Config"][0]
    return cfg.get("Gateway") or str(ipaddress.ip_network(cfg["Subnet"])[1])


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheelhouse() -> Path:
    """This machine's wheels for everything the images install, as a PEP 503 ``simple/`` tree."""
    wheels, simple = CACHE / "wheels", CACHE / "simple"
    wanted = hashlib.sha256(((REPO / "pyproject.toml").read_text() + repr(MIRRORED)).encode()).hexdigest()[:10]
    stamp = CACHE / f"wheels-{wanted}.done"  # a dependency added to pyproject.toml is downloaded too
    if not stamp.exists():
        wheels.mkdir(parents=True, exist_ok=True)
        run(sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels), *MIRRORED, timeout=1800)
        stamp.touch()
    shutil.rmtree(simple, ignore_errors=True)
    projects: dict[str, list[str]] = {}
    for f in sorted(os.listdir(wheels)):
        if f.startswith("hps-"):  # hps itself comes from the build context
            continue
        name = f.split("-")[0] if f.endswith(".whl") else f.rsplit("-", 1)[0]
        projects.setdefault(_normalize(name), []).append(f)
    for name, files in projects.items():
        (simple / name).mkdir(parents=True)
        links = "".join(f'<a href="../../wheels/{f}">{f}</a>\n' for f in files)
        (simple / name / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    return CACHE


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def pip_mirror(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Serve the wheelhouse on the bridge gateway (reachable from builds, not from elsewhere)."""
    root, host = wheelhouse(), bridge_gateway(env)
    server = http.server.ThreadingHTTPServer((host, 0), partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield {"PIP_INDEX_URL": f"http://{host}:{server.server_port}/simple", "PIP_TRUSTED_HOST": host}
    finally:
        server.shutdown()
        server.server_close()
