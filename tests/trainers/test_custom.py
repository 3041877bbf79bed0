"""``train.fn``: the user's own training loop, run by the trainer alone (no search): a real loop
trains and its reports are the history; a resumed run ends exactly as an uninterrupted one; each
kind of mistake in the function is one line naming it, with the file:line where it was raised."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from hps.trainers import TrainFnError, config_from_dict, train
from hps.trainers.errors import EpochLimit, ModelError
from tests.conftest import REPO

LOOP = REPO / "spaces" / "models" / "ema_loop.py"


def _cfg(fn: str, epochs: int = 2, **args: Any) -> Any:
    return config_from_dict({"model": {"name": "airnet", "width": 0.125}, "data": {"subset": 300, "val_fraction": 0.2},
                             "optimizer": {"name": "sgd", "lr": 0.05},
                             "train": {"epochs": epochs, "batch_size": 64, "device": "cpu", "fn": fn, "args": args}},
                            "<test>")


def _fn(tmp_path: Path, body: str, name: str = "loop.py") -> str:
    path = tmp_path / name
    path.write_text("import torch\nimport torch.nn.functional as F\n\n\ndef fit(ctx):\n" + textwrap.indent(
        textwrap.dedent(body), "    "))
    return f"{path}:fit"


class Memory:
    """A checkpoint hook kept in memory (the trainer's protocol; the search's real store is
    tested in tests/search/test_custom.py): saves every epoch, and can stop the run after one."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.saved: dict[str, Any] | None = None
        self.stop_after = stop_after

    def load(self) -> dict[str, Any] | None:
        return self.saved

    def after_epoch(self, epoch: int, state: Any) -> None:
        import copy

        self.saved = copy.deepcopy(state())
        if self.stop_after == epoch:
            raise KeyboardInterrupt


def test_a_real_loop_trains_and_its_reports_are_the_history() -> None:
    seen: list[tuple[int, dict[str, float]]] = []
    r = train(_cfg(f"{LOOP}:fit", ema_decay=0.9, smoothing=0.1), lambda e, m: seen.append((e, dict(m))), test=True)
    assert [e for e, _ in seen] == [1, 2] and [h["epoch"] for h in r.history] == [1, 2]
    assert {"value", "val_loss", "train_loss", "lr", "epoch_seconds", "images_per_s"} <= set(r.history[-1])
    assert r.config.train.fn_sha256 is not None and len(r.config.train.fn_sha256) == 64  # the code it ran, pinned
    assert r.model is not None and r.test_acc is not None and 0 <= r.test_acc <= 1
    assert r.params == sum(p.numel() for p in r.model.parameters())


def test_a_resumed_loop_ends_as_an_uninterrupted_one() -> None:
    cfg = _cfg(f"{LOOP}:fit", epochs=3, ema_decay=0.9)
    whole = train(cfg, checkpoint=Memory())
    hook = Memory(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, checkpoint=hook)
    hook.stop_after = None
    resumed = train(cfg, checkpoint=hook)
    assert [h["value"] for h in resumed.history] == [h["value"] for h in whole.history]
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in whole.history]


BAD = [
    ("raise ValueError('lr too high')\n", TrainFnError, r"raised ValueError: lr too high \(.*loop\.py:6\)"),
    ("return None\n", TrainFnError, r"returned without calling ctx\.report"),
    ("ctx.report(2, 0.5)\n", TrainFnError, r"ctx\.report: epoch 2 after epoch 0"),
    ("ctx.report(1, 0.5)\nctx.report(1, 0.6)\n", TrainFnError, r"ctx\.report: epoch 1 after epoch 1"),
    ("ctx.report(1, float('nan'))\n", TrainFnError, r"ctx\.report: value=nan at epoch 1 is not a finite number"),
    ("ctx.report(1, 0.5, val_loss='low')\n", TrainFnError, r"val_loss='low' at epoch 1 is not a finite number"),
    ("for e in range(1, 4):\n    ctx.report(e, 0.5)\n", EpochLimit, r"reported epoch 3 > train\.epochs 2"),
    ("ctx.report(1, 0.5)\nreturn 'weights'\n", TrainFnError, r"returned a str; return the trained nn\.Module"),
    ("ctx.report(1, 0.5)\nreturn torch.nn.Linear(3, 2)\n", TrainFnError, r"returned a network of 8 params, not the"),
    ("ctx.evaluate(split='train')\n", TrainFnError, r"ctx\.evaluate\(split='train'\): choose 'val' or 'test'"),
    ("ctx.checkpoint({'a': 1})\n", TrainFnError, r"ctx\.checkpoint: call it after ctx\.report"),
]


@pytest.mark.parametrize(("body", "error", "message"), BAD, ids=[b[2][:30] for b in BAD])
def test_each_mistake_in_the_function_is_one_line(tmp_path: Path, body: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message) as info:
        train(_cfg(_fn(tmp_path, body)), checkpoint=Memory())
    assert "\n" not in str(info.value)


def test_a_function_that_cannot_take_its_args_or_is_missing_is_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"train\.fn .* cannot be called as fn\(ctx, \*\*train\.args\) with train\.args "
                                         r"\['decay'\]"):
        train(_cfg(_fn(tmp_path, "ctx.report(1, 0.5)\n"), decay=0.9))
    with pytest.raises(ModelError, match=r"train\.fn .*: no such file"):
        train(_cfg(f"{tmp_path}/nope.py:fit"))
    with pytest.raises(ModelError, match=r"has no 'train'; callables there: fit"):
        train(_cfg(_fn(tmp_path, "pass\n").replace(":fit", ":train")))


def test_what_report_raises_to_stop_the_run_passes_through_untouched() -> None:
    class Stop(Exception):
        pass

    def stop(epoch: int, metrics: dict[str, float]) -> None:
        raise Stop("pruned")

    with pytest.raises(Stop, match="pruned"):
        train(_cfg(f"{LOOP}:fit"), stop)
