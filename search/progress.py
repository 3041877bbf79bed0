"""The live view of ``hps run``: polls the study's storage, so it works for every executor."""

from __future__ import annotations

import threading
import time

import optuna
from optuna.trial import TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from search.storage import dispose, get_storage


def snapshot(study: optuna.Study, target: int, started: float, done_before: int) -> Panel:
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    finished = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
    new = finished - done_before
    eta = (time.time() - started) / new * (target - finished) if new > 0 and finished < target else None
    lines = [f"[bold]{study.study_name}[/]  finished {finished}/{target}  "
             f"[green]complete {count[TrialState.COMPLETE]}[/]  [yellow]pruned {count[TrialState.PRUNED]}[/]  "
             f"[red]failed {count[TrialState.FAIL]}[/]  running {count[TrialState.RUNNING]}  "
             + (f"ETA {eta:.0f} s" if eta is not None else "ETA -")]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    if complete:
        sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
        best = max(complete, key=lambda t: sign * t.values[0])
        lines.append(f"best so far: trial {best.number}, value {best.values[0]:.4f}: "
                     + ", ".join(f"{k}={_short(v)}" for k, v in best.params.items()))
    reasons = Table("trial", "last prune reasons", box=None)
    for t in [t for t in trials if "prune_reason" in t.user_attrs][-4:]:
        reasons.add_row(str(t.number), t.user_attrs["prune_reason"])
    return Panel(Group(*lines, reasons), title="hps run", border_style="blue")


def _short(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class LiveView:
    """Context manager: refreshes a panel every ``every`` seconds until exit."""

    def __init__(self, study_name: str, url: str, target: int, console: Console, every: float = 2.0) -> None:
        self.name, self.url, self.target, self.console, self.every = study_name, url, target, console, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.storage = get_storage(url, pool_size=1, heartbeat=False)
        self.study = optuna.load_study(study_name=study_name, storage=self.storage)
        self.done_before = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                               for t in self.study.get_trials(deepcopy=False))
        self.started = time.time()

    def _panel(self) -> Panel:
        return snapshot(self.study, self.target, self.started, self.done_before)

    def _loop(self) -> None:
        with Live(self._panel(), console=self.console, refresh_per_second=1, transient=False) as live:
            while not self.stop.wait(self.every):
                try:
                    live.update(self._panel())
                except Exception:
                    continue
            live.update(self._panel())

    def __enter__(self) -> LiveView:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        dispose(self.storage)
