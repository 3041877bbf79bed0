"""Storage at scale, by simulation: N concurrent clients doing ask + 3 reports + tell.

    python bench/storage.py [--clients 8 32 64] [--seconds 20] [--pg postgresql+psycopg2://...]

Each client is a process (RandomSampler, so the sampler costs nothing and the storage is
measured). Clients start, connect and wait at a barrier; trials/s is counted over the same
``--seconds`` window for all. Peak connections are read from pg_stat_activity during the window.
Backends:
- ``rdb``: Optuna's RDBStorage on PostgreSQL (hps's pool settings: 2 + 1 overflow per client);
- ``grpc``: Optuna's gRPC storage proxy (run_grpc_proxy_server over RDBStorage) in one server process.
RDBStorage on ``postgresql://`` is hps's default for clusters (compose uses it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import time
import uuid
from typing import Any

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def _url(kind: str, pg: str) -> str:
    """The storage URL a backend (or the gRPC server's backend) uses."""
    return pg


def _storage(kind: str, pg: str, grpc_port: int) -> Any:
    from optuna.storages import GrpcStorageProxy

    from hps.search.storage import get_storage

    if kind.startswith("grpc"):
        return GrpcStorageProxy(host="127.0.0.1", port=grpc_port)
    return get_storage(_url(kind, pg), heartbeat=False, pool_size=1)  # 64 clients x (1 + 1 overflow) fits max_connections 100


def _client(kind: str, pg: str, grpc_port: int, name: str, ready: Any, go: Any, stop: Any, out: Any) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=_storage(kind, pg, grpc_port),
                                  sampler=optuna.samplers.RandomSampler())
        study.trials  # noqa: B018 - connect and replay before the window opens
    except Exception as e:
        out.put(f"failed: {str(e).splitlines()[0][:120]}")
        ready.release()
        return
    ready.release()
    go.wait()
    done = 0
    while not stop.is_set():
        trial = study.ask()
        x = trial.suggest_float("x", 0, 1)
        for step in range(3):
            trial.report(x * step, step)
        study.tell(trial, x)
        done += 1
    out.put(done)


def _grpc_server(kind: str, pg: str, port: int) -> None:
    import optuna

    from hps.search.storage import get_storage

    optuna.storages.run_grpc_proxy_server(get_storage(_url(kind, pg), heartbeat=False, pool_size=8),
                                          host="127.0.0.1", port=port)


def _connections(pg: str) -> int:
    import psycopg2

    conn = psycopg2.connect(pg.replace("postgresql+psycopg2", "postgresql"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("select count(*) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()")
        n = cur.fetchone()[0]
    conn.close()
    return int(n)


def run(kind: str, clients: int, seconds: float, pg: str) -> dict[str, Any]:
    import optuna

    from hps.search.storage import get_storage

    ctx = mp.get_context("spawn")
    baseline = _connections(pg)
    name = f"bench-storage-{kind}-{uuid.uuid4().hex[:6]}"
    port = 13000 + clients
    server = None
    if kind.startswith("grpc"):
        server = ctx.Process(target=_grpc_server, args=(kind, pg, port), daemon=True)
        server.start()
        time.sleep(3)
    setup = _storage(kind, pg, port)
    optuna.create_study(study_name=name, storage=setup, direction="maximize")
    ready, go, stop, out = ctx.Semaphore(0), ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(kind, pg, port, name, ready, go, stop, out), daemon=True)
             for _ in range(clients)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    go.set()
    t0 = time.perf_counter()
    peak = 0
    exhausted = False
    while time.perf_counter() - t0 < seconds:
        try:
            peak = max(peak, _connections(pg) - baseline - 1)  # minus the setup storage's
        except Exception:
            exhausted = True
        time.sleep(1)
    stop.set()
    results: list[Any] = []
    for _ in procs:
        try:
            results.append(out.get(timeout=120))
        except queue.Empty:
            results.append("failed: the client died without a result")
    failed = [r for r in results if isinstance(r, str)]
    total = sum(r for r in results if isinstance(r, int))
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    if server is not None:
        server.kill()
    optuna.delete_study(study_name=name, storage=get_storage(_url(kind, pg), heartbeat=False))
    return {"backend": kind, "clients": clients, "trials": total, "trials_per_s": round(total / wall, 1),
            "peak_db_connections": "max_connections reached" if exhausted else peak,
            "clients_failed": len(failed), **({"error": failed[0]} if failed else {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, nargs="+", default=[8, 32, 64])
    p.add_argument("--backends", nargs="+", default=["rdb"], choices=["rdb", "grpc"])
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--pg", default=PG)
    args = p.parse_args()
    for n in args.clients:
        for kind in args.backends:
            print(json.dumps(run(kind, n, args.seconds, args.pg)), flush=True)


if __name__ == "__main__":
    main()
