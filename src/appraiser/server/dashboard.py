"""The web dashboard of `appraiser serve` (and `appraiser dashboard`): runs, live loss charts, the leaderboard.

Pages (plain HTML + a little vanilla JS + plotly.js, all shipped in the package, no CDN):
- `/dashboard`: the runs list, local and hosted, with status and trend verdict;
- `/dashboard/runs/{id}`: a run's loss (raw, EMA, noise band; probe MAE on a second axis), updated live
  over SSE, its event log and checkpoints;
- `/dashboard/leaderboard`: MAE with 95% CIs per pricer, and a paired comparison of two;
- `/dashboard/evals/{id}`: one evaluation's scatter and running-error charts.

Their data comes from `/dashboard/api/...` (JSON, gzipped when the browser accepts it) and the live stream
`/dashboard/api/runs/{id}/stream`. Access: the server's Guard runs first, so with API keys configured every
dashboard request needs `Authorization: Bearer KEY` like the API does — or, from a browser, the key typed
once into `/dashboard/login`, kept in an HttpOnly cookie (see `server.security`) — and a run that records
an owner is shown to that owner only; with no keys (loopback only) the dashboard is open to this machine's
user.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sse_starlette.sse import EventSourceResponse

from appraiser import config
from appraiser.runs.store import RunNotFound, RunStore
from appraiser.server import dashboard_data as data
from appraiser.server.dashboard_live import LiveRun, parse_cursor, stream

STATIC = Path(__file__).with_name("dashboard_static")
SQLITE_MAX = 2**63 - 1  # the largest rowid
PAGES = {"runs": "runs.html", "run": "run.html", "leaderboard": "leaderboard.html", "eval": "eval.html"}
#: The scripts and styles the pages load (by name: nothing else in the folder is served).
ASSETS = {p.name: "text/javascript" if p.suffix == ".js" else "text/css" for p in STATIC.glob("*.[jc]s*")}
#: Pages run only our own scripts; plotly needs inline styles and data: images (its toolbar icons).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def install(app: Any, store: Any, pool: Any, settings: Any, paths: data.Paths | None = None) -> None:
    """Add the dashboard's routes to `app` (the server's run store and leaderboard unless `paths`)."""
    home = config.home()
    jobs_db = Path(store.root) / "runs.db" if getattr(store, "root", None) is not None else None
    paths = paths or data.Paths(home / "runs.db", home / "leaderboard.db", jobs_db)
    keys = dict(getattr(settings, "keys", None) or {})
    app.include_router(_router(paths, bool(keys)))
    if keys:
        app.include_router(_login_router(keys))


def create_dashboard_app(paths: data.Paths, allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """A server with the dashboard only, for `appraiser dashboard` (no keys: it binds loopback, and answers
    only to `allowed_hosts` when given: see security.SameOrigin)."""
    from appraiser.server import errors
    from appraiser.server.security import SameOrigin

    app = FastAPI(title="Appraiser dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    errors.install(app)  # a store that cannot be read is a JSON error, as in `serve`, not a bare 500
    install(app, None, None, None, paths)
    app.add_middleware(SameOrigin, allowed_hosts=allowed_hosts)
    return app


@cache
def _plotly_js() -> tuple[bytes, bytes]:
    """plotly.js from the plotly wheel (plain and gzipped, ~4.8 MB → ~1.4 MB), read once."""
    import plotly

    raw = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    return raw, gzip.compress(raw, 6)


def _accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "").lower()


def _bytes(request: Request, body: bytes, media_type: str, headers: dict[str, str] | None = None) -> Response:
    headers = dict(headers or {})
    if len(body) > 1024 and _accepts_gzip(request):
        body = gzip.compress(body, 5)
        headers["Content-Encoding"] = "gzip"
    headers["Vary"] = "Accept-Encoding"
    return Response(body, media_type=media_type, headers=headers)


def json_response(request: Request, obj: Any) -> Response:
    body = json.dumps(obj, allow_nan=False, default=str, separators=(",", ":")).encode()
    return _bytes(request, body, "application/json", {"Cache-Control": "no-store"})


def _login_router(keys: dict[str, str]) -> APIRouter:
    """`/dashboard/login`: a form that turns a typed key into the dashboard's cookie (only when keys exist)."""
    from appraiser.server.security import COOKIE, DASHBOARD, owner_of

    r = APIRouter(prefix=DASHBOARD, include_in_schema=False)
    headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-store"}

    def login_page(message: str = "", status: int = 200) -> Response:
        html = (STATIC / "login.html").read_text(encoding="utf-8").replace("{{message}}", message)
        return Response(html, status_code=status, media_type="text/html", headers=headers)

    @r.get("/login")
    def login_form() -> Response:
        return login_page()

    @r.post("/login")
    def login(key: Annotated[str, Form(max_length=512)] = "") -> Response:
        if not key or owner_of(keys, key.strip()) is None:
            return login_page("That key is not one of this server's keys.", 401)
        resp = RedirectResponse(DASHBOARD, status_code=303)
        resp.set_cookie(COOKIE, key.strip(), httponly=True, samesite="strict", path=DASHBOARD)
        return resp

    @r.post("/logout")
    def logout() -> Response:
        resp = RedirectResponse(f"{DASHBOARD}/login", status_code=303)
        resp.delete_cookie(COOKIE, path=DASHBOARD)
        return resp

    return r


