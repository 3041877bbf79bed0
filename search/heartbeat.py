"""A worker's heartbeat from a process of its own, which work holding the worker's GIL (a C
extension, a long regular expression) cannot starve the way it starves Optuna's heartbeat thread.

:func:`beating` starts it beside a worker on an RDB storage with heartbeats: every interval it
records a heartbeat for each RUNNING trial whose ``hps:worker`` is that worker's process (host,
boot, pid and start time), and it ends when the worker's process does (its stdin closes). Optuna's
own heartbeat thread goes on as well. Its database connection opens per beat (application name
``hps-heartbeat``), so it adds none to a worker's pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from optuna.storages import BaseStorage

from hps.search.optuna_compat import heartbeat_on, rdb_backend


@contextlib.contextmanager
def beating(storage: BaseStorage, worker: dict[str, Any]) -> Iterator[None]:
    """While the block runs, a process beats for the trials ``worker`` (this process) runs."""
    backend = rdb_backend(storage)
    if backend is None or not heartbeat_on(storage) or not worker.get("started"):
        yield
        return
    job = {"url": backend.engine.url.render_as_string(hide_password=False), "every": backend.heartbeat_interval,
           "worker": {k: worker.get(k) for k in ("host", "boot", "pid", "started")}}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-m", "hps.search.heartbeat"], stdin=subprocess.PIPE, text=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(job) + "\n")  # the URL (with its password) never shows in a process list
        proc.stdin.flush()
        yield
    finally:
        with contextlib.suppress(Exception):
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(timeout=5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> None:
    """The heartbeat process: beats until its stdin closes (the worker ended, however it ended)."""
    import warnings

    from optuna.storages import RDBStorage
    from sqlalchemy.pool import NullPool

    from hps.search.optuna_compat import running_trial_attrs

    job = json.loads(sys.stdin.readline())
    me, every = job["worker"], float(job["every"])
    engine: dict[str, Any] = {"poolclass": NullPool}
    if job["url"].startswith("postgresql"):
        engine["connect_args"] = {"application_name": "hps-heartbeat", "connect_timeout": max(1, int(every))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = RDBStorage(job["url"], engine_kwargs=engine, skip_compatibility_check=True, skip_table_creation=True)
    while True:
        with contextlib.suppress(Exception):  # a database away for a moment: the next beat
            for trial_id, worker in running_trial_attrs(storage, "hps:worker"):
                if isinstance(worker, dict) and all(worker.get(k) == v for k, v in me.items()):
                    storage.record_heartbeat(trial_id)
        ready, _, _ = select.select([sys.stdin], [], [], every)
        if ready and not sys.stdin.readline():
            return


if __name__ == "__main__":
    main()
