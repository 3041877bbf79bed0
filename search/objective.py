"""One trial: sample a config, pre-screen the budget, train with per-epoch pruning.

Outcomes, each stored on the trial:
- budget broken before training -> PRUNED, no intermediate values, constraints set,
  ``prune_reason`` names each broken limit (each limit is an Optuna constraint, also stored as
  the ``constraints`` list that optuna-dashboard shows);
- pruner, max_trial_seconds, GPU memory, CUDA OOM, NaN/inf loss -> PRUNED with its intermediate
  values and ``prune_reason``;
- any other exception, wherever it happens (sampling, the meter, the data, training) -> FAIL with
  ``fail_reason`` (the worker carries on).

A trial's value is its metric (``objectives[0]``: val_acc or val_loss) at its last epoch, the
epoch its schedule ends annealed on. What is stored (names in :mod:`hps.search.record`): user
attrs, the dashboard's sortable columns, hold short scalars only: ``params``, ``model_bytes``,
``macs``, ``epochs`` (the budget figures), ``best_value``/``best_epoch``, ``device_seconds``
(training wall time; the study's compute budget sums it) and the reasons. System attrs hold the
full trainer config (``hps:config``, data path and sha256 included), the data's identity
(``hps:data``), every measured figure (``hps:budget``), how far over its tightest limit the config
is (``hps:budget_excess``, a fraction: <= 0 fits), every epoch's figures (the live view reads the last)
(``hps:history``) and the worker (``hps:worker``). The trial's dashboard note is its budget: each
limit beside the measured figure.
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from typing import Any

import optuna
import torch

from hps.search.budget import Check, EpochLimits, OverBudget, check, columns, note
from hps.search.checkpoints import TrialCheckpoint, keep_if_best
from hps.search.errors import StudyError, check_stop
from hps.search.loggers import Callbacks
from hps.search.optuna_compat import trial_system_attrs
from hps.search.record import (
    BEST_EPOCH,
    BEST_VALUE,
    BUDGET,
    BUDGET_EXCESS,
    CONFIG,
    CONSTRAINTS_LIST,
    DATA,
    DEVICE_SECONDS,
    FAIL_REASON,
    HISTORY,
    PROBLEM,
    PRUNE_REASON,
    RECHECK_OF,
    STORAGE_DTYPE,
    set_reason,
    set_trial_info,
)
from hps.search.space import Space, suggest
from hps.search.storage import OUTAGES, artifact_store
from hps.search.trials import interrupt_reason
from hps.trainers import (
    ConfigError,
    EpochLimit,
    TrainConfig,
    TrainingDiverged,
    config_to_dict,
    data_identity,
    pin_data,
    state_dict_at,
    train,
    with_overrides,
)
from hps.trainers.meter import Measured
from hps.trainers.models._registry import install_sources
from hps.trainers.models.check import pin_model

_OWED: tuple[type[BaseException], ...] = (KeyboardInterrupt, *OUTAGES)  # a trial owed again keeps its checkpoint


class Objective:
    """Picklable: Ray ships it to workers, which load their data once per process."""

    def __init__(self, space: Space, worker: dict[str, Any] | None = None) -> None:
        self.space, self.worker = space, worker
        self._store: Any = None
        self._budget_note = ""
        self._trained = False  # a trial of this process reached training since the last collection
        self._callbacks = Callbacks()

    def store(self) -> Any:
        """The artifact store for checkpoints and weights (``$HPS_ARTIFACTS``), opened once per process."""
        if self._store is None:
            self._store = artifact_store()
        return self._store

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles the objective; each worker opens its own store
        return {**self.__dict__, "_store": None}

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        if self._trained:  # what an earlier trial's exception kept alive goes before this trial builds anything
            _release_memory()  # (a full collection costs about 0.5 s: not after a trial that built nothing)
            self._trained = False
        self._callbacks = Callbacks(self.space.callbacks)
        try:
            value = self._run(trial)
            self._callbacks.end(trial, "complete", value)
            return value
        except optuna.TrialPruned as e:
            pruned = str(e)
            self._callbacks.end(trial, "pruned", pruned)
        except KeyboardInterrupt as e:  # Optuna stores the trial as FAIL and re-raises: say why
            self._explain(trial, FAIL_REASON, *interrupt_reason(e))
            self._callbacks.end(trial, "fail", type(e).__name__)
            raise
        except optuna.exceptions.UpdateFinishedTrialError:  # another run failed it under this worker: nothing to store
            raise
        except Exception as e:
            self._explain(trial, FAIL_REASON, f"error:{type(e).__name__}", f"{type(e).__name__}: {e}"[:500])
            self._callbacks.end(trial, "fail", f"{type(e).__name__}: {e}"[:500])
            raise
        # A new exception, raised outside the handler: the one caught chains (its traceback holds
        # train()'s frames: model, optimizer, data on the device, activations) and Optuna keeps the
        # exception it gets in a reference cycle, alive until the next garbage collection.
        raise optuna.TrialPruned(pruned)

    def _explain(self, trial: optuna.Trial, key: str, cause: str, text: str) -> None:
        """Store why the trial ends (:func:`set_reason`) and add it to its dashboard note."""
        set_reason(trial, key, cause, text)
        word = "Pruned" if key == PRUNE_REASON else "Failed"
        with contextlib.suppress(Exception):  # the note is a courtesy; the reason is stored
            _save_note(trial, (self._budget_note + "\n\n" if self._budget_note else "") + f"**{word}:** {text}")

    def _prune(self, trial: optuna.Trial, cause: str, text: str) -> Any:
        self._explain(trial, PRUNE_REASON, cause, text)
        raise optuna.TrialPruned(text)

    def _run(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self._budget_note = ""
        install_sources(self.space.sources)  # the user's model file, as the study was started with it
        cfg = self._config(trial)
        screen = self._screen(trial, cfg)
        return self._train(trial, cfg, screen)

    def _config(self, trial: optuna.Trial) -> TrainConfig:
        """The trial's sampled config, recorded with its data and the definition it runs under."""
        space = self.space
        try:
            cfg = suggest(space, trial)
        except ConfigError as e:
            try:  # the sampled values' fault (PRUNED), or this worker's: it cannot even read the base (FAIL)
                with_overrides(space.base, {}, f"{space.source}: base")
            except ConfigError as base_error:
                raise StudyError(f"this worker cannot read the space's base config: {base_error}") from None
            return self._prune(trial, "invalid_config", f"invalid config: {e}")
        if (origin := trial_system_attrs(trial).get(RECHECK_OF)) is not None:  # the same config, another seed
            cfg = with_overrides(cfg, {"train.seed": cfg.train.seed + 1}, f"recheck of trial {origin}")
            trial.set_user_attr("recheck_of", origin)  # a dashboard column
        cfg = pin_model(pin_data(cfg))
        _check_gpu(cfg.train.device, self.worker)
        set_trial_info(trial, CONFIG, config_to_dict(cfg))
        set_trial_info(trial, DATA, data_identity(cfg))
        set_trial_info(trial, STORAGE_DTYPE, space.budget.storage_dtype)  # kept weights and exports use it
        return cfg

    def _screen(self, trial: optuna.Trial, cfg: TrainConfig) -> Check:
        """Measure the config against the budget's static limits and record the figures, the
        constraints and the dashboard note; prune it if it breaks a limit."""
        budget = self.space.budget
        screen = check(cfg, budget)
        set_trial_info(trial, BUDGET, screen.figures)
        for key in columns(budget):  # one scalar each: the dashboard sorts and filters them
            trial.set_user_attr(key, screen.figures[key])
        with warnings.catch_warnings():  # a retried trial inherits its original's (identical) constraints
            warnings.filterwarnings("ignore", "The constraint value is ignored")
            for key, value in screen.constraints.items():
                trial.set_constraint(key, value)
        if screen.constraints:  # optuna-dashboard 0.21 shows the list form; Optuna reads both
            set_trial_info(trial, CONSTRAINTS_LIST, list(screen.constraints.values()))
            set_trial_info(trial, BUDGET_EXCESS, screen.excess)  # > 0: over budget
        self._budget_note = note(screen, budget)
        if not screen.feasible:  # (its note, with the reason, is saved once)
            broken = [k for k, v in screen.constraints.items() if v > 0]
            self._prune(trial, f"over:{broken[0]}", "over budget: " + "; ".join(screen.violations))
        _save_note(trial, self._budget_note)
        return screen

    def _train(self, trial: optuna.Trial, cfg: TrainConfig, screen: Check) -> float | tuple[float, float]:
        """Train the measured config, the budget's per-epoch limits and the pruner asked after each epoch."""
        space, budget = self.space, self.space.budget
        cuda = torch.cuda.is_available() and cfg.train.device != "cpu"
        progress = _Progress(trial, space, self._callbacks, EpochLimits.of(budget, cuda=cuda))
        store = self.store()
        ckpt = TrialCheckpoint(trial, store)
        measured = Measured(int(screen.figures["params"]), int(screen.figures["model_bytes"]), budget.storage_dtype)
        interrupted = False
        self._trained = True
        try:
            result = train(cfg, progress.report, checkpoint=ckpt, measured=measured)
        except _OWED:
            interrupted = True  # owed again: the retry resumes from this trial's checkpoint
            raise
        except RuntimeError as e:  # diverged, out of GPU memory (also as cuDNN/cuBLAS report it), or a bug
            if (cause := _prune_cause(e, cfg)) is None:
                raise
            return self._prune(trial, *cause)
        except optuna.TrialPruned as e:  # a per-epoch budget limit, or the pruner
            return self._prune(trial, e.cause if isinstance(e, OverBudget) else f"pruner:{space.spec.study.pruner.name}", str(e))
        finally:
            ckpt.finish(keep=interrupted)
            progress.finish(ckpt.restored)
        value = _value(result.history[-1], space.metric)
        if space.multi_objective:
            return value, float(screen.figures[space.spec.objectives[1]])
        if result.model is not None:
            try:  # a trained trial is never lost to keeping its weights: it stays COMPLETE, the problem recorded
                keep_if_best(trial, value, progress.sign > 0, state_dict_at(result.model, budget.storage_dtype), store)
            except Exception as e:
                set_trial_info(trial, PROBLEM, f"weights not kept: {type(e).__name__}: {str(e)[:300]}")
        return value


