"""The web dashboard: LTTB and the trend line's numbers, the live stream's resume, access with keys, and the
pages in headless Chromium (Playwright) against a real `appraiser dashboard` while a real training runs.

Browser tests are marked `browser` (CI runs them: `.ci/run` installs Debian's chromium). Screenshots go to
tests/artifacts/ (git-ignored). Waits have deadlines; nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from conftest import KEY

from appraiser.runs.downsample import lttb, lttb_indices
from appraiser.runs.store import RunStore
from appraiser.runs.trend import debiased_ema, noise_band
from appraiser.server.dashboard_data import Smoother, curve
from appraiser.server.dashboard_live import parse_cursor

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = os.environ.get("APPRAISER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


# ---------------------------------------------------------------- downsampling and the trend line


def test_lttb_keeps_the_ends_a_spike_and_the_order():
    xs = list(range(10_000))
    ys = [3 * math.exp(-i / 2000) + 0.1 * math.sin(i) for i in xs]
    ys[6543] = 40.0  # one bad batch: every-k-th sampling would drop it, LTTB must not
    idx = lttb_indices(xs, ys, 500)
    assert len(idx) == 500 and idx[0] == 0 and idx[-1] == 9_999
    assert 6543 in idx
    assert all(a < b for a, b in zip(idx, idx[1:], strict=False))
    assert lttb_indices(xs[:10], ys[:10], 50) == list(range(10))  # fewer points than asked: all of them
    sx, sy = lttb(xs, ys, 100)
    assert len(sx) == len(sy) == 100 and sy[sx.index(6543)] == 40.0


def test_lttb_never_picks_a_nan_inside_a_bucket():
    ys = [float("nan") if i % 3 == 0 else float(i % 7) for i in range(1000)]
    idx = lttb_indices(list(range(1000)), ys, 50)
    assert all(math.isfinite(ys[i]) for i in idx[1:-1])


def test_the_incremental_trend_line_equals_trend_py():
    values = [2.5 + math.sin(i / 3) + (0.5 if i % 11 == 0 else 0) for i in range(300)]
    values[40] = float("nan")
    ema = debiased_ema(values, 0.9)
    band = noise_band(values, ema, 50)
    sm = Smoother(0.9, 50)
    for i, v in enumerate(values):
        m, low, high = sm.add(i, v)
        if math.isfinite(v):
            assert m == pytest.approx(ema[i]) and (low, high) == pytest.approx(band[i])
        else:
            assert m is None


def test_a_downsampled_curve_keeps_the_trend_of_every_point():
    steps = list(range(1, 10_001))
    values = [3 * math.exp(-s / 3000) + (0.4 if s % 7 == 0 else 0) for s in steps]
    full, small = curve(steps, values, None), curve(steps, values, 1000)
    assert full["n"] == small["n"] == 10_000 and not full["downsampled"] and small["downsampled"]
    assert len(small["step"]) == 1000 and small["step"][-1] == 10_000
    by_step = dict(zip(full["step"], full["ema"], strict=True))
    assert all(by_step[s] == e for s, e in zip(small["step"], small["ema"], strict=True))


def test_cursor_parsing():
    assert parse_cursor("12.3") == (12, 3)
    for bad in (None, "", "12", "a.b", "-1.2", "1.2.3", "².1", "9" * 30 + ".1", "1." + "9" * 30):
        assert parse_cursor(bad) is None  # not digits, or past SQLite's integers: the stream starts over


# ---------------------------------------------------------------- a real `appraiser dashboard`


def _exe() -> str:
    return shutil.which("appraiser") or str(Path(sys.executable).parent / "appraiser")


@pytest.fixture(scope="module")
def dash_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dashboard-home")


@pytest.fixture(scope="module")
def dashboard(dash_home):
    """Base URL of an `appraiser dashboard --port 0` on its own state folder."""
    log = dash_home / "dashboard.log"
    env = {**os.environ, "APPRAISER_HOME": str(dash_home)}
    with open(log, "w") as fh:
        proc = subprocess.Popen([_exe(), "dashboard", "--port", "0"], stdout=fh, stderr=subprocess.STDOUT, env=env)
    base = None
    deadline = time.time() + 60
    while time.time() < deadline and base is None:
        if proc.poll() is not None:
            pytest.fail(f"appraiser dashboard exited: {log.read_text()}")
        for word in log.read_text().split():
            if word.startswith("http://"):
                base = word.rsplit("/dashboard", 1)[0]
        time.sleep(0.2)
    assert base, f"no URL in the dashboard's output: {log.read_text()}"
    while time.time() < deadline:
        try:
            if httpx2.get(f"{base}/dashboard/api/runs", timeout=2).status_code == 200:
                break
        except httpx2.HTTPError:
            time.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def _read_stream(url: str, until_step: int, headers: dict[str, str] | None = None) -> tuple[list[int], str]:
    """Loss steps from an SSE stream up to `until_step`, and the last event id seen."""
    steps: list[int] = []
    last_id = ""
    event = None
    with httpx2.stream("GET", url, headers=headers or {}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("id:"):
                last_id = line[3:].strip()
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "metrics":
                steps += [p["step"] for p in json.loads(line[5:])["points"] if p["name"] == "loss"]
                if steps and steps[-1] >= until_step:
                    break
    return steps, last_id


def test_the_live_stream_resumes_from_last_event_id_and_loses_nothing(dashboard, dash_home, training):
    # (`training` starts here so the model loads while the tests before the browser ones run)
    store = RunStore(dash_home / "runs.db")
    run = store.create(name="resume-check", model="smollm2-135m", max_steps=20)
    store.set_status(run.id, "running")
    for s in range(1, 6):
        store.log_metrics(run.id, s, {"loss": 3.0 - s / 10, "lr": 1e-4})
    detail = httpx2.get(f"{dashboard}/dashboard/api/runs/{run.id}").json()
    assert detail["curves"]["loss"]["step"] == [1, 2, 3, 4, 5]
    url = f"{dashboard}/dashboard/api/runs/{run.id}/stream"
    for s in range(6, 9):
        store.log_metrics(run.id, s, {"loss": 3.0 - s / 10})
    first, last_id = _read_stream(f"{url}?after={detail['cursor']}", until_step=8)
    assert first == [6, 7, 8]  # only what came after the page's load
    for s in range(9, 13):  # written while the browser was away
        store.log_metrics(run.id, s, {"loss": 3.0 - s / 10})
    second, _ = _read_stream(url, until_step=12, headers={"Last-Event-ID": last_id})
    assert second == [9, 10, 11, 12]


def test_the_stream_continues_the_trend_line_the_page_loaded(dashboard, dash_home):
    store = RunStore(dash_home / "runs.db")
    run = store.create(name="trend-check", max_steps=100)
    store.set_status(run.id, "running")
    values = [2 + math.sin(s) for s in range(1, 61)]
    for s, v in enumerate(values[:40], 1):
        store.log_metrics(run.id, s, {"loss": v})
    cursor = httpx2.get(f"{dashboard}/dashboard/api/runs/{run.id}").json()["cursor"]
    for s, v in enumerate(values[40:], 41):
        store.log_metrics(run.id, s, {"loss": v})
    url = f"{dashboard}/dashboard/api/runs/{run.id}/stream?after={cursor}"
    ema = debiased_ema(values, 0.9)
    with httpx2.stream("GET", url, timeout=30) as r:
        got: list[dict] = []
        for line in r.iter_lines():
            if line.startswith("data:") and '"points"' in line:
                got += json.loads(line[5:])["points"]
                if got[-1]["step"] == 60:
                    break
    assert [p["step"] for p in got] == list(range(41, 61))
    assert [p["ema"] for p in got] == pytest.approx(ema[40:])


def test_pages_and_assets_ship_with_the_package_and_use_no_cdn(dashboard):
    for path in ("/dashboard", "/dashboard/leaderboard"):  # an evaluation page: once it exists (below)
        r = httpx2.get(dashboard + path)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert (
            "http://" not in r.text
            and "https://" not in r.text
            and "script-src 'self'" in r.headers["content-security-policy"]
        )
    js = httpx2.get(f"{dashboard}/dashboard/static/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000 and js.headers["content-encoding"] == "gzip"
    assert httpx2.get(f"{dashboard}/dashboard/static/..%2Fdashboard.py").status_code == 404
    assert httpx2.get(f"{dashboard}/dashboard/runs/no-such-run").status_code == 404


def test_with_api_keys_the_dashboard_needs_a_key(tmp_path, caplog):
    """The server's own app with keys (in-process: the Guard, the routes and the log are the real ones)."""
    import logging

    from fastapi.testclient import TestClient

    from appraiser.server import ServerSettings, create_app
    from appraiser.server.security import key_table

    caplog.set_level(logging.INFO, logger="appraiser.server")
    app = create_app(ServerSettings(keys=key_table([KEY]), root=tmp_path / "server"))
    with TestClient(app) as client:
        assert client.get("/dashboard").status_code == 401
        assert client.get("/dashboard/api/runs").status_code == 401
        assert client.get("/dashboard/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.get("/dashboard/api/runs", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.json() == {"runs": []}
        page = client.get("/dashboard", headers={"Authorization": f"Bearer {KEY}"})
        assert page.status_code == 200 and "<h1>Runs</h1>" in page.text
    assert "/dashboard" in caplog.text and KEY not in caplog.text  # requests are logged, keys never


def test_a_browser_signs_in_once_and_the_cookie_opens_the_dashboard_only(tmp_path):
    from fastapi.testclient import TestClient

    from appraiser.server import ServerSettings, create_app
    from appraiser.server.security import COOKIE, key_table

    app = create_app(ServerSettings(keys=key_table([KEY]), root=tmp_path / "server"))
    html = {"Accept": "text/html,application/xhtml+xml"}
    with TestClient(app, follow_redirects=False) as client:
        sent = client.get("/dashboard", headers=html)  # a browser without a key: to the login page
        assert sent.status_code == 303 and sent.headers["location"] == "/dashboard/login"
        form = client.get("/dashboard/login")
        assert form.status_code == 200 and 'name="key"' in form.text
        assert client.get("/dashboard/static/dashboard.css").status_code == 200  # the login page's style
        bad = client.post("/dashboard/login", data={"key": "wrong"})
        assert bad.status_code == 401 and COOKIE not in bad.headers.get("set-cookie", "")
        ok = client.post("/dashboard/login", data={"key": KEY})
        cookie = ok.headers["set-cookie"]
        assert ok.status_code == 303 and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
        assert "Path=/dashboard" in cookie
        assert client.get("/dashboard/api/runs").json() == {"runs": []}  # the cookie is sent back
        assert client.get("/dashboard", headers=html).status_code == 200
        # ...and opens nothing else: not the API, not a write
        jar = {"Cookie": f"{COOKIE}={KEY}"}
        assert client.get("/v1/models", headers=jar).status_code == 401
        assert client.post("/v1/files", headers=jar, files={"file": ("a.jsonl", b"{}")}).status_code == 401
        out = client.post("/dashboard/logout")  # with the cookie alone, as a browser signs out
        assert out.status_code == 303 and f'{COOKIE}=""' in out.headers["set-cookie"]
        client.cookies.clear()
        assert client.get("/dashboard/api/runs").status_code == 401


# ---------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"chromium not found at {CHROMIUM} (.ci/run installs it)")
        pytest.skip(f"chromium not found at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def training(dash_home, data_dir):
    """A real short LoRA training of the embedded model, writing to the dashboard's run store; stopped
    (Ctrl-C: the run is cancelled) once the tests have seen what they need."""
    from appraiser.data.io import read_items, write_items

    train, validation = dash_home / "train.jsonl", dash_home / "validation.jsonl"
    write_items(read_items(data_dir / "train.jsonl", limit=24), train)
    write_items(read_items(data_dir / "validation.jsonl", limit=2), validation)
    cmd = [
        _exe(), "train", "--train", str(train), "--validation", str(validation), "--n-train", "16",
        "--max-steps", "400", "--batch-size", "2", "--max-text-tokens", "24", "--probe-every", "4",
        "--probe-size", "1", "--save-every", "4", "--keep-checkpoints", "2", "--threads", "1",
        "--head-weight", "0", "--head-refit", "none", "--name", "live-browser",
    ]  # fmt: skip
    env = {**os.environ, "APPRAISER_HOME": str(dash_home), "APPRAISER_DTYPE": "fp32"}
    log = dash_home / "train.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    yield proc, log
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(page, expr: str, timeout_s: float = 60) -> None:
    """Until `expr` is true in the page. (Playwright's wait_for_function compiles its predicate with eval,
    which the dashboard's Content-Security-Policy rightly forbids; page.evaluate is not subject to it.)"""
    deadline = time.time() + timeout_s
    while not page.evaluate(expr):
        if time.time() > deadline:
            pytest.fail(f"never true in the page: {expr}")
        time.sleep(0.1)


def _new_page(browser, height: int):
    """A page that records console errors (a CSP violation would show there)."""
    page = browser.new_page(viewport={"width": 1280, "height": height})
    page.errors = []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    return page


def _wait_for_training(dash_home: Path, proc, log: Path, min_points: int) -> str:
    """The run id once the run has `min_points` loss points (fails if training dies first)."""
    store = RunStore(dash_home / "runs.db")
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {log.read_text()[-3000:]}")
        runs = [r for r in store.list() if r.name == "live-browser"]
        if runs and len(store.series(runs[0].id, "loss")[0]) >= min_points:
            return runs[0].id
        time.sleep(0.5)
    pytest.fail(f"training made no progress: {log.read_text()[-3000:]}")


@pytest.mark.browser
def test_runs_list_and_a_live_chart_that_grows_without_reloading(dashboard, dash_home, browser, training):
    proc, log = training
    run_id = _wait_for_training(dash_home, proc, log, min_points=2)
    page = _new_page(browser, 900)
    page.goto(f"{dashboard}/dashboard")
    row = page.locator(f'tr[data-run="{run_id}"]')
    row.wait_for()
    assert "running" in row.inner_text() and "live-browser" in row.inner_text()
    page.screenshot(path=str(ARTIFACTS / "dashboard-runs.png"))

    row.locator("a").click()
    _wait(page, "window.dashReady === true")
    _wait(page, "document.getElementById('live').textContent === 'live'")
    raw_points = "document.getElementById('loss').data[2].x.length"
    before = page.evaluate(raw_points)
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    _wait(page, f"{raw_points} > {before}", timeout_s=120)  # the next steps arrive over SSE
    _wait(page, "document.querySelectorAll('#log div').length > 0")
    assert page.evaluate("window.__sameDocument") is True
    assert page.evaluate("window.dashArrivals.length") > 0
    assert "Loss trend" in page.inner_text("#verdict")
    page.screenshot(path=str(ARTIFACTS / "dashboard-run-live.png"), full_page=True)
    assert page.errors == []


@pytest.fixture(scope="module")
def leaderboard_rows(dash_home, data_dir):
    """Two real evaluations (constant mean and TF-IDF ridge) in the dashboard's leaderboard."""
    from appraiser.data.io import read_items
    from appraiser.evaluation.evaluator import evaluate
    from appraiser.evaluation.store import LeaderboardStore
    from appraiser.pricers import registry

    train = read_items(data_dir / "train.jsonl", limit=400)
    test = read_items(data_dir / "validation.jsonl", limit=40)
    ids = []
    with LeaderboardStore(dash_home / "leaderboard.db") as store:
        for name in ("constant-mean", "tfidf-ridge"):
            pricer = registry.create(name)
            pricer.fit(train)
            ids.append(evaluate(pricer, test, name=name, show=False, store=store).run_id)
    return ids


@pytest.mark.browser
def test_leaderboard_shows_cis_and_a_paired_comparison(dashboard, browser, leaderboard_rows):
    page = _new_page(browser, 1000)
    page.goto(f"{dashboard}/dashboard/leaderboard")
    page.locator("#board tbody tr").nth(1).wait_for()
    cis = page.locator("#board td.ci").all_inner_texts()
    assert len(cis) == 2 and all(c.count("$") == 2 and "–" in c for c in cis)
    assert page.locator("#ranked-after").is_hidden()  # both rows priced every item: no footnote
    page.wait_for_selector("#chart .main-svg")
    assert page.evaluate("document.getElementById('chart').data[0].error_x.array.length") == 2
    page.locator("#comparison p").first.wait_for()
    assert "better" in page.inner_text("#comparison") or "no significant" in page.inner_text("#comparison")
    page.screenshot(path=str(ARTIFACTS / "dashboard-leaderboard.png"), full_page=True)

    page.locator("#board tbody tr a").first.click()
    page.wait_for_selector("#scatter .main-svg")
    page.wait_for_selector("#running .main-svg")
    assert page.evaluate("document.getElementById('scatter').data[0].x.length") == 40
    page.screenshot(path=str(ARTIFACTS / "dashboard-eval.png"), full_page=True)
    assert page.errors == []


def test_checkpoints_are_listed_as_training_lists_them(tmp_path):
    from appraiser.server import dashboard_data
    from appraiser.training import checkpoints

    assert (dashboard_data.CHECKPOINT_PREFIX, dashboard_data.CHECKPOINT_MARKER) == (
        checkpoints.CHECKPOINT_PREFIX,
        checkpoints.CHECKPOINT_MARKER,
    )
    store = RunStore(tmp_path / "runs.db")
    run = store.create(name="ckpt")
    for step, marked in ((4, True), (8, True), (12, False)):  # 12: still being written
        folder = run.folder / f"checkpoint-{step}"
        folder.mkdir()
        if marked:
            (folder / checkpoints.CHECKPOINT_MARKER).write_text("{}")
    (run.folder / "checkpoint-x").mkdir()
    expected = [{"step": s, "name": p.name} for s, p in checkpoints.checkpoints(run.folder)]
    assert (
        dashboard_data.checkpoints_of(run)
        == expected
        == [
            {"step": 4, "name": "checkpoint-4"},
            {"step": 8, "name": "checkpoint-8"},
        ]
    )


# ---------------------------------------------------------------- odd data, odd URLs (from a probe)


def _board(tmp_path):
    """A leaderboard with a good pricer, one that failed on every item (MAE NaN) and a worse one, newest
    last, and an evaluation with two guesses of 1e308 (once an infinite running error, a 500)."""
    from appraiser.evaluation.evaluator import record_result, score
    from appraiser.evaluation.store import LeaderboardStore
    from appraiser.items import Item

    items = [Item(id=f"j{k}", title=f"t{k}", text=f"x{k}", price=10.0) for k in range(5)]
    results = [
        score(items, [11.0] * 5, name="good"),
        score(items, [None] * 5, name="all-failed"),
        score(items, [15.0] * 5, name="bad"),
    ]
    huge = score(items, [1e308, 1e308, 10.0, 10.0, 10.0], name="huge")
    with LeaderboardStore(tmp_path / "leaderboard.db") as lb:
        ids = [record_result(r, lb) for r in results]
    with LeaderboardStore(tmp_path / "other.db") as lb:
        huge_id = record_result(huge, lb)
    return results, ids, huge_id


def test_a_pricer_that_failed_every_item_ranks_last_everywhere(tmp_path):
    from appraiser.demo_report import model_vs_traditional
    from appraiser.evaluation.charts import leaderboard_figure
    from appraiser.server import dashboard_data

    results, _, _ = _board(tmp_path)
    assert math.isnan(results[1].metrics["mae"])
    rows = dashboard_data.leaderboard(tmp_path / "leaderboard.db")["rows"]
    assert [r["label"] for r in rows] == ["good", "bad", "all-failed"] and rows[-1]["mae"] is None
    assert list(leaderboard_figure(results).data[0].y) == ["good", "bad", "all-failed"]
    for r in results:  # the demo's verdict names a scored model-based pricer, never the one with no MAE
        r.pricer = {"good": "tfidf-ridge", "all-failed": "lora-x", "bad": "lora-y"}[r.pricer]
    line = model_vs_traditional(results)
    assert "lora-y" in line and "lora-x" not in line and "nan" not in line


def test_eval_ids_that_do_not_exist_are_404_and_absurd_guesses_are_failures(tmp_path):
    from fastapi.testclient import TestClient

    from appraiser.server.dashboard import create_dashboard_app
    from appraiser.server.dashboard_data import Paths

    _, ids, huge_id = _board(tmp_path)
    with TestClient(create_dashboard_app(Paths(tmp_path / "runs.db", tmp_path / "leaderboard.db"))) as client:
        assert client.get(f"/dashboard/evals/{ids[0]}").status_code == 200
        page = client.get(f"/dashboard/evals/{ids[0]}")
        assert (
            page.headers["cache-control"] == "no-store"
            and "script-src 'self'" in page.headers["content-security-policy"]
        )
        assert "http://" not in page.text and "https://" not in page.text  # no CDN
        for bad in ("999", "abc", "99999999999999999999", "-1", "١"):
            assert client.get(f"/dashboard/evals/{bad}").status_code == 404, bad
            assert client.get(f"/dashboard/api/evals/{bad}").status_code == 404, bad
        assert client.get(f"/dashboard/api/compare?a={ids[0]}&b=99999999999999999999").status_code == 404
        assert client.get(f"/dashboard/api/compare?a={ids[0]}&b={ids[2]}").status_code == 200
    with TestClient(create_dashboard_app(Paths(tmp_path / "runs.db", tmp_path / "other.db"))) as client:
        got = client.get(f"/dashboard/api/evals/{huge_id}")
        assert got.status_code == 200, got.text
        assert got.json()["metrics"]["failures"] == 2  # 1e308 is no price: a failure, never an infinite MAE


def test_another_keys_newer_runs_do_not_push_a_keys_own_off_its_list(tmp_path):
    from appraiser.server.dashboard_data import runs_list

    store = RunStore(tmp_path / "runs.db")
    mine = store.create(name="mine", config={"owner": "key2"})
    for i in range(5):
        store.create(name=f"theirs-{i}", config={"owner": "key1"})
    assert [r["name"] for r in runs_list(store, "key2", True, limit=3)] == [mine.name]
    assert len(runs_list(store, "key1", True, limit=3)) == 3


def test_a_run_deleted_while_its_page_watches_ends_the_stream(tmp_path):
    import asyncio

    from appraiser.server.dashboard_live import LiveRun, stream

    store = RunStore(tmp_path / "runs.db")
    run = store.create(name="doomed", status="running")
    store.log_metrics(run.id, 1, {"loss": 2.0})
    live = LiveRun(store, run.id, (0, 0))

    async def follow():
        seen = []

        async def connected():
            return False

        async for message in stream(live, connected):
            seen.append(message)
            if message["event"] == "hello":
                store.delete(run.id)
        return seen

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # its own event loop: Playwright's may be running in this thread
        seen = pool.submit(asyncio.run, asyncio.wait_for(follow(), 30)).result()
    assert seen[-1]["event"] == "end" and json.loads(seen[-1]["data"]) == {"deleted": True}
    assert "reset" not in [m["event"] for m in seen]  # a reset makes the page reload into a 404 instead


def test_the_live_stream_of_a_run_whose_loss_went_nan_draws_a_gap(tmp_path):
    """The store keeps a NaN loss (as the text 'nan', since SQLite makes a float NaN NULL); the live stream reads
    the table with its own SQL and must read it back as a number: a gap in the curve, not a TypeError."""
    from appraiser.server.dashboard_data import cursor_now
    from appraiser.server.dashboard_live import LiveRun

    store = RunStore(tmp_path / "runs.db")
    run = store.create(name="nan", status="running")
    store.log_metrics(run.id, 1, {"loss": 2.0})
    store.log_metrics(run.id, 2, {"loss": float("nan")})
    cursor = tuple(int(part) for part in cursor_now(store, run.id).split("."))
    primed = LiveRun(store, run.id, cursor)  # the page has both points: the EMA goes on over them
    store.log_metrics(run.id, 3, {"loss": float("nan")})
    store.log_metrics(run.id, 4, {"loss": 1.0})
    points = [json.loads(m["data"]) for m in primed.poll() if m["event"] == "metrics"]
    losses = [p for batch in points for p in batch["points"] if p["name"] == "loss"]
    assert [(p["step"], p["value"]) for p in losses] == [(3, None), (4, 1.0)]
    assert LiveRun(store, run.id, (0, 0)).poll()  # from the start: both NaN rows read without an error


def test_a_real_dashboard_answers_only_to_this_machines_names(dashboard):
    """DNS rebinding, against the CLI's own choice of names (`appraiser dashboard` binds 127.0.0.1)."""
    port = dashboard.rsplit(":", 1)[1]
    rebound = httpx2.get(f"{dashboard}/dashboard/api/runs", headers={"Host": f"attacker.example:{port}"})
    assert rebound.status_code == 400 and rebound.json()["error"]["code"] == "invalid_host"
    assert httpx2.get(f"{dashboard}/dashboard/api/runs", headers={"Host": f"localhost:{port}"}).status_code == 200


def test_a_store_the_dashboard_cannot_read_is_refused_at_start_and_never_written(tmp_path):
    """A probe: `--leaderboard` naming an empty file wrote a schema into it, a mistyped `--runs-db` showed an
    empty dashboard, and a store that could not be read answered every page with a bare 500."""
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from appraiser.cli import app
    from appraiser.server.dashboard import create_dashboard_app
    from appraiser.server.dashboard_data import Paths

    runner = CliRunner()
    empty, text = tmp_path / "empty.db", tmp_path / "notes.txt"
    empty.write_bytes(b"")
    text.write_text("my notes\n")
    for flag, path, says in (
        ("--leaderboard", empty, "not an SQLite database"),
        ("--leaderboard", text, "not an SQLite database"),
        ("--runs-db", tmp_path / "typo.db", "no such file"),
        ("--runs-db", tmp_path, "is a folder"),
    ):
        r = runner.invoke(app, ["dashboard", "--port", "0", flag, str(path)])
        assert r.exit_code == 2 and says in r.output, r.output
    assert empty.read_bytes() == b"" and text.read_text() == "my notes\n" and not (tmp_path / "typo.db").exists()

    with TestClient(create_dashboard_app(Paths(tmp_path / "runs.db", text))) as client:
        got = client.get("/dashboard/api/leaderboard")
        assert got.status_code == 400 and "database" in got.json()["error"]["message"]
