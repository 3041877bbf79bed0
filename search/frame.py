"""A study's trials as a table: ``RunResult.dataframe()`` and ``hps status --csv``."""

from __future__ import annotations

from typing import Any

import optuna

from hps.search.record import (
    BEST_EPOCH,
    BEST_VALUE,
    DEVICE_SECONDS,
    FAIL_REASON,
    PRUNE_REASON,
    RECHECK_OF,
    WIDTH,
    reason,
    stored_figures,
)

FIGURES = ("params", "model_bytes", "macs", "flops")


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One flat dict per trial: number, state, value, best value and epoch, epochs run, each param
    (``params.KEY``), the fitted width, the budget figures, device seconds, the trial a recheck
    trains again, the reason's cause and its whole line."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        figures = stored_figures(t)
        fitted = t.user_attrs.get(WIDTH)  # a ``type: fit`` width, as fitted to the budget
        rows.append({
            "number": t.number, "state": t.state.name.lower(), "value": t.values[0] if t.values else None,
            "best_value": t.user_attrs.get(BEST_VALUE), "best_epoch": t.user_attrs.get(BEST_EPOCH),
            "epochs": len(t.intermediate_values),
            **{f"params.{k}": v for k, v in t.params.items()},
            "width": fitted if fitted is not None else t.params.get("model.width"),
            **{k: figures.get(k) for k in FIGURES},
            "device_seconds": t.user_attrs.get(DEVICE_SECONDS),
            "recheck_of": t.system_attrs.get(RECHECK_OF),
            "cause": t.user_attrs.get(PRUNE_REASON) or t.user_attrs.get(FAIL_REASON),
            "reason": reason(t) if t.state.name in ("PRUNED", "FAIL") else None,
            "started": t.datetime_start, "finished": t.datetime_complete,
        })
    return rows


def trials_frame(study: optuna.Study) -> Any:
    """:func:`trial_rows` as a ``pandas.DataFrame`` indexed by trial number."""
    import pandas as pd

    return pd.DataFrame(trial_rows(study)).set_index("number")
