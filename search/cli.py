"""The ``hps`` command line. Heavy imports (torch, Optuna, Ray) happen inside the commands."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hyperparameter search for CIFAR classifiers under hard budgets.")
console = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        versions = {pkg: metadata.version(pkg) for pkg in ("hps", "optuna", "optuna-dashboard", "ray", "torch")}
        console.print(f"hps {versions.pop('hps')} (" + ", ".join(f"{k} {v}" for k, v in versions.items()) + ")",
                      highlight=False)
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="print the versions and exit")] = False) -> None:
    """Hyperparameter search for CIFAR classifiers under hard budgets."""


SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE", help="set a dotted key on top of the file, e.g. --set fixed.train.epochs=2 (repeatable)")]


def _user_errors(fn: F) -> F:
    """A refusal ends with one line on stderr and its exit code (docs/exit-codes.md), never a
    traceback: bad input 2, a path the command cannot use (a folder, unwritable, full, read-only) 2,
    a database that does not answer 3."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from hps.search.errors import REFUSED, UNAVAILABLE, environment_line, user_error_types
        from hps.search.storage import StorageUnavailable

        try:
            return fn(*args, **kwargs)
        except StorageUnavailable as e:
            _fail(str(e), UNAVAILABLE)
        except user_error_types() as e:
            _fail(str(e), REFUSED)
        except Exception as e:
            line = environment_line(e, kwargs.get("storage", kwargs.get("dest")))  # the storage it writes
            if line is None:
                raise
            _fail(line, REFUSED)

    return wrapper  # type: ignore[return-value]


