"""Keep Optuna's, Ray's and tqdm's noise off the user's terminal; ``HPS_DEBUG=1`` lets it through.

What is kept off, and where it still is:

- Optuna's INFO lines (a line per trial: the progress view says it better), its experimental-feature
  warnings (heartbeats, artifacts: relied on here), the "step already reported" warning of a
  resumed trial (it re-reports the epochs its checkpoint restored) and its logged traceback of a
  trial stopped by Ctrl-C (the run says so in one line; the trial stores why);
- Ray's token-authentication banner, and what its workers and raylet write (the raylet's "... will
  be retried" lines on Ctrl-C, with colour codes): in Ray's log folder
  (``/tmp/ray/session_latest/logs``), not on the driver's terminal (a trial's outcome and its
  reason are in the study);
- tqdm's "IProgress not found" warning, raised when Optuna imports ``tqdm.auto`` in Jupyter
  without ipywidgets (hps draws no tqdm bar): filtered at ``import hps`` (``src/hps/__init__.py``),
  which must not import ``hps.search`` (``import hps.trainers`` stays free of it).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

TQDM_IPROGRESS = "IProgress not found"
STEP_REPORTED = "The reported value is ignored because this `step"  # `step=3` is already reported


def debug() -> bool:
    """``HPS_DEBUG=1``: show every library's own output."""
    return os.environ.get("HPS_DEBUG", "").strip() not in ("", "0")


def quiet_optuna() -> None:
    """Optuna at WARNING, without the warnings and log records listed above (idempotent)."""
    if debug():
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=STEP_REPORTED)
    log = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _NoInterruptTraceback) for f in log.filters):
        log.addFilter(_NoInterruptTraceback())


def quiet_ray() -> dict[str, Any]:
    """Before ``ray.init``: Ray's token banner off, and the ``ray.init`` arguments that keep the
    workers' and raylet's output in Ray's log folder (``HPS_DEBUG=1``: on the terminal too)."""
    if debug():
        return {"log_to_driver": True}
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    import ray._private.worker as ray_worker  # the one switch for the raylet's messages to the driver (its
    ray_worker._worker_logs_enabled = False  # debugger uses it): they stay in the raylet's and workers' logs
    return {"log_to_driver": False}


class _NoInterruptTraceback:
    """Drops Optuna's log records of a trial stopped by Ctrl-C (the run says so in one line) and its
    "failed with value None" line after any failure (the reason is stored and printed)."""

    def filter(self, record: object) -> bool:
        exc = getattr(record, "exc_info", None)
        if exc and exc[0] is not None and issubclass(exc[0], KeyboardInterrupt):
            return False
        message = getattr(record, "getMessage", lambda: "")()
        return not (message.startswith("Trial ") and message.endswith(" failed with value None."))