def _router(paths: data.Paths, keys_configured: bool) -> APIRouter:
    r = APIRouter(prefix="/dashboard", include_in_schema=False)

    def owner(request: Request) -> str | None:
        return getattr(request.state, "owner", "default")

    def stores() -> list[RunStore]:
        """This machine's runs, then (in `appraiser serve`) the server's fine-tuning jobs: one timeline."""
        out = [RunStore(paths.runs_db)]
        if paths.job_runs_db is not None and paths.job_runs_db.exists():
            out.append(RunStore(paths.job_runs_db))
        return out

    def run_for(request: Request, run_id: str) -> tuple[RunStore, Any]:
        for store in stores():
            try:
                run = store.get(run_id)
            except RunNotFound:
                continue
            if run.id == run_id and data.visible(run, owner(request), keys_configured):
                return store, run
        raise HTTPException(404, f"no run {run_id!r}")  # exact ids only; others' runs do not exist

    def page(name: str) -> Response:
        # no-store: a page is only a shell, but a cached one would skip the owner check its route makes
        headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-store"}
        return FileResponse(STATIC / PAGES[name], media_type="text/html", headers=headers)

    def eval_id_of(text: str) -> int:
        """A stored evaluation's id from a URL: anything that is not one (letters, past SQLite's 64 bits) is
        an evaluation that does not exist."""
        if not (text.isascii() and text.isdigit()) or int(text) > SQLITE_MAX:
            raise HTTPException(404, f"no evaluation {text[:40]!r}")
        return int(text)

    def evaluation_exists(eval_id: int) -> None:
        if not paths.leaderboard_db.exists() or not data.evaluation_exists(paths.leaderboard_db, eval_id):
            raise HTTPException(404, f"no evaluation {eval_id}")

    # ------------------------------------------------------------ pages

    @r.get("")
    def runs_page() -> Response:
        return page("runs")

    @r.get("/")
    def runs_page_slash() -> Response:
        return RedirectResponse("/dashboard")

    @r.get("/runs/{run_id}")
    def run_page(request: Request, run_id: str) -> Response:
        run_for(request, run_id)
        return page("run")

    @r.get("/leaderboard")
    def leaderboard_page() -> Response:
        return page("leaderboard")

    @r.get("/evals/{eval_id}")
    def eval_page(eval_id: str) -> Response:
        evaluation_exists(eval_id_of(eval_id))
        return page("eval")

    @r.get("/static/{name}")
    def static(request: Request, name: str) -> Response:
        cache_for = {"Cache-Control": "public, max-age=86400"}
        if name == "plotly.min.js":
            raw, packed = _plotly_js()
            if _accepts_gzip(request):
                return Response(packed, media_type="text/javascript", headers={**cache_for, "Content-Encoding": "gzip"})
            return Response(raw, media_type="text/javascript", headers=cache_for)
        if name not in ASSETS:
            raise HTTPException(404, "no such file")
        return _bytes(request, (STATIC / name).read_bytes(), ASSETS[name], {"Cache-Control": "no-cache"})

    # ------------------------------------------------------------ data

    @r.get("/api/runs")
    def api_runs(request: Request) -> Response:
        rows = [row for st in stores() for row in data.runs_list(st, owner(request), keys_configured)]
        rows.sort(key=lambda row: row["created"], reverse=True)
        return json_response(request, {"runs": rows})

    @r.get("/api/runs/{run_id}")
    def api_run(
        request: Request,
        run_id: str,
        points: int = Query(data.DEFAULT_POINTS, ge=3, le=1_000_000),
        full: bool = False,
    ) -> Response:
        store, run = run_for(request, run_id)
        return json_response(request, data.run_detail(store, run, None if full else points))

    @r.get("/api/runs/{run_id}/stream")
    async def api_stream(request: Request, run_id: str, after: str | None = None) -> EventSourceResponse:
        store, run = run_for(request, run_id)
        cursor = parse_cursor(request.headers.get("last-event-id")) or parse_cursor(after)
        if cursor is None:
            cursor = (0, 0)  # from the start: the page dedupes by step
        live = await anyio.to_thread.run_sync(LiveRun, store, run.id, cursor)  # reads the curve so far
        return EventSourceResponse(
            stream(live, request.is_disconnected), ping=15, headers={"Cache-Control": "no-store"}
        )

    @r.get("/api/leaderboard")
    def api_leaderboard(request: Request, fingerprint: str | None = None) -> Response:
        return json_response(request, data.leaderboard(paths.leaderboard_db, fingerprint))

    @r.get("/api/compare")
    def api_compare(request: Request, a: str, b: str) -> Response:
        try:
            return json_response(request, data.compare(paths.leaderboard_db, eval_id_of(a), eval_id_of(b)))
        except (KeyError, FileNotFoundError):
            raise HTTPException(404, "no such evaluation") from None

    @r.get("/api/evals/{eval_id}")
    def api_eval(request: Request, eval_id: str) -> Response:
        number = eval_id_of(eval_id)
        if not paths.leaderboard_db.exists():
            raise HTTPException(404, "no leaderboard yet")
        try:
            return json_response(request, data.evaluation(paths.leaderboard_db, number))
        except KeyError:
            raise HTTPException(404, f"no evaluation {eval_id}") from None

    return r
