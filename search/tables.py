"""What the commands print: tables and JSON rows built from studies, trials and measurements.

The CLI parses, calls the API and hands the result here; nothing in this module opens a storage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from hps.search.record import (
    BEST_EPOCH,
    BEST_VALUE,
    DEVICE_SECONDS,
    FAIL_REASON,
    PRUNE_REASON,
    RECHECK_OF,
    RETRY_OF,
    WARM_START,
    fitted_width,
    human,
    named_constraints,
    reason,
    retry_note,
    stored_figures,
    trial_info,
)

if TYPE_CHECKING:
    from hps.trainers import Measurement

VALUE_NOTE = "value: the metric at the last epoch; * the last reported value of a trial that did not complete"


def studies_table(rows: list[dict[str, Any]]) -> Table:
    table = Table("study", "trials", "directions", "best value", "stopped")
    for r in rows:
        table.add_row(r["study"], str(r["trials"]), ", ".join(r["directions"]),
                      "-" if r["best_value"] is None else f"{r['best_value']:.4f}", "; ".join(r["stopped"]))
    return table


def trial_row(t: FrozenTrial, current: bool) -> dict[str, Any]:
    """One trial as ``hps status --json`` prints it."""
    return {"number": t.number, "state": t.state.name.lower(), "values": t.values, "params": t.params,
            "fitted_width": fitted_width(t), "constraints": named_constraints(t), "budget": stored_figures(t),
            **{k: t.user_attrs.get(k) for k in (BEST_VALUE, BEST_EPOCH, DEVICE_SECONDS)},
            "warm_start": trial_info(t, WARM_START), "retry_of": t.system_attrs.get(RETRY_OF),
            "recheck_of": t.system_attrs.get(RECHECK_OF),
            "cause": t.user_attrs.get(PRUNE_REASON) or t.user_attrs.get(FAIL_REASON), "reason": reason(t),
            "current_definition": current}


def _value(t: FrozenTrial) -> str:
    if t.state == TrialState.COMPLETE and t.values:
        return f"{t.values[0]:.4f}"
    if t.intermediate_values:  # pruned, failed or running: its last reported value
        return f"{t.intermediate_values[max(t.intermediate_values)]:.4f}*"
    return "-"


def _note(t: FrozenTrial, current: bool) -> str:
    recheck = f"recheck of trial {t.system_attrs[RECHECK_OF]} (another seed)" if RECHECK_OF in t.system_attrs else ""
    why = reason(t) or trial_info(t, WARM_START, "") or retry_note(t) or recheck
    if t.state == TrialState.FAIL and not why:
        why = "no reason stored (its worker stopped sending heartbeats: killed or lost)"
    return why if current else f"(an earlier definition) {why}"


def trials_table(name: str, trials: list[FrozenTrial], current: list[bool]) -> Table:
    """One study's trials: state, value, best epoch, budget figures, seconds and why it ended; a
    ``width`` column when the space fits the width to the budget (``type: fit``)."""
    fit = any(fitted_width(t) is not None for t in trials)
    table = Table(title=name)
    for col in ("#", "state", "value", "best@epoch", *(["width"] if fit else []), "params", "bytes", "MACs", "secs"):
        table.add_column(col, no_wrap=True)
    table.add_column("note", ratio=1, min_width=24)
    for t, same in zip(trials, current, strict=True):
        fig = stored_figures(t)
        best = f"{t.user_attrs[BEST_VALUE]:.4f}@{t.user_attrs[BEST_EPOCH]}" if BEST_VALUE in t.user_attrs else "-"
        width = [] if not fit else ["-" if fitted_width(t) is None else f"{fitted_width(t):.4g}"]
        table.add_row(str(t.number), t.state.name.lower(), _value(t), best, *width,
                      *(human(fig[k]) if k in fig else "-" for k in ("params", "model_bytes", "macs")),
                      f"{t.user_attrs.get(DEVICE_SECONDS, 0):.1f}", _note(t, same))
    return table


def measure_table(title: str, m: Measurement) -> Table:
    table = Table(title=title, show_header=False)
    table.add_row("trainable parameters", f"{m.params:,}")
    for dtype, size in m.model_bytes.items():
        table.add_row(f"model file bytes ({dtype})", f"{size:,}  ({size / 1e6:.2f} MB)")
    table.add_row(f"MACs per {m.image_size}x{m.image_size} image", f"{m.macs:,}")
    table.add_row("FLOPs per image (2 x MACs)", f"{m.flops:,}")
    table.add_row("training memory estimate", f"{m.train_memory_mb:,.1f} MiB")
    return table


def space_measure_table(title: str, rows: list[dict[str, Any]]) -> Table:
    """The base, smallest and largest configs of a space (``hps measure SPACE``), against its budget."""
    table = Table(title=title)
    for col in ("config", "model", "width", "depth", "px", "params", "bytes", "MACs", "train MiB"):
        table.add_column(col, no_wrap=True)
    table.add_column("budget", ratio=1, min_width=16)
    for r in rows:
        table.add_row(r["config"], r["model"], f"{r['width']:.4g}", f"{r['depth']:g}", str(r["image_size"] or "-"),
                      human(r["params"]), human(r["model_bytes"]), human(r["macs"]), f"{r['train_memory_mb']:,.0f}",
                      "; ".join(r["violations"]) or "fits")
    return table
