"""`appraiser data …`: curate raw metadata into splits, inspect datasets and prompts."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
