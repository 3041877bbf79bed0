"""Every line of Ray in hps: a pool of actors, one per concurrent trial slot, each running Optuna's
``study.optimize`` against the shared storage (heartbeats on, Optuna's pruner deciding).

Not Ray Tune's OptunaSearch: it records scheduler-stopped trials as COMPLETE and disables Optuna
pruners, so its study states and curves would be wrong.

Resources: each actor asks ``num_gpus=gpus_per_trial`` (fractions share a GPU; Ray sets
CUDA_VISIBLE_DEVICES) and ``num_cpus=cpus_per_trial``. A killed actor is restarted by Ray
(``max_restarts``) and resumes the loop; its trial turns FAIL through heartbeats and its params are
retried once. Database connections: each actor's RDBStorage holds at most ``POOL_SIZE + 1``
(SQLAlchemy pool + overflow), so a run holds at most ``workers * 2 + 4`` (the driver opens two
storages, one for the live view).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from typing import Any

import ray

from hps.search.errors import RunFailed, StudyError
from hps.search.quiet import quiet_optuna, quiet_ray
from hps.search.settings import forwarded, settings
from hps.search.space import Space

POOL_SIZE = 1


@ray.remote(max_restarts=3, max_task_retries=3)
class TrialWorker:
    """One trial slot. ``run`` returns when the study has ``target`` finished trials."""

    def run(self, space: Space, url: str, target: int, objective: Any = None, run: str = "",
            share: float = 0.0) -> dict[str, Any]:
        from hps.search.executors import MAX_STORAGE_OUTAGES, work
        from hps.search.storage import OUTAGES, dispose, get_storage
        from hps.search.study import load_study, open_study
        from hps.search.trials import identity

        quiet_optuna()
        ctx = ray.get_runtime_context()
        fraction = None  # the CUDA memory fraction this process keeps to (None: no CUDA, or a whole GPU)
        if not ray.get_gpu_ids():  # Ray 2.60 leaves an actor that asked for no GPU seeing them all (ray#54868)
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        elif 0 < share < 1:  # a trial sharing a GPU keeps to its share: one trial's leak is not the others' OOM
            import torch

            if torch.cuda.is_available():
                torch.cuda.set_per_process_memory_fraction(share)
                fraction = share
        info = identity(run, node=ctx.get_node_id()[:12], actor=ctx.get_actor_id(), gpus=[str(g) for g in ray.get_gpu_ids()],
                        cuda_visible=os.environ.get("CUDA_VISIBLE_DEVICES"), gpu_share=share, memory_fraction=fraction)
        for outage in range(MAX_STORAGE_OUTAGES + 1):  # the database may be restarting: wait for it
            storage = None
            try:
                storage = get_storage(url, pool_size=POOL_SIZE)
                load_study(space.name, storage)  # the driver created it
                study = open_study(space, storage)
                work(space, study, target, worker=info, objective=objective)
                return info
            except OUTAGES:
                if outage == MAX_STORAGE_OUTAGES:
                    raise
                time.sleep(5)
            finally:
                if storage is not None:
                    dispose(storage)
        return info


def actor_alive(actor_id: str, pid: int | None) -> bool:
    """The actor is ALIVE in process ``pid`` (a restarted actor runs in another: the trial it ran is
    lost), as the cluster's GCS sees it; False when this process is not connected to Ray."""
    if not ray.is_initialized():
        return False
    try:
        info = ray._private.state.actors(actor_id=actor_id)  # the GCS's actor table: no dashboard needed
    except Exception:
        return False
    return bool(info) and info.get("State") == "ALIVE" and (pid is None or info.get("Pid") == pid)


