"""One trial's life in a worker: nothing of a finished trial outlives it, and a GPU library's failed
allocation is the memory limit (PRUNED), not a bug (FAIL). Real training on real CIFAR images."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from torch import nn

import hps
from hps.search.record import PRUNE_REASON, reason
from tests.search.conftest import SMALL

pytestmark = pytest.mark.slow  # real training runs
MADE: list[weakref.ref[nn.Module]] = []


class _Net(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, fail: str | None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail and torch.is_grad_enabled():  # training; the load-time check runs without grad
            raise RuntimeError(self.fail)
        return self.head(self.conv(x).mean((2, 3)))


def tracked(num_classes: int, in_channels: int) -> nn.Module:
    model = _Net(num_classes, in_channels, None)
    MADE.append(weakref.ref(model))
    return model


def alloc_fails(num_classes: int, in_channels: int) -> nn.Module:
    return _Net(num_classes, in_channels, "cuDNN error: CUDNN_STATUS_ALLOC_FAILED")


def _space(name: str, model: str, **budget: Any) -> dict[str, Any]:
    return {**SMALL, "study": {**SMALL["study"], "name": name, "trials": 3}, "warm_start": [],
            "base": {**SMALL["base"], "model": {"name": model}}, "space": {"optimizer.lr": {"low": 0.01, "high": 0.1}},
            "budget": budget}


def test_nothing_of_a_pruned_trial_outlives_it(tmp_path: Path) -> None:
    """With the garbage collector off, every model a pruned trial built is gone once it ends: the
    exception that stopped it (raised inside train(), its traceback holding train()'s frames) is
    not chained to what Optuna keeps. Before, they stayed until a collection, and on a GPU the next
    trial's memory figures counted them."""
    MADE.clear()
    gc.collect()
    gc.disable()
    try:
        result = hps.run(_space("gone", "tests.search.test_objective:tracked", max_trial_seconds=0.001),
                         f"sqlite:///{tmp_path / 's.db'}", progress="none")
        alive = [r for r in MADE if r() is not None]
    finally:
        gc.enable()
    pruned = result.study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert len(pruned) == 3 and {t.user_attrs[PRUNE_REASON] for t in pruned} == {"over:max_trial_seconds"}
    assert len(MADE) >= 3 and alive == []


def test_a_failed_gpu_library_allocation_is_the_memory_limit(tmp_path: Path) -> None:
    result = hps.run(_space("alloc", "tests.search.test_objective:alloc_fails"), f"sqlite:///{tmp_path / 's.db'}",
                     progress="none")
    t = result.study.trials[0]
    assert t.state == optuna.trial.TrialState.PRUNED and t.user_attrs[PRUNE_REASON] == "cuda_oom"
    assert reason(t).startswith("CUDA out of memory in cuDNN error (batch 100")
