"""The search-quality benchmark's plumbing at a tiny budget (the full run is a benchmark, not a test):
each method leaves a correct study, and hps never trains a config that breaks the budget."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hps.search.record import reason
from tests.conftest import REPO


@pytest.mark.slow
def test_search_quality_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "bench/search_quality.py", "--budget", "4", "--seeds", "0", "--no-retrain",
                           "--epochs", "1", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"hps", "random", "tune"}
    for method, data in results["methods"].items():
        run = data["runs"][0]
        seconds = [s for s, _ in run["curve"]]
        assert seconds == sorted(seconds), method
    assert results["methods"]["hps"]["runs"][0]["trials"] >= 1
    assert results["methods"]["random"]["runs"][0]["trials"] >= 1
    assert (out / "curves.png").stat().st_size > 5000

    url = f"sqlite:///{out / 'studies.db'}"
    studies = {s.study_name.split("-")[1]: s.study_name for s in optuna.get_all_study_summaries(url)}
    assert set(studies) == {"hps", "random", "tune"}
    hps = optuna.load_study(study_name=studies["hps"], storage=url).trials
    pre_screened = [t for t in hps if any(v > 0 for v in t.constraints.values())]
    assert pre_screened, "the space's width range should produce configs over max_params"
    assert all(t.state == TrialState.PRUNED and not t.intermediate_values and "over budget" in reason(t)
               for t in pre_screened)  # pre-screened: infeasible configs never train
    assert results["methods"]["hps"]["runs"][0]["infeasible_seconds"] == 0.0
    random = optuna.load_study(study_name=studies["random"], storage=url).trials
    assert {t.state for t in random if t.state.is_finished()} == {TrialState.COMPLETE}  # no pruning, no pre-screen
    assert not any(t.constraints for t in random)
    tune = optuna.load_study(study_name=studies["tune"], storage=url).trials
    assert tune and {t.state for t in tune if t.state.is_finished()} <= {TrialState.COMPLETE}  # Tune never prunes in Optuna