class RayExecutor:
    """``address``: ``local`` starts a private Ray, ``auto`` joins the one on this machine,
    anything else is a cluster address (``ray://host:10001`` or ``host:6379``)."""

    def __init__(self, address: str = "local", *, workers: int = 2, gpus_per_trial: float = 0.0,
                 cpus_per_trial: float = 1.0) -> None:
        if workers < 1 or gpus_per_trial < 0 or cpus_per_trial <= 0:
            raise ValueError("workers >= 1, gpus_per_trial >= 0 and cpus_per_trial > 0 are required")
        self.address, self.workers = address, workers
        self.gpus, self.cpus = gpus_per_trial, cpus_per_trial

    def check(self, url: str) -> None:
        """Refuse, before anything runs, a storage that workers on other machines cannot share."""
        if not url.startswith("postgresql") and self.address != "local":
            raise StudyError("SQLite and journal files work on one machine only; give --storage postgresql://... for a cluster")
        if self.address in ("local", "auto"):
            return
        host, _, port = self.address.removeprefix("ray://").rstrip("/").rpartition(":")
        if not host or not port.isdigit():
            raise StudyError(f"--ray {self.address}: expected local, auto, HOST:PORT (a head's GCS, 6379) or "
                             "ray://HOST:PORT (Ray Client, 10001)")
        try:  # Ray itself would retry for 100 s, then print a traceback
            socket.create_connection((host.strip("[]"), int(port)), timeout=settings().connect_timeout).close()
        except OSError as e:
            raise StudyError(f"--ray {self.address}: no Ray cluster answers there ({e.strerror or e}); start one "
                             "(ray start --head), or use --ray local for a private one") from None

    def connect(self, attempts: int = 3) -> None:
        """Join (or start) the cluster. The driver does it before it handles SIGTERM: ``ray.init``
        installs Ray's own SIGTERM handler, which aborts the process (exit -6) instead of stopping the run.

        Ray Client's per-driver server sometimes dies while starting (a gRPC race inside Ray,
        seen in a few of the test runs here): a new connection gets a new one, so try again."""
        if ray.is_initialized():
            return
        env = forwarded()  # every HPS_* setting, as the driver has it
        quiet = quiet_ray()
        for attempt in range(1, attempts + 1):
            try:
                ray.init(address=self.address, namespace="hps", runtime_env={"env_vars": env} if env else None,
                         include_dashboard=False if self.address == "local" else None,
                         configure_logging=False, **quiet)
                return
            except ConnectionError as e:
                ray.shutdown()
                if attempt == attempts or not self.address.startswith("ray://"):
                    raise StudyError(f"--ray {self.address}: {str(e).splitlines()[0]}") from None
                print(f"Ray Client connection failed ({str(e).splitlines()[0]}); retrying ({attempt}/{attempts - 1})",
                      file=sys.stderr, flush=True)
                time.sleep(2 * attempt)

    def run(self, space: Space, study: Any, url: str, target: int, objective: Any = None, run: str = "") -> None:
        self.check(url)
        self.connect()
        from hps.search.storage import OUTAGES
        from hps.search.trials import settle

        if self.gpus == 0 and space.base.train.device != "cpu" and (gpus := ray.cluster_resources().get("GPU", 0)):
            raise StudyError(f"--ray {self.address}: the cluster has {gpus:g} GPUs but --gpus-per-trial is 0, so Ray would "
                             "give no trial a GPU and every trial on a node would share its first one; give --gpus-per-trial 1 "
                             "(0.5 puts two trials on a GPU), or set train.device: cpu")
        for _ in range(3):  # a retry queued by settle() (a worker died after the last ask) runs in the next round
            self._round(space, study, url, target, objective, run)
            try:
                if not settle(study, run):
                    break
            except OUTAGES as e:  # the database is away: the next run settles them
                print(f"could not check for trials left RUNNING: {str(e).splitlines()[0]}", file=sys.stderr, flush=True)
                break

    def _round(self, space: Space, study: Any, url: str, target: int, objective: Any, run: str) -> None:
        from hps.search.storage import OUTAGES
        from hps.search.trials import settle

        opts: dict[str, Any] = {"num_cpus": self.cpus}
        if self.gpus > 0:
            opts["num_gpus"] = self.gpus
        actors = [TrialWorker.options(**opts).remote() for _ in range(self.workers)]  # type: ignore[attr-defined]
        pending = {a.run.remote(space, url, target, objective, run, self.gpus): a for a in actors}
        errors: list[str] = []
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=settings().heartbeat_seconds)
                if not done:  # while its workers train, the driver fails what a lost worker left (workers only
                    with contextlib.suppress(*OUTAGES):  # look between their trials) and queues it again
                        settle(study)
                    continue
                for ref in done:
                    pending.pop(ref)
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayError as e:  # a worker gave up; the others carry on
                        lines = [ln for ln in str(e).splitlines() if ln.strip()]
                        errors.append(lines[-1].strip() if lines else type(e).__name__)  # the cause, not Ray's header
        finally:
            for a in actors:
                ray.kill(a)
            if pending:  # stopped early: wait for the kills, so nothing of theirs writes after the driver settles
                ray.wait(list(pending), num_returns=len(pending), timeout=30)
        if errors and len(errors) == len(actors):
            raise RunFailed(f"every Ray worker failed; first error: {errors[0]}")
