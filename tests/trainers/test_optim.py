import itertools
import math

import pytest
import torch

from hps.trainers import config_from_dict, create_model
from hps.trainers.config import ScheduleConfig
from hps.trainers.optim import build_optimizer, lr_at


def sched(**kw: object) -> ScheduleConfig:
    return config_from_dict({"schedule": kw}).schedule


def test_cosine_and_warmup() -> None:
    s = sched(name="cosine", warmup_epochs=2)
    assert lr_at(0.0, 10, 0.1, s) == pytest.approx(0.0, abs=1e-9)
    assert lr_at(1.0, 10, 0.1, s) == pytest.approx(0.05)  # half-way through warmup
    assert lr_at(2.0, 10, 0.1, s) == pytest.approx(0.1)
    assert lr_at(6.0, 10, 0.1, s) == pytest.approx(0.05)  # half-way through the cosine
    assert lr_at(10.0, 10, 0.1, s) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(10.0, 10, 0.1, sched(name="cosine", eta_min=0.001)) == pytest.approx(0.001)


def test_step_multistep_none() -> None:
    assert lr_at(37.9, 100, 1e-2, sched(name="step", step_size=38, gamma=0.5)) == pytest.approx(1e-2)
    assert lr_at(38.0, 100, 1e-2, sched(name="step", step_size=38, gamma=0.5)) == pytest.approx(5e-3)
    ms = sched(name="multistep", milestones=[70, 90], gamma=0.4)
    assert [lr_at(e, 100, 1.0, ms) for e in (69, 70, 95)] == pytest.approx([1.0, 0.4, 0.16])
    assert lr_at(50, 100, 0.3, sched(name="none")) == 0.3


def test_sgdr_restarts() -> None:
    s = sched(name="sgdr", t0=10, t_mult=2)
    assert lr_at(9.999, 100, 1.0, s) < 1e-6
    assert lr_at(10.0, 100, 1.0, s) == pytest.approx(1.0)  # restart
    assert lr_at(20.0, 100, 1.0, s) == pytest.approx(0.5)  # half of the 20-epoch second period
    assert lr_at(30.0, 100, 1.0, s) == pytest.approx(1.0)  # third period starts


def test_onecycle_peaks_at_pct_start() -> None:
    s = sched(name="onecycle", pct_start=0.25)
    values = [lr_at(e / 10, 10, 1.0, s) for e in range(101)]
    assert max(values) == pytest.approx(1.0) and values.index(max(values)) == 25
    assert values[0] < 0.05 and values[-1] < 1e-6


def test_no_weight_decay_on_norm_and_bias() -> None:
    model = create_model("resnet18", width=0.25)
    for name in ("sgd", "adam", "adamw", "radam"):
        opt = build_optimizer(model, config_from_dict({"optimizer": {"name": name, "weight_decay": 0.01}}).optimizer)
        decay, no_decay = opt.param_groups
        assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
        assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
        assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    sgd = build_optimizer(model, config_from_dict({}).optimizer)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and math.isclose(sgd.defaults["momentum"], 0.9)


@pytest.mark.parametrize("t0", [10, 25, 50])
def test_sgdr_ends_annealed_at_the_last_epoch(t0: int) -> None:
    """The shipped SGDR spaces (t0 10/25/50, t_mult 2, 100 epochs) end at eta_min, not mid-cycle."""
    from hps.trainers.optim import sgdr_periods

    s = sched(name="sgdr", t0=t0, t_mult=2, eta_min=0.001)
    assert lr_at(100.0 - 1e-9, 100, 0.1, s) == pytest.approx(0.001, abs=1e-6)
    periods = sgdr_periods(100, t0, 2)
    assert sum(periods) == pytest.approx(100)
    assert periods == {10: [10, 20, 70], 25: [25, 75], 50: [100]}[t0]
    assert all(b >= a for a, b in itertools.pairwise(periods))


def test_cosine_period_is_pytorchs_cosine_annealing_past_t_max() -> None:
    """Report 000: T_max 300 over a 500-epoch run; past 300 the lr rises again, exactly as
    torch.optim.lr_scheduler.CosineAnnealingLR (its closed form) does."""
    cfg = ScheduleConfig(name="cosine", period=300, eta_min=1e-4)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=300, eta_min=1e-4)
    for epoch in range(500):
        assert lr_at(epoch, 500, 0.1, cfg) == pytest.approx(sched._get_closed_form_lr()[0], rel=1e-9, abs=1e-12), epoch
        opt.step()
        sched.step()
    assert lr_at(300, 500, 0.1, cfg) == pytest.approx(1e-4) and lr_at(450, 500, 0.1, cfg) > lr_at(350, 500, 0.1, cfg)
    # without a period the run anneals once, to the floor at its last epoch
    assert lr_at(500, 500, 0.1, ScheduleConfig(name="cosine", eta_min=1e-4)) == pytest.approx(1e-4)


def test_a_finetune_stage_follows_the_main_schedule() -> None:
    """Report 003: lr 2e-4 -> 1e-5 (cosine), then fine-tuning 5e-6 -> 1e-6 over the last epochs."""
    s = sched(name="cosine", eta_min=1e-5, finetune_epochs=2, finetune_lr=5e-6, finetune_eta_min=1e-6)
    lrs = [lr_at(e, 10, 2e-4, s) for e in (0.0, 4.0, 8.0 - 1e-9, 8.0, 9.0, 10.0 - 1e-9)]
    assert lrs == pytest.approx([2e-4, 1e-5 + (2e-4 - 1e-5) / 2, 1e-5, 5e-6, 3e-6, 1e-6])
    # the main schedule spans the 8 epochs before the stage (here: the same cosine as an 8-epoch run)
    plain = sched(name="cosine", eta_min=1e-5)
    assert [lr_at(e, 10, 2e-4, s) for e in (1.0, 3.5, 7.0)] == pytest.approx([lr_at(e, 8, 2e-4, plain) for e in (1.0, 3.5, 7.0)])
