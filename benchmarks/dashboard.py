"""What a long run costs the dashboard: run-page load time and payload, with and without downsampling, and the
delay from a training step to its point on the page over SSE.

Writes a run of `--steps` (10,000) steps to a fresh run store the way training does (one `log_metrics` and
one event per step, a probe MAE every 500), starts a real `appraiser dashboard` on it, and measures:

1. the run page's data (`/dashboard/api/runs/ID`): bytes (plain and gzipped) and server time, LTTB-downsampled
   to 1,500 points (what the page asks for) and in full (`?full=1`);
2. the run page in headless Chromium: from navigation to the chart drawn, both ways (median of `--loads`);
3. live: `--live` more steps written every `--interval` seconds while the page is open; for each, the time
   from the store write returning to the point reaching the page (the page's own clock: same machine).
   Target: p99 ≤ 1 s.

    nice -n 10 python benchmarks/dashboard.py [--steps 10000] [--live 200] [--interval 0.2] [--loads 5]

Needs Debian's chromium (`apt-get install chromium`) and the dev extra (playwright).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2

from appraiser.runs.store import RunStore

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def fill(store: RunStore, steps: int, total: int) -> str:
    """A running run with `steps` steps of a noisy decaying loss: the rows training writes, in one transaction
    (30,000 separate commits take minutes on a busy machine; the live part below uses the store's API)."""
    run = store.create(name="bench-10k", model="smollm2-135m", max_steps=total)
    store.set_status(run.id, "running")
    rng = random.Random(0)
    now = time.time()
    metrics, events = [], []
    for s in range(1, steps + 1):
        loss, values = step_values(s, total, rng)
        metrics += [(run.id, s, k, v, now) for k, v in values.items()]
        events.append((run.id, now, "info", f"Step {s}/{total}: training loss={loss:.4f}", s))
    with sqlite3.connect(store.path) as db:
        db.executemany("INSERT INTO metrics (run_id, step, name, value, time) VALUES (?, ?, ?, ?, ?)", metrics)
        db.executemany("INSERT INTO events (run_id, time, level, message, step) VALUES (?, ?, ?, ?, ?)", events)
    store.update(run.id, step=steps)
    return run.id


def step_values(s: int, total: int, rng: random.Random) -> tuple[float, dict[str, float]]:
    loss = 0.6 + 2.4 * math.exp(-s / 1500) + rng.gauss(0, 0.25)
    values = {"loss": loss, "lr": 2e-4 * (1 - s / total), "grad_norm": abs(rng.gauss(2, 0.5)), "tokens_per_s": 900.0}
    if s % 500 == 0:
        values["probe_mae"] = 60 + 200 * math.exp(-s / 3000) + rng.gauss(0, 5)
    return loss, values


def log_step(store: RunStore, run_id: str, s: int, total: int, rng: random.Random) -> None:
    """One step as the training callback logs it: metrics, progress, the event line."""
    loss, values = step_values(s, total, rng)
    store.log_metrics(run_id, s, values)
    store.update(run_id, step=s)
    store.add_event(run_id, f"Step {s}/{total}: training loss={loss:.4f}", step=s)


def start_dashboard(home: Path) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("appraiser") or str(Path(sys.executable).parent / "appraiser")
    log = home / "dashboard.log"
    fh = open(log, "w")  # noqa: SIM115 (open for the process's lifetime)
    proc = subprocess.Popen(
        [exe, "dashboard", "--port", "0"],
        stdout=fh,
        stderr=subprocess.STDOUT,
        env={**os.environ, "APPRAISER_HOME": str(home)},
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        words = [w for w in log.read_text().split() if w.startswith("http://")]
        if words:
            base = words[0].rsplit("/dashboard", 1)[0]
            httpx2.get(f"{base}/dashboard/api/runs", timeout=60).raise_for_status()
            return proc, base
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise SystemExit(f"appraiser dashboard did not start: {log.read_text()}")


def payload(base: str, run_id: str, full: bool, rounds: int = 5) -> dict[str, float]:
    url = f"{base}/dashboard/api/runs/{run_id}" + ("?full=1" if full else "")
    plain = httpx2.get(url, headers={"Accept-Encoding": "identity"}, timeout=60)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        r = httpx2.get(url, headers={"Accept-Encoding": "gzip"}, timeout=60)
        times.append(time.perf_counter() - t)
    zipped = int(r.headers.get("content-length", len(r.content)))
    points = len(plain.json()["curves"]["loss"]["step"])
    return {"bytes": len(plain.content), "gzip": zipped, "ms": 1000 * statistics.median(times), "points": points}


def page_load(browser, base: str, run_id: str, full: bool, loads: int) -> float:
    """Median ms from navigation start to the chart drawn (plotly.js itself cached, as on a second visit)."""
    url = f"{base}/dashboard/runs/{run_id}" + ("?full=1" if full else "")
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto(url)  # warms the browser cache with plotly.js
    wait_ready(page)
    times = []
    for _ in range(loads):
        page.goto(url)
        wait_ready(page)
        times.append(page.evaluate("window.dashReadyAt"))
    ctx.close()
    return statistics.median(times)


def wait_ready(page, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while not page.evaluate("window.dashReady === true"):
        if time.time() > deadline:
            raise SystemExit("the run page never drew its chart")
        time.sleep(0.02)


def live_delays(browser, base: str, store: RunStore, run_id: str, first: int, n: int, interval: float, total: int):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{base}/dashboard/runs/{run_id}")
    wait_ready(page)
    deadline = time.time() + 30
    while page.evaluate("document.getElementById('live').textContent") not in ("live",) and time.time() < deadline:
        time.sleep(0.05)
    written: dict[int, float] = {}
    rng = random.Random(1)

    def writer() -> None:
        for s in range(first, first + n):
            log_step(store, run_id, s, total, rng)
            written[s] = time.time() * 1000
            time.sleep(interval)

    t = threading.Thread(target=writer)
    t.start()
    t.join()
    deadline = time.time() + 30
    arrivals: dict[int, float] = {}
    while time.time() < deadline:
        arrivals = {int(s): ms for s, ms in page.evaluate("window.dashArrivals")}
        if all(s in arrivals for s in written):
            break
        time.sleep(0.2)
    delays = sorted(arrivals[s] - written[s] for s in written if s in arrivals)
    return delays, len(written) - len(delays)


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--live", type=int, default=200, help="steps written while the page watches")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between live steps")
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="dash-bench-") as tmp:
        home = Path(tmp)
        store = RunStore(home / "runs.db")
        total = args.steps + args.live
        t = time.perf_counter()
        run_id = fill(store, args.steps, total)
        print(f"run {run_id}: {args.steps:,} steps written in {time.perf_counter() - t:.1f}s")
        proc, base = start_dashboard(home)
        try:
            rows = {full: payload(base, run_id, full) for full in (False, True)}
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                loads = {full: page_load(browser, base, run_id, full, args.loads) for full in (False, True)}
                delays, lost = live_delays(
                    browser, base, store, run_id, args.steps + 1, args.live, args.interval, total
                )
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\nrun page of a {args.steps:,}-step run        points  JSON bytes  gzipped  API ms  page load ms")
    for full, label in ((False, "LTTB-downsampled (default)"), (True, "every step (?full=1)")):
        r, ms = rows[full], loads[full]
        print(f"  {label:<36} {r['points']:>6,}  {r['bytes']:>10,}  {r['gzip']:>7,}  {r['ms']:>6.0f}  {ms:>12.0f}")
    print(f"\nlive: {len(delays)} steps written every {args.interval}s while the page watched; {lost} never arrived")
    if delays:
        print(
            f"  step → point on the page over SSE: p50 {pct(delays, 0.5):.0f} ms, p95 {pct(delays, 0.95):.0f} ms, "
            f"p99 {pct(delays, 0.99):.0f} ms, max {delays[-1]:.0f} ms (target p99 ≤ 1000 ms)"
        )


if __name__ == "__main__":
    main()
