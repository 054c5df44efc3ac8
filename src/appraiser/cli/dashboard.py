"""`appraiser dashboard`: the web dashboard alone, on this machine, for a quick look at runs and the leaderboard.

It is the same dashboard `appraiser serve` has at `/dashboard`, without the model server (nothing is loaded)
and without API keys, so it binds loopback only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from appraiser.api.providers import is_loopback_host
from appraiser.cli import console, friendly
from appraiser.cli.serve import allowed_hosts
from appraiser.data.io import DataError

#: The first 16 bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"


@friendly
def dashboard_command(
    port: Annotated[int, typer.Option(help="TCP port (0 picks a free one).", min=0, max=65535)] = 8322,
    host: Annotated[str, typer.Option(help="A loopback address to bind (no keys: never a public one).")] = "127.0.0.1",
    runs_db: Annotated[Path | None, typer.Option(help="The run store (default: <home>/runs.db).")] = None,
    leaderboard: Annotated[
        Path | None, typer.Option(help="The leaderboard database (default: <home>/leaderboard.db).")
    ] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the dashboard in a browser.")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Runs (live loss charts), the leaderboard and evaluations in a browser: http://127.0.0.1:8322/dashboard."""
    from appraiser import config
    from appraiser.server.dashboard import create_dashboard_app
    from appraiser.server.dashboard_data import Paths

    if not is_loopback_host(host):
        raise DataError(f"refusing to bind {host}: the dashboard alone has no API keys (use `appraiser serve`)")
    home = config.home()
    paths = Paths(
        _watched(runs_db, home / "runs.db", "--runs-db"),
        _watched(leaderboard, home / "leaderboard.db", "--leaderboard"),
    )
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))  # bound here, so `--port 0` can say which port it got before serving
    sock.listen(128)  # and listening: a client that reads the URL and connects at once waits, not refused
    url = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}/dashboard"
    console.print(f"appraiser dashboard on {url}", soft_wrap=True, highlight=False)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    server = uvicorn.Server(
        uvicorn.Config(create_dashboard_app(paths, allowed_hosts(host)), log_level=log_level, access_log=False)
    )
    server.run(sockets=[sock])


def _watched(path: Path | None, default: Path, flag: str) -> Path:
    """A store the dashboard shows. One a flag names must be an SQLite file already: opening a mistyped path
    made an empty store (a dashboard of nothing, with no word why) or wrote a schema into an unrelated file,
    and a dashboard only reads what others write."""
    if path is None:
        return default.expanduser()
    path = path.expanduser()
    if path.is_dir():
        raise DataError(f"{flag} {path}: is a folder; give the database file")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise DataError(f"{flag} {path}: no such file") from None
    except OSError as e:
        raise DataError(f"{flag} {path}: cannot read it ({e.strerror or e})") from None
    if head != SQLITE_HEADER:
        raise DataError(f"{flag} {path}: not an SQLite database (an empty or other file)")
    return path


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard_command)
