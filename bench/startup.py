"""Start-up of hps's read-only commands against ``python -c "import optuna"``, the floor any Optuna
tool pays, and against Optuna's own CLI reading the same storage (``optuna studies``). Each command
runs as a user runs it (a new process) on a small study in a SQLite file; the runs are interleaved
(floor, then each command, round after round) and the medians reported.

    python bench/startup.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna


def _study(url: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="startup", storage=url, direction="maximize")
    for i in range(20):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr("params", 1000 * i)
        trial.storage.set_trial_system_attr(trial._trial_id, "hps:config", {"model": {"name": "resnet18"}})
        study.tell(trial, i / 20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/s.db"
        _study(url)
        commands = {
            "python -c 'import optuna'": [sys.executable, "-c", "import optuna"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "optuna studies (Optuna's CLI)": [str(bin_dir / "optuna"), "studies", "--storage", url],
            "hps --version": [str(bin_dir / "hps"), "--version"],
            "hps status": [str(bin_dir / "hps"), "status", "--storage", url],
            "hps status STUDY": [str(bin_dir / "hps"), "status", "startup", "--storage", url],
            "hps export (no weights)": [str(bin_dir / "hps"), "export", "startup", "-o", f"{tmp}/best.yaml",
                                        "--storage", url, "--artifacts", f"{tmp}/art"],
        }
        seconds: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.rounds + 1):  # the first round warms the disk cache and is dropped
            for name, cmd in commands.items():
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                seconds[name].append(time.perf_counter() - t0)
    floor = statistics.median(seconds["python -c 'import optuna'"][1:])
    rows = {name: {"median_s": round(statistics.median(s[1:]), 3), "x_import_optuna": round(statistics.median(s[1:]) / floor, 2)}
            for name, s in seconds.items()}
    for name, r in rows.items():
        print(f"{name:28s} {r['median_s']:6.3f} s  {r['x_import_optuna']:5.2f}x import optuna")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