def _value(metrics: dict[str, float], metric: str) -> float:
    """The objective's figure of an epoch: hps's loop names it; a training function reports it as ``value``."""
    return metrics[metric] if metric in metrics else metrics["value"]


class _Progress:
    """The trainer's report callback for one trial: the live figures and the best epoch recorded,
    the value reported to Optuna, then the budget's per-epoch limits and the pruner asked."""

    def __init__(self, trial: optuna.Trial, space: Space, callbacks: Callbacks, limits: EpochLimits) -> None:
        self.trial, self.space, self.callbacks, self.limits = trial, space, callbacks, limits
        self.history: list[dict[str, float]] = []
        self.metric, self.sign = space.metric, (1 if space.directions[0] == "maximize" else -1)
        self.best: dict[str, float] = {}
        self.recheck = RECHECK_OF in trial_system_attrs(trial)

    def _seen(self, value: float, epoch: float) -> None:
        if not self.best or self.sign * value > self.sign * self.best["value"]:
            self.best.update(value=value, epoch=epoch)

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        check_stop()  # a signal whose exception a gc callback swallowed
        value = _value(metrics, self.metric)
        self.history.append({k: round(float(v), 6) for k, v in metrics.items()})
        set_trial_info(self.trial, HISTORY, self.history)  # every figure of every epoch (the dashboard shows the curve)
        self.callbacks.epoch(self.trial, epoch, metrics)
        self._seen(value, epoch)
        single = not self.space.multi_objective
        if single:
            self.trial.report(value, epoch)
        self.limits.check(epoch)
        if single and not self.recheck and self.trial.should_prune():  # a recheck runs to the end
            raise optuna.TrialPruned(f"pruned by {self.space.spec.study.pruner.name} at epoch {epoch} "
                                     f"({self.metric} {value:.4f})")

    def finish(self, restored: list[dict[str, float]]) -> None:
        """The trial's device-seconds and best epoch (epochs restored from a checkpoint count too)."""
        for m in restored:
            if self.metric in m or "value" in m:
                self._seen(_value(m, self.metric), m["epoch"])
        self.trial.set_user_attr(DEVICE_SECONDS, round(self.limits.elapsed(), 2))
        if self.best:
            self.trial.set_user_attr(BEST_VALUE, self.best["value"])
            self.trial.set_user_attr(BEST_EPOCH, int(self.best["epoch"]))


