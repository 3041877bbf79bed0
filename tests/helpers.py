"""Helpers the tests share (not fixtures): a free port and waiting for it, waiting for a
condition, stopping a training at an epoch, a fake study of N trials, a process that is gone,
and a CPU hog."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(fn: Callable[[], Any], seconds: float = 30, every: float = 0.2, what: str = "a condition") -> Any:
    """Poll ``fn`` (errors count as not yet) until it returns something true; return that."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if value := fn():
                return value
        time.sleep(every)
    raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")


def wait_http(url: str, seconds: float = 30) -> bytes:
    """Wait until ``url`` answers (a server starting on a port); return its body."""
    return wait_until(lambda: urllib.request.urlopen(url, timeout=2).read() or b" ", seconds, what=url)  # type: ignore[no-any-return]


class Killed(Exception):
    """What :func:`kill_at` raises: a training stopped as if its process died."""


def kill_at(epoch: int) -> Callable[[int, dict[str, float]], None]:
    """A trainer's report hook that stops the training at ``epoch`` (as a killed process would)."""
    def report(e: int, metrics: dict[str, float]) -> None:
        if e == epoch:
            raise Killed
    return report


def fake_trial(study: optuna.Study, state: TrialState, worker: dict[str, Any] | None, value: float = 0.5) -> int:
    """One trial of one param (``lr``) in ``state``, ``worker`` stored as its ``hps:worker``."""
    from hps.search.record import WORKER

    trial = study.ask({"lr": FloatDistribution(1e-4, 1.0, log=True)})
    if worker is not None:
        trial.storage.set_trial_system_attr(trial._trial_id, WORKER, worker)
    if state != TrialState.RUNNING:
        study.tell(trial, value, state=state)
    return trial.number


def fake_study(storage: Any, n: int, state: TrialState = TrialState.COMPLETE, name: str | None = None) -> optuna.Study:
    """A study of ``n`` trials in ``state`` (no worker), for tests of what reads a study."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    for i in range(n):
        fake_trial(study, state, None, value=i / max(n, 1))
    return study


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(proc.stdout)


def other_process(run: str = "") -> dict[str, Any]:
    """The worker identity of another live process on this machine (this one's parent)."""
    from hps.search.trials import _started, identity

    ppid = os.getppid()
    return {**identity(run), "pid": ppid, "started": _started(ppid)}


@contextlib.contextmanager
def cpu_hog(per_core: int = 1) -> Iterator[None]:
    """A busy loop per core (``per_core`` each), in processes of their own, while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range((os.cpu_count() or 1) * per_core)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


class TcpProxy:
    """A TCP proxy on a free local port to ``target`` (host, port) that a test can cut (every
    connection dropped, new ones refused: a network or server outage that only its clients see)."""

    def __init__(self, target: tuple[str, int]) -> None:
        import threading

        self.target, self.port = target, free_port()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.server: socket.socket | None = None
        self.open()

    def open(self) -> None:
        import threading

        self.server = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = server.accept()
                if self.server is not server:  # cut meanwhile
                    client.close()
                    return
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self.server is not None:
            with contextlib.suppress(OSError):
                self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() (a close alone may not)
            self.server.close()
            self.server = None
        with self.lock:
            for s in self.conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
            self.conns = []
