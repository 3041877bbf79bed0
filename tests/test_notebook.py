"""hps in a real Jupyter kernel: progress as plain lines (no terminal panel), and interrupting the
kernel stops the run cleanly (the trial stored with its reason and owed, the next run resumes)."""

from __future__ import annotations

import json
import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tests.search.conftest import SMALL

pytestmark = pytest.mark.slow


def _iopub(kc: Any, msg_id: str, seconds: float) -> Iterator[dict[str, Any] | None]:
    """The iopub messages of one execution for ``seconds`` (None while none arrives)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            yield None
            continue
        if msg["parent_header"].get("msg_id") == msg_id:
            yield msg


def _collect(kc: Any, msg_id: str, seconds: float, until: Any = None) -> tuple[str, list[dict[str, Any]]]:
    """Stream text and errors of one execution, until the kernel is idle again (or ``until()``)."""
    text, errors = "", []
    for msg in _iopub(kc, msg_id, seconds):
        if until is not None and until():
            return text, errors
        if msg is None:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            text += content["text"]
        elif kind == "error":
            errors.append(content)
        elif kind == "status" and content["execution_state"] == "idle" and until is None:
            return text, errors
    raise AssertionError(f"the kernel did not finish in {seconds} s; output so far: {text[-500:]}")


def test_a_run_in_a_notebook_shows_lines_and_stops_cleanly_on_interrupt(tmp_path: Path, mini_npz: Path) -> None:
    from jupyter_client import KernelManager

    url = f"sqlite:///{tmp_path / 'nb.db'}"
    space = {**SMALL, "study": {**SMALL["study"], "name": "nb", "pruner": {"name": "none"}}, "warm_start": [],
             "space": {"model.width": {"low": 0.125, "high": 0.3}, "optimizer.lr": {"low": 0.01, "high": 0.1, "log": True}},
             "fixed": {"train.epochs": 8}, "budget": {"max_params": 300_000, "max_epochs": 8}}
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path), env={**os.environ, "HPS_DATA": str(mini_npz), "HPS_CHECKPOINT_SECONDS": "0",
                                            "HPS_ARTIFACTS": str(tmp_path / "art")})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        kc.execute(f"import hps, json\nspace = json.loads({json.dumps(json.dumps(space))})", silent=True)

        def trained_two_epochs() -> bool:
            try:
                ts = optuna.load_study(study_name="nb", storage=url).trials
            except KeyError:
                return False
            return any((t.system_attrs.get("hps:checkpoint") or {}).get("epoch", 0) >= 2 for t in ts)

        msg_id = kc.execute(f"result = hps.run(space, {url!r})")
        before, _ = _collect(kc, msg_id, 180, until=trained_two_epochs)
        km.interrupt_kernel()  # the notebook's stop button
        text, errors = _collect(kc, msg_id, 120)
        text = before + text
        assert "study nb on sqlite:" in text and "\x1b[" not in text  # plain lines, no terminal panel
        assert "trial" in text.split("study nb on sqlite:")[1]  # a line per finished trial
        assert [e["ename"] for e in errors] == ["KeyboardInterrupt"]
        ts = optuna.load_study(study_name="nb", storage=url).trials
        (stopped,) = [t for t in ts if t.state == TrialState.FAIL]
        (owed,) = [t for t in ts if t.state == TrialState.WAITING]
        assert stopped.user_attrs["fail_reason"] == "interrupted" and owed.params == stopped.params
        assert not [t for t in ts if t.state == TrialState.RUNNING]

        done = sum(t.state == TrialState.COMPLETE for t in ts)
        msg_id = kc.execute(f"result = hps.run(space, {url!r}, trials={done + 1})\nprint(result.counts)")
        text, errors = _collect(kc, msg_id, 300)
        assert errors == [] and f"trial {owed.number} complete value" in text
        retry = optuna.load_study(study_name="nb", storage=url).trials[owed.number]
        assert retry.state == TrialState.COMPLETE
        assert retry.system_attrs["hps:resumed_from"]["trial"] == stopped.number  # resumed from its checkpoint
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _messages(kc: Any, msg_id: str, seconds: float) -> list[dict[str, Any]]:
    """Every iopub message of one execution, until the kernel is idle again."""
    out = []
    for msg in _iopub(kc, msg_id, seconds):
        if msg is None:
            continue
        out.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return out
    raise AssertionError(f"the kernel did not finish in {seconds} s")


def test_a_notebook_shows_a_bar_per_running_trial_one_line_results_and_no_warnings(tmp_path: Path, mini_npz: Path) -> None:
    """In Jupyter: no tqdm IProgress warning at import, a progress bar of the running trial's epochs
    redrawn in place, and ``result`` / ``hps.export(...)`` shown in one line each."""
    from jupyter_client import KernelManager

    url = f"sqlite:///{tmp_path / 'nb.db'}"
    space = {**SMALL, "study": {**SMALL["study"], "name": "bar", "trials": 1, "pruner": {"name": "none"}}, "warm_start": [],
             "space": {"model.width": {"low": 0.2, "high": 0.3}}, "fixed": {"train.epochs": 8},
             "budget": {"max_params": 300_000, "max_epochs": 8}}
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path), env={**os.environ, "HPS_DATA": str(mini_npz), "HPS_ARTIFACTS": str(tmp_path / "art")})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        msgs = _messages(kc, kc.execute(f"import hps, json\nspace = json.loads({json.dumps(json.dumps(space))})\n"
                                        f"result = hps.run(space, {url!r})\nresult"), 300)
        msgs += _messages(kc, kc.execute("hps.export(result, 'best.yaml')"), 120)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    streams = "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream")
    assert "IProgress" not in streams and "Warning" not in streams, streams
    bars = [m["content"]["data"] for m in msgs if m["msg_type"] in ("display_data", "update_display_data")]
    assert any("trial 0: epoch" in b["text/plain"] and "<progress" in b.get("text/html", "") for b in bars), bars
    shown = [m["content"]["data"]["text/plain"] for m in msgs if m["msg_type"] == "execute_result"]
    assert len(shown) == 2 and all("\n" not in s for s in shown), shown
    assert shown[0].startswith("<RunResult study bar: 1/1 finished (1 complete)") and shown[1].startswith("<Exported trial 0")