def _prune_cause(e: RuntimeError, cfg: TrainConfig) -> tuple[str, str] | None:
    """(cause, text) of a training error that is the config's fault, or None: a bug, raised."""
    if isinstance(e, TrainingDiverged):
        return "diverged", str(e)
    if isinstance(e, EpochLimit):  # a training function of the user's ran past the epochs the budget checked
        return "over:epochs", str(e)
    shape = f"(batch {cfg.train.batch_size}, width {cfg.model.width:g})"
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "cuda_oom", f"CUDA out of memory {shape}"
    if _alloc_failure(e):
        return "cuda_oom", f"CUDA out of memory in {str(e).split(':')[0][:80]} {shape}"
    return None


def _alloc_failure(e: RuntimeError) -> bool:
    """A GPU library's failed allocation (the memory limit, as a config's fault), not a bug."""
    text = str(e)
    return any(s in text for s in ("CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED", "CUDA out of memory",
                                   "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE", "cudaErrorMemoryAllocation"))


def _release_memory() -> None:
    """Collect what earlier trials left in reference cycles (Optuna holds a failed trial's exception
    in one) and hand the CUDA cache back: the next trial's memory figures are its own."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _check_gpu(device: str, worker: dict[str, Any] | None) -> None:
    """A trial Ray gave a GPU share must train on CUDA: never on the CPU without a word."""
    w = worker or {}
    if w.get("gpus") and device != "cpu" and not torch.cuda.is_available():
        raise StudyError(f"Ray gave this trial GPU {', '.join(w['gpus'])} (CUDA_VISIBLE_DEVICES={w.get('cuda_visible')}) "
                         f"but torch sees no CUDA device on {w.get('host')}: check the NVIDIA driver and container "
                         "toolkit there, or run with --gpus-per-trial 0")


def _save_note(trial: optuna.Trial, body: str) -> None:
    from optuna_dashboard import save_note

    save_note(trial, body)


__all__ = ["Objective"]
