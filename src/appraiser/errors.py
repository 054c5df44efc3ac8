"""The one place that turns a pydantic ValidationError into a line a user can act on.

Configs (TrainConfig, CurateConfig, demo settings), records read from files and pricer options are all
validated by pydantic; whoever reports such an error to a user formats it here, so every command says
it the same way: `SUBJECT LOCATION: WHAT IS WRONG (and N more)`.
"""

from __future__ import annotations

from pydantic import ValidationError


def validation_message(e: ValidationError, subject: str = "invalid", *, as_flag: bool = False) -> str:
    """One line for a ValidationError: its first error's location and message, and how many more there are.

    `subject` leads the line ("invalid training option", "invalid"); `as_flag` writes the location as
    the command-line flag it came from (`min_chars` → `--min-chars`).
    """
    errors = e.errors()
    if not errors:  # pragma: no cover - pydantic always reports at least one
        return f"{subject}: {e}".strip(": ")
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    if as_flag and loc:
        loc = "--" + loc.replace("_", "-")
    msg = str(first.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):  # pydantic's wrapping of a validator's own message
        msg = msg.removeprefix(prefix)
    head = " ".join(part for part in (subject, loc) if part)
    text = f"{head}: {msg}" if head else msg
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more)"
    return text
