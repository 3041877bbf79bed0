"""The stock optuna-dashboard on a study hps wrote, in a real Chromium: the trial table fits a
screen (one line a row, no sideways scrolling at 1920 px), a budget column sorts, and a trial's
page shows its budget. ``HPS_SCREENSHOTS=DIR`` keeps the screenshots (docs/ holds them)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium
from tests.helpers import free_port, wait_http, wait_until
from tests.search.conftest import SMALL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory, mini_npz: Path) -> Iterator[dict[str, Any]]:
    import hps

    tmp = tmp_path_factory.mktemp("dash")
    url = f"sqlite:///{tmp / 'dash.db'}"
    space = {**SMALL, "study": {**SMALL["study"], "name": "dash", "trials": 6}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPS_DATA", str(mini_npz))
        mp.setenv("HPS_ARTIFACTS", str(tmp / "artifacts"))
        result = hps.run(space, url, progress="none")
    port = free_port()
    exe = Path(sys.executable).parent / "optuna-dashboard"  # the stock one, as a user starts it
    proc = subprocess.Popen([str(exe), url, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/api/studies")
    try:
        yield {"url": base, "result": result, "study_id": result.study._study_id}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(1920, 1080) as b:
        yield b


def _wait(fn: Any, seconds: float = 30) -> Any:
    return wait_until(fn, seconds, every=0.3, what="the page")


def _shot(b: Any, name: str) -> None:
    if folder := os.environ.get("HPS_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        b.save_screenshot(str(Path(folder) / name))


def _column(table: Any, index: int) -> list[str]:
    from selenium.webdriver.common.by import By

    return [r.find_elements(By.TAG_NAME, "td")[index].text for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]


def test_the_trial_table_fits_a_screen_and_a_budget_column_sorts(dashboard: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{dashboard['url']}/dashboard/studies/{dashboard['study_id']}/smartSelection")  # the trial table
    table = _wait(lambda: browser.find_element(By.TAG_NAME, "table"))
    rows = _wait(lambda: table.find_elements(By.CSS_SELECTOR, "tbody tr"))
    assert len(rows) == 6
    heads = [h.text.replace("\n", " ").removesuffix(" sorted ascending") for h in table.find_elements(By.CSS_SELECTOR, "thead th")]
    hps_columns = [h.removeprefix("UserAttribute ") for h in heads if h.startswith("UserAttribute")]
    assert set(hps_columns) == {"best_epoch", "best_value", "device_seconds", "params", "prune_reason"}
    # one line a row (a wrapped reason or a JSON config made rows 133-220 px), no sideways scrolling
    heights = [r.size["height"] for r in rows]
    assert max(heights) <= 70, heights
    container = table.find_element(By.XPATH, "..")
    assert table.size["width"] <= container.size["width"], (table.size, container.size)
    browser.execute_script("arguments[0].scrollIntoView()", table)
    _shot(browser, "dashboard-trials.png")

    # the params column sorts, numerically, both ways
    col = heads.index("UserAttribute params")
    header = table.find_elements(By.CSS_SELECTOR, "thead th")[col]
    header.find_element(By.CSS_SELECTOR, "span[role=button], .MuiTableSortLabel-root").click()
    first = [int(v) for v in _column(table, col)]
    assert first in (sorted(first), sorted(first, reverse=True)) and len(set(first)) > 2
    header.find_element(By.CSS_SELECTOR, "span[role=button], .MuiTableSortLabel-root").click()
    second = [int(v) for v in _column(table, col)]
    assert second == list(reversed(first))


def test_a_trials_page_shows_its_budget(dashboard: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{dashboard['url']}/dashboard/studies/{dashboard['study_id']}/trials")
    body = _wait(lambda: (t := browser.find_element(By.TAG_NAME, "body").text) and "max_params" in t and t)
    assert "Budget" in body and "300k" in body and "1.97M" in body and "over" in body  # trial 0: the warm start over budget
    assert "Pruned: over budget: params 1.97M > max_params 300k" in body  # the whole reason, on its page
    assert "hps:config" not in body  # the full config stays out of sight
    _shot(browser, "dashboard-trial.png")
    browser.get(f"{dashboard['url']}/dashboard/studies/{dashboard['study_id']}")
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"))
    time.sleep(2)  # the plots draw
    _shot(browser, "dashboard-study.png")
