"""The `appraiser` command: a thin shell over the library. Each command group lives in its own module."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from appraiser.data.io import DataError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="appraiser",
    help="Price products from their descriptions with fine-tuned LLMs, and prove how good it is.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """DataError (bad input, unknown run, failed label audit) → one red line on stderr and exit code 2.

    Commands use it themselves because typer's test runner bypasses `main()`.
    """
    try:
        yield
    except DataError as e:
        err_console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None


def friendly(fn: F) -> F:
    """`user_errors` as a decorator for a whole command."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def quiet_libraries() -> None:
    """transformers/peft/bitsandbytes warnings are for library developers; our own output says what matters.

    bitsandbytes, imported on a CPU with AVX512-BF16, warns that it cannot fetch an optional kernel from the
    hub; peft calls a transformers property that transformers marks deprecated. Neither is the user's to fix.
    """
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


def parse_options(options: list[str] | None) -> dict[str, Any]:
    """`-o key=value` pairs; values are read as JSON when they parse (numbers, true, lists), else text."""
    out: dict[str, Any] = {}
    for opt in options or []:
        key, sep, value = opt.partition("=")
        if not sep or not key:
            raise DataError(f"bad option {opt!r}: use -o key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


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
