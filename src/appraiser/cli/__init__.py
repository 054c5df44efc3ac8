"""The `appraiser` command: a thin shell over the library. Each command group lives in its own module."""

from __future__ import annotations

import logging

import typer
from rich.console import Console

from appraiser.data.io import DataError

app = typer.Typer(
    name="appraiser",
    help="Price products from their descriptions with fine-tuned LLMs, and prove how good it is.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _register() -> None:
    from appraiser.cli import data as data_cli

    app.add_typer(data_cli.app, name="data", help="Curate raw metadata into splits; inspect datasets and prompts.")
    for module_name in ("evaluate", "baseline", "train", "predict", "demo"):
        try:
            module = __import__(f"appraiser.cli.{module_name}", fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name != f"appraiser.cli.{module_name}":
                raise
            continue
        module.register(app)


_register()


def main() -> None:
    """Entry point: run the app, turning data errors into one clear line and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        app()
    except DataError as e:
        err_console.print(f"[red]error:[/red] {e}")
        raise SystemExit(2) from None
