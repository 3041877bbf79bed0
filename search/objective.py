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
is (``hps:budget_excess``, a fraction: <= 0 fits), the last epoch's figures for the live view
(``hps:live``) and the worker (``hps:worker``). The trial's dashboard note is its budget: each
limit beside the measured figure.
"""

from __future__ import annotations

import contextlib
import gc
import time
import warnings
from typing import Any

import optuna
import torch

from hps.search.budget import Check, check, over
from hps.search.checkpoints import TrialCheckpoint, keep_if_best
from hps.search.errors import StudyError, check_stop
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
    LIVE,
    PROBLEM,
    PRUNE_REASON,
    STORAGE_DTYPE,
    columns,
    set_reason,
    set_trial_info,
)
from hps.search.space import Space, suggest
from hps.search.storage import OUTAGES, artifact_store
from hps.search.trials import interrupt_reason
from hps.trainers import (
    ConfigError,
    TrainingDiverged,
    config_to_dict,
    data_identity,
    pin_data,
    state_dict_at,
    train,
    with_overrides,
)
from hps.trainers.models._registry import install_sources
from hps.trainers.models.check import pin_model

_OWED: tuple[type[BaseException], ...] = (KeyboardInterrupt, *OUTAGES)  # a trial owed again keeps its checkpoint


class _Stop(optuna.TrialPruned):
    """A budget limit reached during training; ``cause`` names it (``over:max_trial_seconds``)."""

    def __init__(self, cause: str, text: str) -> None:
        super().__init__(text)
        self.cause = cause


class Objective:
    """Picklable: Ray ships it to workers, which load their data once per process."""

    def __init__(self, space: Space, worker: dict[str, Any] | None = None) -> None:
        self.space, self.worker = space, worker
        self._store: Any = None
        self._budget_note = ""

    def store(self) -> Any:
        """The artifact store for checkpoints and weights (``$HPS_ARTIFACTS``), opened once per process."""
        if self._store is None:
            self._store = artifact_store()
        return self._store

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles the objective; each worker opens its own store
        return {**self.__dict__, "_store": None}

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        _release_memory()  # what an earlier trial's exception kept alive goes before this trial builds anything
        try:
            return self._run(trial)
        except optuna.TrialPruned as e:
            pruned = str(e)
        except KeyboardInterrupt as e:  # Optuna stores the trial as FAIL and re-raises: say why
            self._explain(trial, FAIL_REASON, *interrupt_reason(e))
            raise
        except optuna.exceptions.UpdateFinishedTrialError:  # another run failed it under this worker: nothing to store
            raise
        except Exception as e:
            self._explain(trial, FAIL_REASON, f"error:{type(e).__name__}", f"{type(e).__name__}: {e}"[:500])
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
        space, budget = self.space, self.space.budget
        install_sources(space.sources)  # the user's model file, as the study was started with it
        try:
            cfg = suggest(space, trial)
        except ConfigError as e:
            try:  # the sampled values' fault (PRUNED), or this worker's: it cannot even read the base (FAIL)
                with_overrides(space.base, {}, f"{space.source}: base")
            except ConfigError as base_error:
                raise StudyError(f"this worker cannot read the space's base config: {base_error}") from None
            return self._prune(trial, "invalid_config", f"invalid config: {e}")
        cfg = pin_model(pin_data(cfg))
        _check_gpu(cfg.train.device, self.worker)
        set_trial_info(trial, CONFIG, config_to_dict(cfg))
        set_trial_info(trial, DATA, data_identity(cfg))
        set_trial_info(trial, STORAGE_DTYPE, budget.storage_dtype)  # kept weights and exports use it
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
        self._budget_note = _budget_note(screen, budget)
        _save_note(trial, self._budget_note)
        if not screen.feasible:
            broken = [k for k, v in screen.constraints.items() if v > 0]
            return self._prune(trial, f"over:{broken[0]}", "over budget: " + "; ".join(screen.violations))

        metric, sign = space.metric, (1 if space.directions[0] == "maximize" else -1)
        best: dict[str, float] = {}
        start = time.perf_counter()
        cuda = torch.cuda.is_available() and cfg.train.device != "cpu"
        if cuda:
            torch.cuda.reset_peak_memory_stats()

        def report(epoch: int, metrics: dict[str, float]) -> None:
            check_stop()  # a signal whose exception a gc callback swallowed
            value = metrics[metric]
            set_trial_info(trial, LIVE, {"epoch": epoch, "images_per_s": round(metrics["images_per_s"], 1)})
            if not best or sign * value > sign * best["value"]:
                best.update(value=value, epoch=epoch)
            if not space.multi_objective:
                trial.report(value, epoch)
            elapsed = time.perf_counter() - start
            if budget.max_trial_seconds is not None and elapsed > budget.max_trial_seconds:
                raise _Stop("over:max_trial_seconds",
                            f"ran {elapsed:.0f} s > max_trial_seconds {budget.max_trial_seconds:g} at epoch {epoch}")
            if budget.max_gpu_memory_mb is not None and cuda:
                used = torch.cuda.max_memory_allocated() / 2**20
                if used > budget.max_gpu_memory_mb:
                    raise _Stop("over:max_gpu_memory_mb",
                                f"GPU memory {used:.0f} MiB > max_gpu_memory_mb {budget.max_gpu_memory_mb:g}")
            if not space.multi_objective and trial.should_prune():
                raise optuna.TrialPruned(f"pruned by {space.spec.study.pruner.name} at epoch {epoch} "
                                         f"({metric} {value:.4f})")

        def finish() -> None:
            for m in ckpt.restored:  # epochs restored from a checkpoint count too
                if metric in m and (not best or sign * m[metric] > sign * best["value"]):
                    best.update(value=m[metric], epoch=m["epoch"])
            trial.set_user_attr(DEVICE_SECONDS, round(time.perf_counter() - start, 2))
            if best:
                trial.set_user_attr(BEST_VALUE, best["value"])
                trial.set_user_attr(BEST_EPOCH, int(best["epoch"]))

        store = self.store()
        ckpt = TrialCheckpoint(trial, store)
        interrupted = False
        try:
            result = train(cfg, report, checkpoint=ckpt)
        except _OWED:
            interrupted = True  # owed again: the retry resumes from this trial's checkpoint
            raise
        except _Stop as e:
            return self._prune(trial, e.cause, str(e))
        except optuna.TrialPruned as e:
            return self._prune(trial, f"pruner:{space.spec.study.pruner.name}", str(e))
        except TrainingDiverged as e:
            return self._prune(trial, "diverged", str(e))
        except torch.cuda.OutOfMemoryError:
            return self._prune(trial, "cuda_oom", f"CUDA out of memory (batch {cfg.train.batch_size}, width {cfg.model.width:g})")
        except RuntimeError as e:  # cuDNN and cuBLAS report a failed allocation as a plain RuntimeError
            if not _alloc_failure(e):
                raise
            return self._prune(trial, "cuda_oom", f"CUDA out of memory in {str(e).split(':')[0][:80]} "
                                                  f"(batch {cfg.train.batch_size}, width {cfg.model.width:g})")
        finally:
            ckpt.finish(keep=interrupted)
            finish()
        value = result.history[-1][metric]
        if result.model is not None and not space.multi_objective:
            try:  # a trained trial is never lost to keeping its weights: it stays COMPLETE, the problem recorded
                keep_if_best(trial, value, sign > 0, state_dict_at(result.model, budget.storage_dtype), store)
            except Exception as e:
                set_trial_info(trial, PROBLEM, f"weights not kept: {type(e).__name__}: {str(e)[:300]}")
        if space.multi_objective:
            return value, float(screen.figures[space.spec.objectives[1]])
        return value


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


def _budget_note(screen: Check, budget: Any) -> str:
    """The trial's budget as its optuna-dashboard note (shown on the trial's page): each limit
    beside the measured figure, then the figures no limit names. The table stays narrow."""
    from hps.search.record import LIMITS, human

    rows = []
    for key, (fig, _) in LIMITS.items():
        limit = getattr(budget, key)
        if limit is None:
            continue
        shown, cap = over(screen.figures[fig], limit)
        rows.append(f"| {key} | {cap} | {shown} | {'fits' if screen.figures[fig] <= limit else '**over**'} |")
    for key in ("max_trial_seconds", "max_gpu_memory_mb"):
        if getattr(budget, key) is not None:
            rows.append(f"| {key} | {getattr(budget, key):g} | checked every epoch | |")
    limited = {fig for key, (fig, _) in LIMITS.items() if getattr(budget, key) is not None}
    for fig, value in screen.figures.items():  # the figures no limit names: measured all the same
        if fig not in limited:
            rows.append(f"| ({fig}) | - | {human(value)} | |")
    return (f"**Budget** (model bytes at {budget.storage_dtype})\n\n| limit | value | this trial | |\n"
            "|---|---|---|---|\n" + "\n".join(rows))


__all__ = ["Objective"]
