"""What a run shows while it runs: it polls the study's storage, so it works for every executor.

- ``live``: a panel redrawn in place (a terminal): counts, ETA, the best trial so far, and each
  running trial's epoch, last metric value and images/s;
- ``lines``: one line per trial that finishes (a notebook, a log file, CI);
- ``auto``: ``live`` on a terminal, ``lines`` elsewhere (Jupyter included).
"""

from __future__ import annotations

import contextlib
import html
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from hps.search.record import (
    CONFIG,
    FINISHED,
    HISTORY,
    RECHECK_OF,
    finished_by_definition,
    reason,
    shown_params,
    sign,
    trial_info,
)

MODES = ("auto", "live", "lines", "none")


def _short(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def running_rows(trials: list[FrozenTrial]) -> list[tuple[int, int | None, float | None, float | None]]:
    """(trial, epoch, last reported value, images/s) of each running trial."""
    rows = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        history = trial_info(t, HISTORY) or []
        live = history[-1] if history else {}  # the last epoch's figures
        epoch = max(t.intermediate_values) if t.intermediate_values else live.get("epoch")
        value = t.intermediate_values.get(epoch) if epoch is not None else None
        rows.append((t.number, epoch, value, live.get("images_per_s")))
    return rows


def snapshot(study: optuna.Study, target: int, started: float, done_before: int) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    finished = finished_by_definition(study, trials)[0]
    new = finished - done_before
    eta = (time.time() - started) / new * (target - finished) if new > 0 and finished < target else None
    lines: list[Any] = [f"[bold]{study.study_name}[/]  finished {finished}/{target}  "
                        f"[green]complete {count[TrialState.COMPLETE]}[/]  [yellow]pruned {count[TrialState.PRUNED]}[/]  "
                        f"[red]failed {count[TrialState.FAIL]}[/]  running {count[TrialState.RUNNING]}  "
                        + (f"ETA {eta:.0f} s" if eta is not None else "ETA -")]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    if complete:
        best = max(complete, key=lambda t: sign(study) * t.values[0])
        lines.append(f"best so far: trial {best.number}, value {best.values[0]:.4f}: "
                     + ", ".join(f"{k}={_short(v)}" for k, v in shown_params(best).items()))
    rows = running_rows(trials)
    if rows:
        running = Table("running", "epoch", "last value", "images/s", box=None)
        for number, epoch, value, ips in rows:
            running.add_row(str(number), "-" if epoch is None else str(epoch), "-" if value is None else f"{value:.4f}",
                            "-" if ips is None else f"{ips:,.0f}")
        lines.append(running)
    reasons = Table("trial", "last prune reasons", box=None)
    for t in [t for t in trials if t.state == TrialState.PRUNED and reason(t)][-4:]:
        reasons.add_row(str(t.number), reason(t) or "")
    return Panel(Group(*lines, reasons), title="hps run", border_style="blue")


def finished_line(t: FrozenTrial, done: int, target: int) -> str:
    state = t.state.name.lower()
    value = f" value {t.values[0]:.4f}" if t.values and t.state == TrialState.COMPLETE else ""
    why = reason(t) or (f"recheck of trial {t.system_attrs[RECHECK_OF]} (another seed)" if RECHECK_OF in t.system_attrs
                        else "")
    params = ", ".join(f"{k}={_short(v)}" for k, v in shown_params(t).items())
    return f"[{done}/{target}] trial {t.number} {state}{value}" + (f": {why}" if why else "") + (f" ({params})" if params else "")


class _Poller:
    """A thread that calls ``tick`` every ``every`` seconds, and once more at the end."""

    def __init__(self, tick: Any, every: float) -> None:
        self.tick, self.every = tick, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            with contextlib.suppress(Exception):  # a storage hiccup skips a refresh
                self.tick()

    def __enter__(self) -> _Poller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self.tick()


def _epochs(t: FrozenTrial) -> int | None:
    return ((trial_info(t, CONFIG) or {}).get("train") or {}).get("epochs")


class Bars:
    """A notebook's progress within the running trials: one bar per running trial (its epoch of
    its epochs, its last value, images/s) under one for the run; shown as HTML ``<progress>``
    bars, or as text where HTML is not rendered."""

    def __init__(self, trials: list[FrozenTrial], done: int, target: int) -> None:
        self.done, self.target = done, target
        running = {t.number: t for t in trials if t.state == TrialState.RUNNING}
        self.rows = [(n, e or 0, _epochs(running[n]) or 0, v, ips) for n, e, v, ips in running_rows(trials)]

    def _lines(self) -> list[tuple[int, int, str]]:
        out = [(self.done, self.target, f"finished {self.done}/{self.target}")]
        for n, epoch, epochs, value, ips in self.rows:
            shown = "" if value is None else f"  value {value:.4f}"
            speed = "" if ips is None else f"  {ips:,.0f} img/s"
            out.append((epoch, epochs, f"trial {n}: epoch {epoch}/{epochs or '?'}{shown}{speed}"))
        return out

    def __repr__(self) -> str:
        width = 20
        return "\n".join(f"[{'#' * (width * a // b if b else 0):<{width}}] {text}" for a, b, text in self._lines())

    def _repr_html_(self) -> str:
        return "<br>".join(f"<progress value='{a}' max='{b or 1}' style='width:12em'></progress> "
                           f"<code>{html.escape(text)}</code>" for a, b, text in self._lines())


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    ip = getattr(shell, "get_ipython", lambda: None)() if shell else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def _bar_display(done: int, target: int) -> Any:
    """A notebook display that each poll redraws in place (IPython's display handle)."""
    from IPython.display import display

    return display(Bars([], done, target), display_id=True)


@contextlib.contextmanager
def view(mode: str, study: optuna.Study, target: int, out: TextIO, every: float = 2.0) -> Iterator[None]:
    """Show the run's progress while the block runs."""
    if mode not in MODES:
        from hps.search.errors import StudyError

        raise StudyError(f"progress: {mode!r} is not allowed; choose one of {', '.join(MODES)}")
    if mode == "auto":
        mode = "live" if getattr(out, "isatty", lambda: False)() and not _in_notebook() else "lines"
    if mode == "none":
        yield
        return
    started = time.time()
    seen = {t.number for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL))}
    done_before = finished_by_definition(study)[0]
    if mode == "lines":
        bars = _bar_display(done_before, target) if _in_notebook() else None

        def tick() -> None:
            trials = study.get_trials(deepcopy=False)
            done = finished_by_definition(study, trials)[0]
            for t in trials:
                if t.number not in seen and t.state in (*FINISHED, TrialState.FAIL):
                    seen.add(t.number)
                    print(finished_line(t, done, target), file=out, flush=True)
            if bars is not None:
                bars.update(Bars(trials, done, target))

        with _Poller(tick, every):
            yield
        return
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)
    with Live(snapshot(study, target, started, done_before), console=console, refresh_per_second=1) as live, \
            _Poller(lambda: live.update(snapshot(study, target, started, done_before)), every):
        yield
