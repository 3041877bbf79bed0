"""The ``hps`` command line. Heavy imports (torch, Optuna, Ray) happen inside the commands."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

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
    """Bad input ends with one line on stderr and exit code 2, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from hps.search.errors import user_error_types

        try:
            return fn(*args, **kwargs)
        except user_error_types() as e:
            err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


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


@app.command()
@_user_errors
def measure(config: Annotated[Path, typer.Argument(help="a retrain YAML")], sets: SetOpt = None,
            as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Parameters, file bytes per storage dtype, MACs/FLOPs and memory of a config, without training."""
    from hps.search.api import measure as run_measure
    from hps.search.space import parse_overrides

    m = run_measure(config, parse_overrides(sets))
    if as_json:
        print(json.dumps(m.to_dict()))
        return
    table = Table(title=f"{config}", show_header=False)
    table.add_row("trainable parameters", f"{m.params:,}")
    for dtype, size in m.model_bytes.items():
        table.add_row(f"model file bytes ({dtype})", f"{size:,}  ({size / 1e6:.2f} MB)")
    table.add_row(f"MACs per {m.image_size}x{m.image_size} image", f"{m.macs:,}")
    table.add_row("FLOPs per image (2 x MACs)", f"{m.flops:,}")
    table.add_row("training memory estimate", f"{m.train_memory_mb:,.1f} MiB")
    console.print(table)


StorageOpt = Annotated[str | None, typer.Option("--storage", help="study storage URL [$HPS_STORAGE or sqlite:///hps.db]")]
ArtifactsOpt = Annotated[str | None, typer.Option(
    "--artifacts", help="artifact folder or s3://bucket/prefix [$HPS_ARTIFACTS or hps-artifacts]")]


def _quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


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
        allow_change: Annotated[bool, typer.Option(
            "--allow-change", help="continue a study whose space, budget, objectives or data changed (recorded; "
                                   "only trials of the new definition are compared)")] = False) -> None:
    """Run (or resume) a study until it holds the requested number of finished trials."""
    from hps.search.errors import RunFailed, Terminated, on_sigterm

    signal.signal(signal.SIGTERM, on_sigterm)  # SIGTERM while starting (imports take seconds), as later: one line, 143
    try:
        from hps.search.run import run as run_study
        from hps.search.space import load_space, parse_overrides

        space = load_space(space_file, parse_overrides(sets))
        result = run_study(space, storage, trials=trials, ray=ray, workers=workers, gpus_per_trial=gpus_per_trial,
                           cpus_per_trial=cpus_per_trial, progress="auto" if live else "lines", allow_change=allow_change)
    except KeyboardInterrupt as e:
        what, code = ("terminated (SIGTERM)", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        err.print(f"{what}; rerun the same command to resume (finished trials are kept, the stopped one is owed)",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None
    except RunFailed as e:
        if e.result is not None:
            console.print(str(e.result), highlight=False)
        err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(str(result), highlight=False)
    if result.best_trial is not None:
        console.print(f"export it with: hps export {space.name} -o best.yaml", highlight=False)




@app.command()
@_user_errors
def status(study: Annotated[str | None, typer.Argument(help="study name; omit to list studies")] = None,
           storage: StorageOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")] = False) -> None:
    """A table of studies, or of one study's trials with budget figures and prune/fail reasons."""
    import optuna

    from hps.search.optuna_compat import study_id
    from hps.search.record import (
        BEST_EPOCH,
        BEST_VALUE,
        DEVICE_SECONDS,
        FAIL_REASON,
        PRUNE_REASON,
        RETRY_OF,
        WARM_START,
        current,
        finished_by_definition,
        human,
        named_constraints,
        reason,
        retry_note,
        stop_reasons,
        study_attrs,
        trial_info,
    )
    from hps.search.record import stored_figures as figures_of
    from hps.search.storage import dispose, get_storage
    from hps.search.study import load_study

    _quiet_optuna()
    store = get_storage(storage, heartbeat=False)
    try:
        if study is None:
            rows: list[dict[str, Any]] = []
            for s in optuna.get_all_study_summaries(store):
                best = s.best_trial.values[0] if s.best_trial and s.best_trial.values else None
                rows.append({"study": s.study_name, "trials": s.n_trials, "directions": [d.name.lower() for d in s.directions],
                             "best_value": best, "stopped": stop_reasons(store.get_study_system_attrs(study_id(s)))})
            if as_json:
                print(json.dumps(rows))
                return
            table = Table("study", "trials", "directions", "best value", "stopped")
            for r in rows:
                table.add_row(r["study"], str(r["trials"]), ", ".join(r["directions"]),
                              "-" if r["best_value"] is None else f"{r['best_value']:.4f}", "; ".join(r["stopped"]))
            console.print(table)
            return
        st = load_study(study, store)
        trials = st.get_trials(deepcopy=False)
        same = current(st)
        if as_json:
            print(json.dumps({
                "study": study, "directions": [d.name.lower() for d in st.directions], "stopped": stop_reasons(study_attrs(st)),
                "trials": [{"number": t.number, "state": t.state.name.lower(), "values": t.values, "params": t.params,
                            "constraints": named_constraints(t), "budget": figures_of(t),
                            **{k: t.user_attrs.get(k) for k in (BEST_VALUE, BEST_EPOCH, DEVICE_SECONDS)},
                            "warm_start": trial_info(t, WARM_START), "retry_of": t.system_attrs.get(RETRY_OF),
                            "cause": t.user_attrs.get(PRUNE_REASON) or t.user_attrs.get(FAIL_REASON), "reason": reason(t),
                            "current_definition": same(t)}
                           for t in trials]}, default=str))
            return
        table = Table(title=study)
        for col in ("#", "state", "value", "best@epoch", "params", "bytes", "MACs", "secs"):
            table.add_column(col, no_wrap=True)
        table.add_column("note", ratio=1, min_width=24)
        for t in trials:
            fig = figures_of(t)
            if t.state == optuna.trial.TrialState.COMPLETE and t.values:
                value = f"{t.values[0]:.4f}"
            elif t.intermediate_values:  # pruned, failed or running: its last reported value
                value = f"{t.intermediate_values[max(t.intermediate_values)]:.4f}*"
            else:
                value = "-"
            best = (f"{t.user_attrs['best_value']:.4f}@{t.user_attrs['best_epoch']}" if "best_value" in t.user_attrs else "-")
            why = reason(t) or trial_info(t, WARM_START, "") or retry_note(t)
            if t.state == optuna.trial.TrialState.FAIL and not why:
                why = "no reason stored (its worker stopped sending heartbeats: killed or lost)"
            if not same(t):
                why = f"(an earlier definition) {why}"
            table.add_row(str(t.number), t.state.name.lower(), value, best, human(fig["params"]) if "params" in fig else "-",
                          human(fig["model_bytes"]) if "model_bytes" in fig else "-",
                          human(fig["macs"]) if "macs" in fig else "-",
                          f"{t.user_attrs.get('device_seconds', 0):.1f}", why)
        console.print(table)
        console.print("value: the metric at the last epoch; * the last reported value of a trial that did not complete",
                      style="dim")
        if sum(not same(t) for t in trials):
            now, earlier = finished_by_definition(st, trials)
            console.print(f"{now} finished under this definition ({earlier} under earlier ones: hps run --allow-change); "
                          "the target, the best trial and exports count only the current one's", highlight=False)
        for line in stop_reasons(study_attrs(st)):
            console.print(f"[red]stopped:[/] {line}", highlight=False)
    finally:
        dispose(store)


@app.command()
@_user_errors
def delete(study: Annotated[str, typer.Argument(help="study name")], storage: StorageOpt = None,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask (scripts)")] = False) -> None:
    """Delete a study and all its trials from the storage (asks first)."""
    import sys

    import optuna

    from hps.search.errors import StudyError
    from hps.search.storage import dispose, get_storage, redact, storage_url
    from hps.search.study import load_study

    _quiet_optuna()
    store = get_storage(storage, heartbeat=False)
    try:
        n = len(load_study(study, store).get_trials(deepcopy=False))
        if not yes:
            if not sys.stdin.isatty():
                raise StudyError(f"not deleting study {study!r} ({n} trials) without confirmation; pass --yes")
            typer.confirm(f"delete study {study!r} and its {n} trials from {redact(storage_url(storage))}?", abort=True)
        optuna.delete_study(study_name=study, storage=store)
    finally:
        dispose(store)
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
    from hps.search.record import WEIGHTS, trial_info

    if out.suffix.lower() in (".pt", ".pth"):
        raise StudyError(f"-o {out}: the export is a YAML, and its weights go beside it as {out.with_suffix('.pt').name}; "
                         f"give -o {out.with_suffix('.yaml')}")
    _quiet_optuna()
    t = run_export(study, out, trial=trial, storage=storage, artifacts=artifacts)
    weights = out.with_suffix(".pt")
    also = f" and {weights} (its weights; score them with: hps evaluate {out} --weights {weights})" if (
        trial_info(t, WEIGHTS) and weights.exists()) else ""
    console.print(f"wrote {out}{also}: trial {t.number}, value {t.values[0]:.4f}; retrain with: hps retrain {out}",
                  highlight=False)
    if trial is None:
        from hps.search.api import _study
        from hps.search.record import current

        st = _study(study, storage)[0]
        earlier = sum(not current(st)(x) for x in st.get_trials(deepcopy=False))
        if earlier:
            console.print(f"({earlier} trials of an earlier definition of the study were not compared)", highlight=False)


@app.command()
@_user_errors
def evaluate(config: Annotated[Path, typer.Argument(help="a retrain YAML (e.g. from hps export)")],
             weights: Annotated[Path, typer.Option("--weights", help="weights file (hps export's .pt, retrain's model.pt)")],
             test: Annotated[bool, typer.Option("--test", help="also score the test split")] = False,
             allow_model_change: Annotated[bool, typer.Option("--allow-model-change",
                                                              help="build your model file as it is now")] = False) -> None:
    """Score weights on the validation (and test) split without training."""
    import pickle
    import zipfile

    import torch

    from hps.search.errors import StudyError
    from hps.trainers import load_config
    from hps.trainers.loop import score

    cfg = load_config(config)
    if allow_model_change:
        cfg = cfg.replace("model", sha256=None)
    if not weights.is_file():
        raise typer.BadParameter(f"{weights}: no such file", param_hint="--weights")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as e:
        raise StudyError(f"{weights}: not a weights file torch can read ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise StudyError(f"{weights}: holds a {type(state).__name__}, not a state dict (hps export's .pt, retrain's model.pt)")
    metrics = score(cfg, state, test=test)
    console.print("  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), highlight=False)


@app.command()
@_user_errors
def plot(study: Annotated[str, typer.Argument(help="study name")],
         out: Annotated[Path, typer.Option("-o", "--out", help="output folder")] = Path("plots"),
         storage: StorageOpt = None) -> None:
    """Optimisation history, parameter importance, intermediate values (and Pareto front): HTML and PNG."""
    from hps.search.export import plot as run_plot
    from hps.search.storage import get_storage
    from hps.search.study import load_study

    _quiet_optuna()
    files = run_plot(load_study(study, get_storage(storage, heartbeat=False)), out)
    console.print(f"wrote {len(files)} files to {out}/", highlight=False)


@app.command()
@_user_errors
def copy(study: Annotated[str, typer.Argument(help="study name")],
         source: Annotated[str, typer.Option("--from", help="storage URL the study is in")],
         dest: Annotated[str, typer.Option("--to", help="storage URL to copy it to, e.g. postgresql://...")]) -> None:
    """Copy a study with all its trials to another storage (SQLite, PostgreSQL, a journal file)."""
    import optuna

    from hps.search.errors import StudyError
    from hps.search.storage import dispose, get_storage, redact
    from hps.search.study import load_study

    _quiet_optuna()
    src, dst = get_storage(source, heartbeat=False), get_storage(dest, heartbeat=False)
    try:
        n = len(load_study(study, src).get_trials(deepcopy=False))
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

    from hps.search.storage import artifact_root, artifact_store, get_storage, redact, storage_url

    art = artifact_root(artifacts)
    url = storage_url(storage)
    console.print(f"optuna-dashboard on {redact(url)} at http://{host}:{port}/ (artifacts: {art})", highlight=False)
    optuna_dashboard.run_server(get_storage(url, heartbeat=False), host=host, port=port,
                                artifact_store=artifact_store(art))


@app.command()
def models() -> None:
    """List the model families (hps's and those packages register under the hps.models entry point
    group) and their knobs."""
    import torch

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
