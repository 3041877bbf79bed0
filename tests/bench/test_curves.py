"""The learning-curve recorder (bench/curves.py) at tiny settings: one line per (config, seed) with
a curve, infeasible configs recorded with their figures and never trained, and a rerun that
resumes instead of training again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def _record(out: Path) -> str:
    proc = subprocess.run([sys.executable, "bench/curves.py", "record", "--out", str(out), "--configs", "5",
                           "--epochs", "2", "--subset", "200"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_the_table_records_curves_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "curves.jsonl"
    _record(out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    trained = [r for r in rows if r["feasible"]]
    infeasible = [r for r in rows if not r["feasible"]]
    assert infeasible and all(r["budget"]["params"] > 150_000 and r["violations"] and "val_acc" not in r
                              for r in infeasible)
    assert sorted((r["config"], r["seed"]) for r in trained) == sorted((c, s) for c in {r["config"] for r in trained}
                                                                        for s in (0, 1))
    for r in trained:
        assert r["budget"]["params"] <= 150_000
        assert len(r["val_acc"]) == len(r["val_loss"]) == len(r["epoch_seconds"]) == 2
        assert 0 <= r["test_acc"] <= 1
    assert {r["config"] for r in rows} == set(range(5))  # every draw is in the table, trained or not
    assert "0 trainings to go" in _record(out)  # a rerun resumes: nothing trained twice
    assert out.read_text().count("\n") == len(rows)
