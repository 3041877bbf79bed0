"""The reports' benchmark rehearsed on the CPU at tiny settings, on a folder of real CIFAR images
(the GPU run's input, made here from the mini set), so that a GPU run has no surprises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, png_folder


@pytest.mark.slow
def test_the_reports_table_on_a_folder(tmp_path: Path) -> None:
    data = png_folder(tmp_path / "images", classes=10, per_class=16, test_per_class=4)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "bench/reports.py", "--report", "001", "--report", "airnet", "--data", str(data),
         "--search-seconds", "2", "--trials", "2", "--epochs", "1", "--retrain-epochs", "2",
         "--storage", f"sqlite:///{tmp_path / 'r.db'}", "--out", str(out), "--progress", "none",
         "--set", "fixed.train.device=cpu", "--set", "fixed.train.batch_size=32", "--set", "space.model.width.low=0.25", "--set", "space.model.width.high=0.3"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "reports.json").read_text())
    assert [r["report"] for r in rows] == ["001", "airnet"]
    for r in rows:
        assert 1 <= r["trials"] <= 2 and r["device_s"] > 0
        assert r["train_images"] < 160 and r["images"] % r["train_images"] == 0 and r["images"] > 0
        assert r["retrain_images"] == 2 * r["train_images"]
        assert 0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["best_val"] <= 1.0
        assert r["report_images"] == 1200 * 50_000 and r["report_acc"] == 0.956
        assert (out / f"best-{r['report']}.yaml").exists() and (out / f"retrain-{r['report']}" / "metrics.json").exists()
    table = (out / "reports.md").read_text()
    assert table == proc.stdout[proc.stdout.index("| setup"):]
    assert table.count("95.60%") == 2
