"""The search-quality benchmark's plumbing, at a tiny budget (the full run is not a test)."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_search_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "bench/search_quality.py", "--budget", "4", "--seeds", "0", "--no-retrain", "--epochs", "1",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"hps", "random", "tune"}
    for method, data in results["methods"].items():
        run = data["runs"][0]
        assert run["trials"] >= 1 and run["curve"], method
        seconds = [s for s, _ in run["curve"]]
        assert seconds == sorted(seconds)
    hps = results["methods"]["hps"]["runs"][0]
    assert hps["infeasible_seconds"] == 0.0  # pre-screened: infeasible configs never train
    assert all(r["intermediate"] == 0 for r in hps["rows"] if not r["feasible"])
    assert all(r["feasible"] for r in hps["rows"] if r["intermediate"] > 0)
    random = results["methods"]["random"]["runs"][0]
    assert set(random["states"]) <= {"COMPLETE"}  # no pruning, nothing pre-screened
    assert (out / "curves.png").stat().st_size > 5000
