"""Trial checkpoints and kept weights in an Optuna artifact store.

- The store: :func:`search.storage.artifact_store`, ``$HPS_ARTIFACTS`` (default ``hps-artifacts/``),
  a folder every worker shares (compose's ``artifacts`` volume), or ``s3://bucket/prefix``.
- Checkpoints: the trainer's :class:`trainers.Checkpoint` hook for one trial. It saves the full
  training state at most every ``HPS_CHECKPOINT_SECONDS`` (default 300) after an epoch, keeps only
  the newest, and records it as the trial's ``checkpoint`` user attr. A trial that Optuna retries
  after its worker died (``failed_trial``) resumes from its original's last checkpoint, loaded with
  ``torch.load(weights_only=True)`` (tensors and plain values only: a file planted in a shared store
  cannot run code in a worker; one that holds anything else is refused and the retry trains from the
  start, saying so in ``hps:resumed_from``). A finished
  trial's checkpoints are deleted (the original's too, once its retry finishes).
- Weights: a COMPLETE trial's final weights, at the budget's storage dtype, uploaded with
  ``optuna.artifacts.upload_artifact`` (so the stock optuna-dashboard lists and serves them) while
  the trial ranks among the best ``HPS_KEEP_WEIGHTS`` (default 3) of the study's current definition
  (after ``--allow-change``, the new definition's: what ``export`` picks from); weights that drop out of the best
  are deleted and their entry cleared. Disk: at most one checkpoint per running trial (plus one
  per killed trial awaiting its retry) and ``HPS_KEEP_WEIGHTS`` weight files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import optuna
import torch
from optuna.artifacts import upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from hps.search.optuna_compat import rewrite_attrs
from hps.search.record import (
    ARTIFACT_PREFIX,
    CHECKPOINT,
    CHECKPOINT_SECONDS,
    PROBLEM,
    RESUMED_FROM,
    WEIGHTS,
    current,
    set_trial_info,
    trial_info,
)
from hps.search.settings import settings
from hps.trainers.meter import save_state


def unreadable(e: BaseException) -> str:
    """Why a checkpoint was not loaded, in one line. ``torch.load(weights_only=True)`` refuses any
    object other than tensors and plain values (a pickled callable would run code on load): its
    page-long message is cut to the global it refused."""
    text = str(e)
    if refused := re.search(r"Unsupported global: GLOBAL (\S+)", text):
        return (f"{type(e).__name__}: refused to load: it holds {refused.group(1)}, not only tensors and plain values "
                "(weights_only); trained from the start")
    return f"{type(e).__name__}: {' '.join(text.split())[:200]}"


def _remove(store: Any, artifact_id: str | None) -> None:
    if artifact_id:
        with contextlib.suppress(ArtifactNotFound):
            store.remove(artifact_id)


class TrialCheckpoint:
    """The trainer's checkpoint hook for one running trial."""

    def __init__(self, trial: optuna.Trial, store: Any, every_s: float | None = None) -> None:
        self.trial, self.store = trial, store
        self.every_s = settings().checkpoint_seconds if every_s is None else every_s
        self.last_saved = time.monotonic()
        self.current: str | None = None
        self.epoch = 0  # the current checkpoint's
        self.original: FrozenTrial | None = None
        self.save_seconds = 0.0
        self.restored: list[dict[str, float]] = []  # the history a resumed trial starts with

    def load(self) -> dict[str, Any] | None:
        number = self.trial.storage.get_trial_system_attrs(self.trial._trial_id).get("failed_trial")
        if number is None:
            return None
        self.original = next((t for t in self.trial.study.get_trials(deepcopy=False) if t.number == number), None)
        saved = (trial_info(self.original, CHECKPOINT) if self.original else None) or None
        if not saved:  # a retry says it starts from scratch, and why
            set_trial_info(self.trial, RESUMED_FROM, {"trial": number, "epoch": 0,
                                                      "missing": "its original saved no checkpoint before it stopped"})
            return None
        try:
            with self.store.open_reader(saved["id"]) as f:
                state = torch.load(io.BytesIO(f.read()), weights_only=True, map_location="cpu")
            if not isinstance(state, dict) or not {"history", "epoch", "rng"} <= set(state) or not (
                    {"model", "optimizer"} <= set(state) or "user" in state):  # hps's loop, or a train.fn's
                raise ValueError("not a training state")
        except ArtifactNotFound:
            set_trial_info(self.trial, RESUMED_FROM, {"trial": number, "epoch": 0, "missing": (
                f"its original's checkpoint {saved['id']} (epoch {saved.get('epoch')}) is gone from the artifact store")})
            return None
        except Exception as e:  # a retry never dies of its original's checkpoint: it trains from the start
            set_trial_info(self.trial, RESUMED_FROM, {"trial": number, "epoch": 0, "unreadable": unreadable(e)})
            return None
        set_trial_info(self.trial, RESUMED_FROM, {"trial": number, "epoch": saved["epoch"]})
        self.restored = list(state["history"])
        return state

    def after_epoch(self, epoch: int, state: Callable[[], dict[str, Any]]) -> None:
        """Save the state when it is due: write the new checkpoint, then record it, then remove
        the old one. A write that fails (a full disk, a store that is down) removes what it wrote
        and keeps the old checkpoint; the trial trains on, the problem recorded in one line."""
        if time.monotonic() - self.last_saved < self.every_s:
            return
        start = time.perf_counter()
        buf = io.BytesIO()
        torch.save(state(), buf)
        buf.seek(0)
        new = f"checkpoint-{uuid.uuid4()}"
        try:
            self.store.write(new, buf)
        except Exception as e:
            with contextlib.suppress(Exception):  # a partly written file
                self.store.remove(new)
            kept = f"the one after epoch {self.epoch} is kept" if self.current else "none is kept"
            set_trial_info(self.trial, PROBLEM, f"checkpoint after epoch {epoch} not saved ({type(e).__name__}: "
                                                f"{' '.join(str(e).split())[:200]}); {kept}")
        else:
            set_trial_info(self.trial, CHECKPOINT, {"id": new, "epoch": epoch, "bytes": buf.getbuffer().nbytes})
            _remove(self.store, self.current)
            self.current, self.epoch = new, epoch
        self.save_seconds += time.perf_counter() - start
        self.last_saved = time.monotonic()

    def finish(self, keep: bool = False) -> None:
        """The trial is over: its checkpoint, and its killed original's, go; ``keep`` (an interrupted
        trial, owed again) leaves its own for the retry to resume from."""
        if not keep:
            _remove(self.store, self.current)
        if self.original is not None:
            _remove(self.store, (trial_info(self.original, CHECKPOINT) or {}).get("id"))
        set_trial_info(self.trial, CHECKPOINT_SECONDS, round(self.save_seconds, 3))


