"""The `appraiser` command: a thin shell over the library. Each command group lives in its own module."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
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


def error_line(message: str) -> None:
    """The one red line a user error prints on stderr (the message is text, never rich markup)."""
    err_console.print(f"[red]error:[/red] {escape(str(message))}", soft_wrap=True, highlight=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `message` as the error line and return the Exit to raise: `raise fail("...")`."""
    error_line(message)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """User errors → one red line on stderr and exit code 2; Ctrl-C → "interrupted" and exit code 130.

    User errors are DataError (bad input, unknown run or model, failed label audit; the library raises
    them), pydantic ValidationError (a config or option that fails validation) and OSError (a path given
    that cannot be read or written: a folder where a file goes, a missing parent). Every command runs
    inside this (`_register` wraps them all), so typer's test runner, which bypasses `main()`, sees what
    a user sees.
    """
    from pydantic import ValidationError

    try:
        yield
    except DataError as e:
        raise fail(str(e)) from None
    except ValidationError as e:
        from appraiser.errors import validation_message

        raise fail(validation_message(e)) from None
    except OSError as e:  # a path the user gave that cannot be written or read (a folder, a missing parent)
        raise fail(os_error_message(e)) from None
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        if _LEAVE_ON_INTERRUPT:  # on its way to main(), closing every `with` block it passes
            raise _Interrupted from None
        raise typer.Exit(130) from None


#: Set by `main()`: a Ctrl-C leaves the process at once once the command has unwound (see `main`). Typer's test
#: runner does not go through main(), so in tests a Ctrl-C is still `typer.Exit(130)`.
_LEAVE_ON_INTERRUPT = False


class _Interrupted(Exception):
    """Ctrl-C, carried out of a command to `main()` (click would turn a KeyboardInterrupt into "Aborted!")."""


def os_error_message(e: OSError) -> str:
    """`PATH: reason` for an OSError about a file (the target of a rename when there is one)."""
    path = e.filename2 if e.filename2 is not None else e.filename
    reason = e.strerror or str(e) or type(e).__name__
    return f"{path}: {reason}" if path is not None else reason


def friendly(fn: F) -> F:
    """`user_errors` as a decorator for a whole command."""
    if getattr(fn, "_appraiser_friendly", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return fn(*args, **kwargs)

    wrapper._appraiser_friendly = True  # type: ignore[attr-defined]
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


#: The order commands appear in `appraiser --help`; any other module of this package with a `register`
#: function (a new command group) follows, by name.
COMMAND_ORDER = ("data", "evaluate", "baseline", "train", "runs", "predict", "demo")


def _friendly_everywhere(group: typer.Typer) -> None:
    """Wrap every command of `group` (and of its sub-groups) in `user_errors`, so no command can forget."""
    for command in group.registered_commands:
        if command.callback is not None:
            command.callback = friendly(command.callback)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _friendly_everywhere(sub.typer_instance)


def _register() -> None:
    """Import each command module of this package and let it add its commands.

    A module that fails to import is a bug to see at once (its error propagates), never a command that
    silently goes missing. Modules without a `register` function (shared helpers) add nothing.
    """
    import importlib
    import pkgutil

    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    order = [n for n in COMMAND_ORDER if n in found] + sorted(found - set(COMMAND_ORDER))
    for module_name in order:
        module = importlib.import_module(f"{__name__}.{module_name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)
    _friendly_everywhere(app)


_register()


def _stacks_on_sigusr1() -> None:
    """`kill -USR1 PID` prints every thread's stack to stderr and the command goes on: how to see where a long
    training run or a server that stopped answering is stuck, without stopping it (POSIX only)."""
    import faulthandler
    import signal
    import sys

    if hasattr(signal, "SIGUSR1") and sys.stderr is not None:
        try:
            faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
        except (RuntimeError, ValueError, OSError):  # no usable stderr file descriptor (embedded, redirected)
            pass


def main() -> None:
    """Entry point: run the app; a user error that escapes a command is still one clear line and exit code 2."""
    from pydantic import ValidationError

    global _LEAVE_ON_INTERRUPT
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    _stacks_on_sigusr1()
    _LEAVE_ON_INTERRUPT = True
    try:
        app()
    except _Interrupted:
        _leave(130)
    except DataError as e:
        error_line(str(e))
        raise SystemExit(2) from None
    except ValidationError as e:
        from appraiser.errors import validation_message

        error_line(validation_message(e))
        raise SystemExit(2) from None
    except OSError as e:
        error_line(os_error_message(e))
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        _leave(130)


def _leave(code: int) -> None:
    """Exit now, without joining threads. Every `with` block has closed on the way here (files, caches, the run
    store); what is left are worker threads inside API calls and their retries, which a normal exit would wait
    for (minutes, against a server that hangs)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
