import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_import_trainers_loads_neither_optuna_nor_ray(tmp_path: Path) -> None:
    code = ("import sys; import hps.trainers as trainers; trainers.measure(trainers.TrainConfig()); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('optuna', 'ray', 'search', 'trainers') "
            "or m.startswith('hps.search')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.strip() == "[]"


def test_no_trainers_module_imports_search_optuna_or_ray() -> None:
    for path in Path(REPO, "trainers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] in ("search", "optuna", "ray")], path
