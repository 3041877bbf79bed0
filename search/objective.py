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
epoch its schedule ends annealed on. User attrs: ``config`` (the full trainer config, data path
and sha256 included), ``data`` (the data's identity), the measured budget figures as scalars (``params``,
``model_bytes``, ``macs``, ``flops``, ``epochs``, ``train_memory_mb``: sortable in the dashboard),
``budget_excess`` (how far over its tightest limit the config is, as a fraction: <= 0 fits),
``best_value``/``best_epoch`` (the best epoch's metric), ``device_seconds`` (training wall time;
the study's compute budget sums it).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import optuna
import torch

from search.budget import check
from search.checkpoints import TrialCheckpoint, keep_if_best
from search.errors import StudyError
from search.space import Space, suggest
from search.storage import artifact_store
from trainers import ConfigError, TrainingDiverged, config_to_dict, data_identity, pin_data, state_dict_at, train


class _Stop(optuna.TrialPruned):
    """A budget limit reached during training."""


class Objective:
    """Picklable: Ray ships it to workers, which load their data once per process."""

    def __init__(self, space: Space, worker: dict[str, Any] | None = None) -> None:
        self.space, self.worker = space, worker
        self._store: Any = None

    def store(self) -> Any:
        """The artifact store for checkpoints and weights (``$HPS_ARTIFACTS``), opened once per process."""
        if self._store is None:
            self._store = artifact_store()
        return self._store

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles the objective; each worker opens its own store
        return {**self.__dict__, "_store": None}

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:500])
            raise

    def _run(self, trial: optuna.Trial) -> float | tuple[float, float]:
        space, budget = self.space, self.space.budget
        try:
            cfg = suggest(space, trial)
        except ConfigError as e:
            return _prune(trial, f"invalid config: {e}")
        cfg = pin_data(cfg)
        _check_gpu(cfg.train.device, self.worker)
        trial.set_user_attr("config", config_to_dict(cfg))
        trial.set_user_attr("data", data_identity(cfg))
        if self.worker:
            trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("storage_dtype", budget.storage_dtype)  # kept weights and exports use it
        screen = check(cfg, budget)
        for key, fig in screen.figures.items():  # one scalar each: the dashboard sorts and filters them
            trial.set_user_attr(key, fig)
        with warnings.catch_warnings():  # a retried trial inherits its original's (identical) constraints
            warnings.filterwarnings("ignore", "The constraint value is ignored")
            for key, value in screen.constraints.items():
                trial.set_constraint(key, value)
        if screen.constraints:  # optuna-dashboard 0.21 shows the list form; Optuna reads both
            trial.storage.set_trial_system_attr(trial._trial_id, "constraints", list(screen.constraints.values()))
            trial.set_user_attr("budget_excess", screen.excess)  # > 0: over budget; a sortable column
        if not screen.feasible:
            return _prune(trial, "over budget: " + "; ".join(screen.violations))

        metric, sign = space.metric, (1 if space.directions[0] == "maximize" else -1)
        best: dict[str, float] = {}
        start = time.perf_counter()
        cuda = torch.cuda.is_available() and cfg.train.device != "cpu"
        if cuda:
            torch.cuda.reset_peak_memory_stats()

        def report(epoch: int, metrics: dict[str, float]) -> None:
            value = metrics[metric]
            if not best or sign * value > sign * best["value"]:
                best.update(value=value, epoch=epoch)
            if not space.multi_objective:
                trial.report(value, epoch)
            elapsed = time.perf_counter() - start
            if budget.max_trial_seconds is not None and elapsed > budget.max_trial_seconds:
                raise _Stop(f"ran {elapsed:.0f} s > max_trial_seconds {budget.max_trial_seconds:g} at epoch {epoch}")
            if budget.max_gpu_memory_mb is not None and cuda:
                used = torch.cuda.max_memory_allocated() / 2**20
                if used > budget.max_gpu_memory_mb:
                    raise _Stop(f"GPU memory {used:.0f} MiB > max_gpu_memory_mb {budget.max_gpu_memory_mb:g}")
            if not space.multi_objective and trial.should_prune():
                raise optuna.TrialPruned(f"pruned by {space.spec.study.pruner.name} at epoch {epoch} "
                                         f"({metric} {value:.4f})")

        def finish() -> None:
            for m in ckpt.restored:  # epochs restored from a checkpoint count too
                if metric in m and (not best or sign * m[metric] > sign * best["value"]):
                    best.update(value=m[metric], epoch=m["epoch"])
            trial.set_user_attr("device_seconds", time.perf_counter() - start)
            if best:
                trial.set_user_attr("best_value", best["value"])
                trial.set_user_attr("best_epoch", int(best["epoch"]))

        store = self.store()
        ckpt = TrialCheckpoint(trial, store)
        try:
            result = train(cfg, report, checkpoint=ckpt)
        except (optuna.TrialPruned, TrainingDiverged) as e:
            return _prune(trial, str(e))
        except torch.cuda.OutOfMemoryError:
            return _prune(trial, f"CUDA out of memory (batch {cfg.train.batch_size}, width {cfg.model.width:g})")
        finally:
            ckpt.finish()
            finish()
        value = result.history[-1][metric]
        if result.model is not None and not space.multi_objective:
            keep_if_best(trial, value, sign > 0, state_dict_at(result.model, budget.storage_dtype), store)
        if space.multi_objective:
            return value, float(screen.figures[space.spec.objectives[1]])
        return value


def _check_gpu(device: str, worker: dict[str, Any] | None) -> None:
    """A trial Ray gave a GPU share must train on CUDA: never on the CPU without a word."""
    w = worker or {}
    if w.get("gpus") and device != "cpu" and not torch.cuda.is_available():
        raise StudyError(f"Ray gave this trial GPU {', '.join(w['gpus'])} (CUDA_VISIBLE_DEVICES={w.get('cuda_visible')}) "
                         f"but torch sees no CUDA device on {w.get('host')}: check the NVIDIA driver and container "
                         "toolkit there, or run with --gpus-per-trial 0")


def _prune(trial: optuna.Trial, reason: str) -> Any:
    trial.set_user_attr("prune_reason", reason)
    raise optuna.TrialPruned(reason)


__all__ = ["Objective"]
