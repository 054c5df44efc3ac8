"""`appraiser notify test URL` and `appraiser notify run RUN URL`: try a notification URL before a run
depends on it, or send a run's result card by hand (once per state and URL, like the automatic ones)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from appraiser.cli import console, err_console
from appraiser.data.io import DataError

app = typer.Typer(no_args_is_help=True, help="Notifications through Apprise URLs (mailto://, json://, slack://, ...).")

UrlsArg = Annotated[
    list[str], typer.Argument(help="Apprise URLs, e.g. mailto://user:pass@example.com, json://host/hook")
]


def _checked(urls: list[str]) -> list[str]:
    from appraiser.notify import check_url

    for url in urls:
        problem = check_url(url)
        if problem is not None:
            raise DataError(problem)
    return urls


@app.command("test")
def test_command(
    urls: UrlsArg,
    retries: Annotated[int, typer.Option(help="extra tries per URL when a send fails")] = 0,
) -> None:
    """Send a short test message to each URL; exit code 1 if any fails. URLs are printed with secrets masked."""
    from appraiser.notify import send

    body = (
        "This is a test message from `appraiser notify test`.\n"
        "When a run given --notify ends or stalls, its result card comes here: status, duration, smoothed loss\n"
        "and verdict, best probe MAE against the leaderboard, the model and how to use it.\n"
    )
    deliveries = send(_checked(urls), "Appraiser: test notification", body, retries=retries)
    for d in deliveries:
        if d.ok:
            console.print(f"[green]sent[/green] {escape(d.url)} ({d.seconds:.1f}s)", soft_wrap=True, highlight=False)
        else:
            err_console.print(
                f"[red]failed[/red] {escape(d.url)} after {d.attempts} tries: {escape(d.error or '')}",
                soft_wrap=True,
                highlight=False,
            )
    if not all(d.ok for d in deliveries):
        raise typer.Exit(1)


@app.command("run")
def run_command(
    run: Annotated[str, typer.Argument(help="run id, id prefix, name, or 'last'")],
    urls: UrlsArg,
    status: Annotated[
        str | None, typer.Option(help="the state to report (default: the run's own: succeeded, failed, ...)")
    ] = None,
) -> None:
    """Send a run's result card now, to each URL that has not had it for this state yet."""
    from appraiser.notify import NOTIFY_STATES, notify_run, run_state
    from appraiser.notify.run import pending
    from appraiser.runs.store import RunStore

    if status is not None and status not in NOTIFY_STATES:
        raise DataError(f"--status {status!r}: use one of {', '.join(NOTIFY_STATES)}")
    store = RunStore()
    r = store.get(run)
    state = status or run_state(store, r.id)
    if state is None:
        raise DataError(f"run {r.id} is {r.display_status}: nothing to report yet (or give --status)")
    urls = _checked(urls)
    if notify_run(store, r.id, urls, status=state):
        console.print(f"sent the {escape(state)} card of run {escape(r.id)} (see `appraiser runs events {r.id}`)")
    else:
        console.print(f"nothing sent: every URL already had the {escape(state)} card of run {escape(r.id)}, or failed")
    failed = pending(store, r.id, urls, state)
    if failed:  # exit 1, as `notify test` does: a script must see that a card did not go out
        raise typer.Exit(1)


def register(app_: typer.Typer) -> None:
    """Add the `notify` group to the `appraiser` app."""
    app_.add_typer(app, name="notify")