def _fail(line: str, code: int) -> NoReturn:
    err.print(f"[red]error:[/] {line}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def _quiet() -> None:
    from hps.search.quiet import quiet_optuna

    quiet_optuna()


@app.command()
@_user_errors
def retrain(config: Annotated[Path, typer.Argument(help="a retrain YAML (e.g. from hps export)")],
            sets: SetOpt = None,
            test: Annotated[bool, typer.Option("--test", help="also score the test split")] = False,
            out: Annotated[Path | None, typer.Option("--out", help="output folder [runs/<name>]")] = None,
            allow_data_mismatch: Annotated[bool, typer.Option("--allow-data-mismatch",
                                                              help="train on the data here even if it is not the data "
                                                                   "the config was made on")] = False,
            allow_model_change: Annotated[bool, typer.Option("--allow-model-change",
                                                             help="build your model file as it is now, even if it "
                                                                  "changed since the config was made")] = False) -> None:
    """Train a config from scratch; write the resolved config, metrics.json and model.pt."""
    from hps.trainers import retrain as run_retrain

    def show(epoch: int, m: dict[str, float]) -> None:
        val = f"val_acc {m['val_acc']:.4f}  " if "val_acc" in m else ""
        console.print(f"epoch {epoch:3d}  train_loss {m['train_loss']:.4f}  {val}lr {m['lr']:.4g}  "
                      f"{m['images_per_s']:.0f} img/s", highlight=False)

    from hps.search.space import parse_overrides

    out_dir = out or Path("runs") / config.stem
    result = run_retrain(config, out_dir, test=test, report=show, allow_data_mismatch=allow_data_mismatch,
                         allow_model_change=allow_model_change, overrides=parse_overrides(sets))
    summary = f"val_acc {result.val_acc:.4f}" if result.val_acc is not None else "no validation split"
    if result.test_acc is not None:
        summary += f", test_acc {result.test_acc:.4f}"
    console.print(f"done in {result.seconds:.1f} s: {summary}; wrote {out_dir}/", highlight=False)


def _is_space(path: Path) -> bool:
    """A space file (``study:``, ``space:``, ``budget:`` ...) rather than a retrain YAML."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False  # the loader says what is wrong with it
    return isinstance(raw, dict) and bool(raw.keys() & {"study", "space", "budget", "warm_start", "objectives", "fixed"})


@app.command()
@_user_errors
def measure(config: Annotated[Path, typer.Argument(help="a retrain YAML, or a space YAML (its base, smallest and "
                                                        "largest configs against its budget)")],
            sets: SetOpt = None,
            as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Parameters, file bytes, MACs/FLOPs and memory of a config (or a space's base, smallest and
    largest configs), without training."""
    from hps.search.api import measure as run_measure
    from hps.search.api import measure_space
    from hps.search.space import parse_overrides
    from hps.search.tables import measure_table, space_measure_table

    if _is_space(config):
        rows = measure_space(config, parse_overrides(sets))
        if as_json:
            print(json.dumps(rows))
        else:
            console.print(space_measure_table(str(config), rows))
        return
    m = run_measure(config, parse_overrides(sets))
    if as_json:
        print(json.dumps(m.to_dict()))
    else:
        console.print(measure_table(str(config), m))


StorageOpt = Annotated[str | None, typer.Option("--storage", help="study storage URL [$HPS_STORAGE or sqlite:///hps.db]")]
ArtifactsOpt = Annotated[str | None, typer.Option(
    "--artifacts", help="artifact folder or s3://bucket/prefix [$HPS_ARTIFACTS or hps-artifacts]")]


@app.command()
@_user_errors
def run(space_file: Annotated[Path, typer.Argument(help="a space YAML, e.g. spaces/quickstart.yaml")],
        sets: SetOpt = None,
        storage: StorageOpt = None,
        trials: Annotated[int | None, typer.Option("--trials", min=1, help="finished trials wanted [study.trials]")] = None,
        ray: Annotated[str | None, typer.Option("--ray", help="run on Ray: auto, local or ADDRESS")] = None,
        workers: Annotated[int, typer.Option("--workers", min=1, help="concurrent trials (Ray)")] = 2,
        gpus_per_trial: Annotated[float, typer.Option("--gpus-per-trial", min=0, help="GPU share per trial (Ray)")] = 0.0,
        cpus_per_trial: Annotated[float, typer.Option("--cpus-per-trial", min=0.01, help="CPUs per trial (Ray)")] = 1.0,
        live: Annotated[bool, typer.Option("--live/--no-live", help="live view (else a line per trial)")] = True,
        log: Annotated[list[str] | None, typer.Option(
            "--log", help="every trial's curves to tensorboard:DIR or mlflow:URI (repeatable)")] = None,
        allow_change: Annotated[bool, typer.Option(
            "--allow-change", help="continue a study whose space, budget, objectives or data changed (recorded; "
                                   "only trials of the new definition are compared)")] = False) -> None:
    """Run (or resume) a study until it holds the requested number of finished trials."""
    from hps.search.errors import FAILED, INTERRUPTED_CODE, TERMINATED_CODE, RunFailed, Terminated, on_sigterm

    signal.signal(signal.SIGTERM, on_sigterm)  # SIGTERM while starting (imports take seconds), as later: one line, 143
    try:
        from hps.search.run import run as run_study
        from hps.search.space import load_space, parse_overrides

        space = load_space(space_file, parse_overrides(sets))
        result = run_study(space, storage, trials=trials, ray=ray, workers=workers, gpus_per_trial=gpus_per_trial,
                           cpus_per_trial=cpus_per_trial, progress="auto" if live else "lines", allow_change=allow_change,
                           log=log or ())
    except KeyboardInterrupt as e:
        what, code = ("terminated (SIGTERM)", TERMINATED_CODE) if isinstance(e, Terminated) else ("interrupted",
                                                                                                INTERRUPTED_CODE)
        err.print(f"{what}; rerun the same command to resume (finished trials are kept, the stopped one is owed)",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None
    except RunFailed as e:
        if e.result is not None:
            console.print(str(e.result), highlight=False)
        _fail(str(e), FAILED)
    console.print(str(result), highlight=False)
    if result.best_trial is not None:
        from hps.search.storage import hint

        console.print(f"export it with: hps export {space.name} -o best.yaml{hint(storage)}", highlight=False)


@app.command()
@_user_errors
def status(study: Annotated[str | None, typer.Argument(help="study name; omit to list studies")] = None,
           storage: StorageOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")] = False,
           as_csv: Annotated[bool, typer.Option("--csv", help="one CSV row per trial (pandas, spreadsheets)")] = False) -> None:
    """A table of studies, or of one study's trials with budget figures and prune/fail reasons."""
    from hps.search import tables
    from hps.search.api import open_study, studies
    from hps.search.record import (
        best_feasible,
        best_note,
        current,
        finished_by_definition,
        runs_of,
        stop_reasons,
        study_attrs,
    )

    _quiet()
    if study is None:
        rows = studies(storage)
        print(json.dumps(rows)) if as_json else console.print(tables.studies_table(rows))
        return
    st, _ = open_study(study, storage)
    if as_csv:
        from hps.search.frame import trials_frame

        print(trials_frame(st).to_csv(), end="")
        return
    trials, same = st.get_trials(deepcopy=False), current(st)
    now, stopped = [same(t) for t in trials], stop_reasons(study_attrs(st))
    if as_json:
        print(json.dumps({"study": study, "directions": [d.name.lower() for d in st.directions], "stopped": stopped,
                          "trials": [tables.trial_row(t, c) for t, c in zip(trials, now, strict=True)]}, default=str))
        return
    console.print(tables.trials_table(study, trials, now))
    console.print(tables.VALUE_NOTE, style="dim")
    if runs_of(st) and (best := best_feasible(st)) is not None:
        console.print(f"rechecked: export picks trial {best.number}, {best_note(st, best)}", highlight=False)
    if not all(now):
        cur, earlier = finished_by_definition(st, trials)
        console.print(f"{cur} finished under this definition ({earlier} under earlier ones: hps run --allow-change); "
                      "the target, the best trial and exports count only the current one's", highlight=False)
    for line in stopped:
        console.print(f"[red]stopped:[/] {line}", highlight=False)


@app.command()
@_user_errors
def delete(study: Annotated[str, typer.Argument(help="study name")], storage: StorageOpt = None,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask (scripts)")] = False) -> None:
    """Delete a study and all its trials from the storage (asks first)."""
    import sys

    import optuna

    from hps.search.api import open_study
    from hps.search.errors import StudyError
    from hps.search.storage import dispose, redact

    _quiet()
    st, url = open_study(study, storage)
    n = len(st.get_trials(deepcopy=False))
    if not yes:
        if not sys.stdin.isatty():
            raise StudyError(f"not deleting study {study!r} ({n} trials) without confirmation; pass --yes")
        typer.confirm(f"delete study {study!r} and its {n} trials from {redact(url)}?", abort=True)
    optuna.delete_study(study_name=study, storage=st._storage)
    dispose(st._storage)
    console.print(f"deleted study {study} ({n} trials)", highlight=False)


@app.command()
@_user_errors
def export(study: Annotated[str, typer.Argument(help="study name")],
           out: Annotated[Path, typer.Option("-o", "--out", help="YAML to write")] = Path("best.yaml"),
           trial: Annotated[int | None, typer.Option("--trial", help="a trial number instead of the best")] = None,
           storage: StorageOpt = None, artifacts: ArtifactsOpt = None) -> None:
    """Write the best feasible trial as a config that hps retrain takes unchanged."""
    from hps.search.api import export as run_export
    from hps.search.errors import StudyError

    if out.suffix.lower() in (".pt", ".pth"):
        raise StudyError(f"-o {out}: the export is a YAML, and its weights go beside it as {out.with_suffix('.pt').name}; "
                         f"give -o {out.with_suffix('.yaml')}")
    if out.is_dir():
        raise StudyError(f"-o {out}: is a folder; give a YAML file to write, e.g. -o {out / 'best.yaml'}")
    _quiet()
    done = run_export(study, out, trial=trial, storage=storage, artifacts=artifacts)
    score = f" (score them with: hps evaluate {out} --weights {done.weights})" if done.weights else ""
    console.print(f"{done}{score}; retrain with: hps retrain {out}", highlight=False)
    if done.earlier:
        console.print(f"({done.earlier} trials of an earlier definition of the study were not compared)", highlight=False)


@app.command()
@_user_errors
def evaluate(config: Annotated[Path, typer.Argument(help="a retrain YAML (e.g. from hps export)")],
             weights: Annotated[Path, typer.Option("--weights", help="weights file (hps export's .pt, retrain's model.pt)")],
             test: Annotated[bool, typer.Option("--test", help="also score the test split")] = False,
             allow_model_change: Annotated[bool, typer.Option("--allow-model-change",
                                                              help="build your model file as it is now")] = False) -> None:
    """Score weights on the validation (and test) split without training."""
    from hps.search.api import evaluate as run_evaluate

    metrics = run_evaluate(config, weights, test=test, allow_model_change=allow_model_change)
    console.print("  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), highlight=False)


@app.command()
@_user_errors
def plot(study: Annotated[str, typer.Argument(help="study name")],
         out: Annotated[Path, typer.Option("-o", "--out", help="output folder")] = Path("plots"),
         storage: StorageOpt = None) -> None:
    """Optimisation history, parameter importance, intermediate values (and Pareto front): HTML and PNG."""
    from hps.search.api import plot as run_plot

    _quiet()
    files = run_plot(study, out, storage=storage)
    console.print(f"wrote {len(files)} files to {out}/ (the HTML files load plotly.min.js beside them)", highlight=False)


@app.command()
@_user_errors
def copy(study: Annotated[str, typer.Argument(help="study name")],
         source: Annotated[str, typer.Option("--from", help="storage URL the study is in")],
         dest: Annotated[str, typer.Option("--to", help="storage URL to copy it to, e.g. postgresql://...")]) -> None:
    """Copy a study with all its trials to another storage (SQLite, PostgreSQL, a journal file)."""
    import optuna

    from hps.search.api import open_study
    from hps.search.errors import StudyError
    from hps.search.storage import dispose, get_storage, redact

    _quiet()
    st = open_study(study, source)[0]
    src, dst = st._storage, get_storage(dest, heartbeat=False)
    n = len(st.get_trials(deepcopy=False))
    try:
        optuna.copy_study(from_study_name=study, from_storage=src, to_storage=dst)
    except optuna.exceptions.DuplicatedStudyError:
        raise StudyError(f"{redact(dest)} already holds a study named {study!r}; nothing copied") from None
    finally:
        dispose(src)
        dispose(dst)
    console.print(f"copied {study} ({n} trials) from {redact(source)} to {redact(dest)}", highlight=False)


@app.command()
@_user_errors
def dashboard(storage: StorageOpt = None,
              host: Annotated[str, typer.Option("--host", help="bind address")] = "127.0.0.1",
              port: Annotated[int, typer.Option("--port")] = 8080, artifacts: ArtifactsOpt = None) -> None:
    """Start optuna-dashboard on the study storage (localhost unless --host says otherwise).

    The stock ``optuna-dashboard URL`` works as well; this adds hps's storage URL rules and the export artifacts.
    Imports neither torch nor the trainer (the dashboard image has neither)."""
    import optuna_dashboard

    from hps.search.storage import artifact_root, artifact_store, existing_storage, redact, storage_url

    art = artifact_root(artifacts)
    url = storage_url(storage)
    store = existing_storage(url)  # it only shows studies: a missing file is one line, not a new database
    console.print(f"optuna-dashboard on {redact(url)} at http://{host}:{port}/ (artifacts: {art})", highlight=False)
    optuna_dashboard.run_server(store, host=host, port=port,
                                artifact_store=artifact_store(art))


@app.command()
def models() -> None:
    """List the model families (hps's and those packages register under the hps.models entry point
    group) and their knobs."""
    import torch
    from rich.table import Table

    from hps.trainers.errors import ModelError
    from hps.trainers.models import create_model, list_models, model_entry

    table = Table("name", "params @ width 1 (10 classes)", "description")
    for name in list_models():
        try:
            with torch.device("meta"):
                n = f"{sum(p.numel() for p in create_model(name).parameters()):,}"
            summary = model_entry(name).summary
        except (ModelError, ValueError, TypeError) as e:
            n, summary = "-", f"cannot build: {str(e).splitlines()[0]}"
        table.add_row(name, n, summary)
    console.print(table)
    console.print("knobs: model.width (channel multiplier), model.depth (repeat multiplier), model.dropout, "
                  "model.channel_divisor (channels round to multiples of 1, 2, 4 or 8), data.image_size (the "
                  "input side; branchnet is built for 128); classes and channels come from the data. Your own "
                  "builder: model.name: path/to/file.py:function or package.module:function, with model.args",
                  highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