def keep_if_best(trial: optuna.Trial, value: float, maximize: bool, state_dict: dict[str, torch.Tensor],
                 store: Any, k: int | None = None) -> str | None:
    """Upload ``state_dict`` as the trial's ``weights.pt`` when ``value`` ranks among the best ``k``
    COMPLETE trials of the study's current definition (those ``export`` picks from); delete the
    weights that drop out, and those of earlier definitions. Returns the artifact id, or None."""
    k = settings().keep_weights if k is None else k
    if k <= 0:
        return None
    study = trial.study
    same = current(study)
    kept = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if trial_info(t, WEIGHTS)]
    sign = 1.0 if maximize else -1.0
    ranked = sorted((t for t in kept if same(t)), key=lambda t: sign * float(t.value or 0.0), reverse=True)
    if len(ranked) >= k and sign * value <= sign * float(ranked[k - 1].value or 0.0):
        return None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "weights.pt")
        save_state(state_dict, path)  # exactly the meter's model_bytes
        artifact_id = upload_artifact(artifact_store=store, file_path=path, study_or_trial=trial)
    set_trial_info(trial, WEIGHTS, artifact_id)
    for t in [*ranked[k - 1:], *(t for t in kept if not same(t))]:
        drop(trial.storage, t, store)
    return artifact_id


def drop(storage: Any, t: FrozenTrial, store: Any) -> None:
    """Delete a finished trial's kept weights and clear their entries (written directly: Optuna's
    setters refuse finished trials; the stock dashboard clears an artifact the same way)."""
    artifact_id = trial_info(t, WEIGHTS)
    if not artifact_id:
        return
    _remove(store, artifact_id)
    rewrite_attrs(storage, t._trial_id, system={ARTIFACT_PREFIX + artifact_id: json.dumps(None)},  # the meta is a
                  drop_system=[WEIGHTS], drop_user=["weights"])  # JSON string: "null"; "weights": older studies
