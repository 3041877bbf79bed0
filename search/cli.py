"""The ``hps`` command line. Heavy imports (torch, Optuna, Ray) happen inside the commands."""

from __future__ import annotations

import json
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


def _user_errors(fn: F) -> F:
    """Bad input ends with one line on stderr and exit code 2, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from search.errors import user_error_types

        try:
            return fn(*args, **kwargs)
        except user_error_types() as e:
            err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@_user_errors
def retrain(config: Annotated[Path, typer.Argument(help="a retrain YAML (e.g. from hps export)")],
            test: Annotated[bool, typer.Option("--test", help="also score the test split")] = False,
            out: Annotated[Path | None, typer.Option("--out", help="output folder [runs/<name>]")] = None) -> None:
    """Train a config from scratch; write the resolved config, metrics.json and model.pt."""
    from trainers import retrain as run_retrain

    def show(epoch: int, m: dict[str, float]) -> None:
        val = f"val_acc {m['val_acc']:.4f}  " if "val_acc" in m else ""
        console.print(f"epoch {epoch:3d}  train_loss {m['train_loss']:.4f}  {val}lr {m['lr']:.4g}  "
                      f"{m['images_per_s']:.0f} img/s", highlight=False)

    out_dir = out or Path("runs") / config.stem
    result = run_retrain(config, out_dir, test=test, report=show)
    summary = f"val_acc {result.val_acc:.4f}" if result.val_acc is not None else "no validation split"
    if result.test_acc is not None:
        summary += f", test_acc {result.test_acc:.4f}"
    console.print(f"done in {result.seconds:.1f} s: {summary}; wrote {out_dir}/", highlight=False)


@app.command()
@_user_errors
def measure(config: Annotated[Path, typer.Argument(help="a retrain YAML")],
            as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Parameters, file bytes per storage dtype, MACs/FLOPs and memory of a config, without training."""
    from trainers import load_config
    from trainers import measure as run_measure

    m = run_measure(load_config(config))
    if as_json:
        print(json.dumps(m.to_dict()))
        return
    table = Table(title=f"{config}", show_header=False)
    table.add_row("trainable parameters", f"{m.params:,}")
    for dtype, size in m.model_bytes.items():
        table.add_row(f"model file bytes ({dtype})", f"{size:,}  ({size / 1e6:.2f} MB)")
    table.add_row("MACs per 32x32 image", f"{m.macs:,}")
    table.add_row("FLOPs per image (2 x MACs)", f"{m.flops:,}")
    table.add_row("training memory estimate", f"{m.train_memory_mb:,.1f} MiB")
    console.print(table)


@app.command()
def models() -> None:
    """List the model families and their knobs."""
    import torch

    from trainers.models import create_model, list_models, model_entry

    table = Table("name", "params @ width 1 (10 classes)", "description")
    for name in list_models():
        with torch.device("meta"):
            n = sum(p.numel() for p in create_model(name).parameters())
        table.add_row(name, f"{n:,}", model_entry(name).summary)
    console.print(table)
    console.print("knobs: model.width (channel multiplier), model.depth (repeat multiplier), "
                  "model.dropout; classes come from the data (10 or 100)")


if __name__ == "__main__":  # pragma: no cover
    app()
