import pytest

from hps.search.budget import check, fit_width
from hps.search.record import human
from hps.search.space import Budget
from hps.trainers import config_from_dict, measure, with_overrides


def test_check_reports_each_broken_limit() -> None:
    cfg = config_from_dict({"model": {"name": "resnet18", "width": 0.5}, "train": {"epochs": 30}})
    m = measure(cfg)
    result = check(cfg, Budget(max_params=1_000_000, max_model_bytes=100_000_000, max_macs=m.macs, max_epochs=10))
    assert not result.feasible
    assert result.constraints == {"max_params": m.params - 1_000_000, "max_model_bytes": m.model_bytes["fp32"] - 100_000_000,
                                  "max_macs": 0.0, "max_epochs": 20.0}
    assert result.violations == ["params 2.8M > max_params 1M", "epochs 30 > max_epochs 10"]
    assert result.figures["params"] == m.params and result.figures["flops"] == 2 * m.macs


def test_storage_dtype_decides_the_file_size() -> None:
    cfg = config_from_dict({"model": {"name": "efficientnet_b0", "width": 1.4}})
    fp32, fp16 = check(cfg, Budget(max_model_bytes=20_000_000)), check(cfg, Budget(max_model_bytes=20_000_000, storage_dtype="fp16"))
    assert not fp32.feasible and fp16.feasible  # report 000's trick
    assert fp32.violations[0].startswith("model bytes at fp32 ")


@pytest.mark.parametrize("budget", [Budget(max_params=5_000_000), Budget(max_macs=50_000_000), Budget(max_model_bytes=3_000_000, storage_dtype="fp16")])
def test_fit_width_finds_the_largest_feasible_width(budget: Budget) -> None:
    cfg = config_from_dict({"model": {"name": "resnet18"}})
    w = fit_width(cfg, budget, 0.1, 2.0)
    assert w is not None and 0.1 < w < 2.0
    assert check(with_overrides(cfg, {"model.width": w}), budget).feasible
    assert not check(with_overrides(cfg, {"model.width": w * 1.02 + 0.01}), budget).feasible


def test_fit_width_edges() -> None:
    cfg = config_from_dict({"model": {"name": "airnet"}})
    assert fit_width(cfg, Budget(max_params=10**9), 0.1, 1.0) == 1.0
    assert fit_width(cfg, Budget(max_params=10), 0.1, 1.0) is None


def test_human() -> None:
    assert [human(x) for x in (512, 7_100_000, 20_000_000, 1.5e9)] == ["512", "7.1M", "20M", "1.5G"]


def test_a_broken_limit_never_reads_as_equal() -> None:
    """400,490 params against 400,000 was 'params 400k > max_params 400k'."""
    cfg = config_from_dict({"model": {"name": "resnet18", "width": 0.25}})
    params = measure(cfg).params
    for excess in (1, 490, 5000):
        line = check(cfg, Budget(max_params=params - excess)).violations[0]
        shown, limit = line.removeprefix("params ").split(" > max_params ")
        assert shown != limit, line


def test_the_per_epoch_limits_are_a_validated_object_the_objective_asks() -> None:
    """max_trial_seconds and max_gpu_memory_mb, asked after each epoch as a pruner is (the budget's
    one home: search/budget.py): a bad limit is refused when made, a spent one raises OverBudget."""
    import time

    import optuna

    from hps.search.budget import EpochLimits, OverBudget

    for bad in (0, -1.0, float("nan"), True, "5"):
        with pytest.raises(ValueError, match="max_trial_seconds must be a number > 0 or None"):
            EpochLimits(max_trial_seconds=bad)  # type: ignore[arg-type]
    EpochLimits(max_trial_seconds=60).check(1)  # within: nothing
    EpochLimits(max_gpu_memory_mb=1).check(1)  # no CUDA: the memory limit is not asked
    limits = EpochLimits.of(Budget(max_trial_seconds=0.001), cuda=False)
    time.sleep(0.01)
    with pytest.raises(OverBudget) as e:
        limits.check(3)
    assert isinstance(e.value, optuna.TrialPruned) and e.value.cause == "over:max_trial_seconds"
    assert str(e.value).startswith("ran 0 s > max_trial_seconds 0.001 at epoch 3")


def test_every_budget_rule_lives_in_budget_py() -> None:
    import hps.search.budget as budget
    import hps.search.executors as executors
    import hps.search.record as record

    assert executors.StudyBudget is budget.StudyBudget and budget.StudyBudget.__module__ == "hps.search.budget"
    assert all(callable(getattr(budget, f)) for f in ("check", "check_smallest", "check_fit", "fit_width", "note", "columns"))
    assert not hasattr(record, "LIMITS") and set(budget.LIMITS) == {"max_params", "max_model_bytes", "max_macs",
                                                                   "max_flops", "max_epochs"}
