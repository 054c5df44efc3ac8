"""The run store (runs, events, metrics; WAL; killed-run detection), loss smoothing, the chart, `runs` CLI."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from appraiser.cli import app
from appraiser.cli.progress import watch_frame
from appraiser.data.io import DataError
from appraiser.runs import RunNotFound, RunStore, ema, rolling_mean
from appraiser.runs.chart import Series, line_chart

runner = CliRunner()


def _filled(store: RunStore, name: str = "demo", steps: int = 5) -> str:
    run = store.create(name=name, model="smollm2-135m", config={"lr": 2e-4}, max_steps=steps)
    store.set_status(run.id, "running", message="Training started")
    for step in range(1, steps + 1):
        loss = 3.0 / step + (0.3 if step % 2 else -0.3)
        store.log_metrics(
            run.id, step, {"loss": loss, "lr": 2e-4, "tokens_per_s": 500.0, "eta_s": 10.0 * (steps - step)}
        )
        store.update(run.id, step=step)
        store.add_event(run.id, f"Step {step}/{steps}: training loss={loss:.4f}", step=step)
    return run.id


def test_runs_are_found_by_id_prefix_name_and_last():
    store = RunStore()
    a = store.create(name="alpha", config={"x": 1})
    b = store.create(name="beta", kind="hosted", external_id="ftjob-123", status="queued")
    assert a.folder is not None and a.folder.is_dir() and a.folder.parent == store.runs_dir
    assert b.folder is None  # hosted jobs keep their files elsewhere
    assert store.get(a.id).config == {"x": 1}
    assert store.get("alpha").id == a.id
    assert store.get("last").id == b.id
    if not a.id.startswith(b.id[:-1]):
        assert store.get(b.id[:-1]).id == b.id  # a unique prefix is enough
    with pytest.raises(RunNotFound, match="ambiguous"):
        store.get(a.id[:4])  # the year: both runs start with it
    year = store.create(name=a.id[:4])  # a name that is also an id prefix is found by its name
    assert store.get(a.id[:4]).id == year.id
    assert [r.id for r in store.list()] == [year.id, b.id, a.id]
    assert [r.id for r in store.list(kind="hosted")] == [b.id]
    with pytest.raises(RunNotFound, match="no run 'gamma'"):
        store.get("gamma")
    assert issubclass(RunNotFound, DataError)  # the CLI shows it as one line
    with pytest.raises(ValueError):
        store.create(kind="remote")
    with pytest.raises(ValueError):
        store.update(a.id, status="exploded")
    with pytest.raises(ValueError):
        store.update(a.id, created=0)


def test_status_events_and_best():
    store = RunStore()
    run_id = _filled(store)
    run = store.get(run_id)
    assert run.status == "running" and run.step == 5 and run.max_steps == 5
    assert run.alive() is True and run.display_status == "running"  # this very process
    events = store.events(run_id)
    assert [e.message for e in events][:2] == ["Training started", "Step 1/5: training loss=3.3000"]
    assert [e.id for e in store.events(run_id, after=events[2].id)] == [e.id for e in events[3:]]
    assert "Step 5/5: training loss=0.9000" in str(events[-1])
    store.set_best(run_id, "probe_mae", 123.4, 4)
    store.set_status(run_id, "failed", error="RuntimeError: boom")
    run = store.get(run_id)
    assert (run.best_metric, run.best_value, run.best_step) == ("probe_mae", 123.4, 4)
    assert run.finished and run.error == "RuntimeError: boom"
    assert store.events(run_id)[-1].level == "error"


def test_metrics_replace_on_relog_and_discard_after_resume_point():
    store = RunStore()
    run_id = _filled(store)
    steps, losses = store.series(run_id, "loss")
    assert steps == [1, 2, 3, 4, 5] and losses[0] == pytest.approx(3.3)
    store.log_metrics(run_id, 5, {"loss": 9.0})
    assert store.series(run_id, "loss")[1][-1] == 9.0  # a redone step replaces, not duplicates
    assert store.latest(run_id)["loss"] == 9.0
    assert store.discard_after(run_id, 3) == 2 * 4  # steps 4 and 5, four metrics each
    assert store.series(run_id, "loss")[0] == [1, 2, 3]
    assert {m.name for m in store.metrics(run_id, since_step=2)} == {"loss", "lr", "tokens_per_s", "eta_s"}


def test_wal_lets_a_reader_see_committed_rows_while_a_writer_holds_a_transaction():
    store = RunStore()
    run_id = _filled(store, steps=2)
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    writer = sqlite3.connect(store.path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO events (run_id, time, level, message) VALUES (?, 0, 'info', 'pending')", (run_id,))
    try:
        reader = RunStore(store.path)  # opens, reads and sets WAL while the write lock is held
        assert [e.message for e in reader.events(run_id)][-1] == "Step 2/2: training loss=1.2000"
    finally:
        writer.execute("COMMIT")
        writer.close()
    assert reader.events(run_id)[-1].message == "pending"


def test_a_run_whose_process_died_reads_as_killed():
    store = RunStore()
    run_id = _filled(store, steps=1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    store.update(run_id, pid=int(dead.stdout))
    run = store.get(run_id)
    assert run.status == "running" and run.alive() is False and run.display_status == "killed"


def test_a_run_killed_before_it_started_reads_as_killed_and_watch_ends():
    """`appraiser train` records its pid when it creates the run, so a kill during the model load (the run
    still queued) is told apart, and `runs watch` / `events -f` end instead of waiting for ever."""
    store = RunStore()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run = store.create(kind="local", name="loadkill", model="smollm2-135m", pid=int(dead.stdout))
    assert run.status == "queued" and run.display_status == "killed"
    assert store.create(kind="local", name="mine", pid=os.getpid()).display_status == "queued"
    for args in (["runs", "watch", "loadkill", "--interval", "0.1"], ["runs", "events", "loadkill", "-f"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output


def test_a_damaged_run_store_is_one_line_naming_it():
    store = RunStore()
    store.path.write_bytes(b"not a database" * 600)
    result = runner.invoke(app, ["runs", "list"])
    assert result.exit_code == 2 and str(store.path) in result.stderr and "Traceback" not in result.output


def test_smoothing():
    noisy = [3.0 + (0.5 if i % 2 else -0.5) for i in range(100)]
    smooth = ema(noisy, alpha=0.1)
    assert smooth[0] == noisy[0]  # bias-corrected: starts at the first value, not near zero
    assert max(smooth[50:]) - min(smooth[50:]) < 0.2 * (max(noisy) - min(noisy))
    assert ema([2.0] * 5, 0.3) == pytest.approx([2.0] * 5)
    assert rolling_mean([1, 2, 3, 4], window=2) == [1.0, 1.5, 2.5, 3.5]
    assert ema([], 0.1) == [] and rolling_mean([], 3) == []
    with pytest.raises(ValueError):
        ema([1.0], alpha=0)
    with pytest.raises(ValueError):
        rolling_mean([1.0], window=0)


def test_line_chart_draws_series_with_axis_labels():
    xs = list(range(1, 41))
    ys = [5.0 - 0.1 * x for x in xs]
    chart = line_chart([Series("loss", xs, ys, "red"), Series("flat", xs, [3.0] * 40, "blue")], width=40, height=8)
    lines = chart.plain.splitlines()
    assert len(lines) == 8 + 3  # rows, axis, x labels, legend
    assert lines[0].strip().startswith("4.9")  # max at the top
    assert lines[7].strip().startswith("1")  # min at the bottom
    assert all(any(0x2800 < ord(ch) <= 0x28FF for ch in line) for line in lines[:8])  # a line crosses every row
    assert "40" in lines[9] and "loss" in lines[10] and "flat" in lines[10]
    assert "no data" in line_chart([Series("loss", [], [], "red")]).plain


def test_runs_cli_list_events_show_and_watch_once():
    store = RunStore()
    run_id = _filled(store, name="demo", steps=5)
    store.set_best(run_id, "probe_mae", 99.5, 4)
    listed = runner.invoke(app, ["runs", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and run_id in listed.output and "running" in listed.output
    events = runner.invoke(app, ["runs", "events", "demo", "--tail", "2"])
    assert events.exit_code == 0
    assert "Step 4/5: training loss=0.4500" in events.output and "Step 5/5" in events.output
    assert "Step 3/5" not in events.output
    negative = runner.invoke(app, ["runs", "events", "demo", "--tail", "-2"])  # printed nothing, exit 0
    assert negative.exit_code == 2 and "greater than or equal to 0" in negative.output
    shown = runner.invoke(app, ["runs", "show", run_id[:12]], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "probe_mae = 99.5000 at step 4" in shown.output and '"lr": 0.0002' in shown.output
    store.set_status(run_id, "succeeded")
    watched = runner.invoke(app, ["runs", "watch", "demo", "--once", "--width", "30"])
    assert watched.exit_code == 0
    assert "training loss" in watched.output and "smoothed" in watched.output and "succeeded" in watched.output
    assert any(0x2800 < ord(ch) <= 0x28FF for ch in watched.output)
    live = runner.invoke(app, ["runs", "watch", "demo", "--interval", "0.1"])  # ends at once: the run is over
    assert live.exit_code == 0 and f"run {run_id} is succeeded" in live.output
    missing = runner.invoke(app, ["runs", "events", "nope"])
    assert missing.exit_code == 2 and "no run 'nope'" in missing.output


def test_watch_frame_shows_probe_chart_when_there_are_probes():
    store = RunStore()
    run_id = _filled(store, steps=4)
    assert "probe MAE" not in _render(watch_frame(store, run_id))
    store.log_metrics(run_id, 2, {"probe_mae": 150.0})
    store.log_metrics(run_id, 4, {"probe_mae": 120.0})
    assert "probe MAE" in _render(watch_frame(store, run_id))


def _render(renderable) -> str:
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(renderable)
    return console.export_text()


def test_state_survives_reopen_and_claim_is_exactly_once_across_processes(tmp_path):
    db = tmp_path / "runs.db"
    store = RunStore(db)
    run = store.create(kind="hosted", name="h", external_id="ftjob-1")
    assert store.get_state(run.id, "cursor") is None
    store.set_state(run.id, "cursor", {"after": "ftevent-9"})
    assert RunStore(db).get_state(run.id, "cursor") == {"after": "ftevent-9"}
    code = (
        "import sys; from appraiser.runs import RunStore; "
        f"print(RunStore({str(db)!r}).claim({run.id!r}, 'notified:succeeded'))"
    )
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True) for _ in range(3)]
    assert [o.stdout.strip() for o in outs] == ["True", "False", "False"]
    store.unclaim(run.id, "notified:succeeded")
    assert store.claim(run.id, "notified:succeeded") is True


def test_an_old_database_gains_the_state_table(tmp_path):
    db = tmp_path / "runs.db"
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE runs (id TEXT PRIMARY KEY, kind TEXT NOT NULL DEFAULT 'local', name TEXT, status TEXT NOT NULL"
        " DEFAULT 'queued', model TEXT, config TEXT NOT NULL DEFAULT '{}', folder TEXT, created REAL NOT NULL,"
        " updated REAL NOT NULL, step INTEGER NOT NULL DEFAULT 0, max_steps INTEGER, best_metric TEXT, best_value"
        " REAL, best_step INTEGER, external_id TEXT, pid INTEGER, host TEXT, error TEXT); PRAGMA user_version=1;"
    )
    con.close()
    store = RunStore(db)
    run = store.create(name="old")
    assert store.claim(run.id, "k") and not store.claim(run.id, "k")


def test_add_event_once_writes_the_event_and_its_metrics_once(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    run = store.create(kind="hosted", name="h")
    assert store.add_event_once(run.id, "ev:1", "Step 1/2: training loss=1.5", step=1, metrics={"loss": 1.5})
    assert not store.add_event_once(run.id, "ev:1", "Step 1/2: training loss=1.5", step=1, metrics={"loss": 9.0})
    assert [e.message for e in store.events(run.id)] == ["Step 1/2: training loss=1.5"]
    assert store.series(run.id, "loss") == ([1], [1.5])


def test_a_nan_loss_is_kept_so_the_run_reads_as_diverging():
    """From a probe: SQLite stores a float NaN as NULL, which `series` dropped as "not logged", so a run that
    failed on a NaN loss was "falling" in `runs show` and on its result card."""
    import math

    store = RunStore()
    run = store.create(name="nanrun", status="running")
    for step in range(1, 51):
        store.log_metrics(run.id, step, {"loss": 3 - 2 * step / 50})
    store.log_metrics(run.id, 51, {"loss": float("nan"), "lr": None})
    store.set_status(run.id, "failed", error="loss nan")
    steps, values = store.series(run.id, "loss")
    assert steps[-1] == 51 and math.isnan(values[-1])
    assert math.isnan(store.latest(run.id)["loss"]) and store.latest(run.id)["lr"] is None
    assert store.series(run.id, "lr") == ([], [])  # a value not logged is still no value
    shown = runner.invoke(app, ["runs", "show", "nanrun", "--verdict"])
    assert shown.exit_code == 0 and "diverging" in shown.output and "falling: P" not in shown.output, shown.output


def test_a_store_locked_past_the_wait_is_one_line(monkeypatch):
    """From a probe: a writer that held runs.db past the 30 s wait gave a traceback (`database is locked`)."""
    import appraiser.runs.store as store_module

    store = RunStore()
    run = store.create(name="busy", status="succeeded")
    monkeypatch.setattr(store_module, "LOCK_WAIT_SECONDS", 0.2)
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DataError, match="locked for 0 s; try again"):
            store.log_metrics(run.id, 1, {"loss": 1.0})
        got = runner.invoke(app, ["notify", "run", "busy", "json://127.0.0.1:9/hook"])  # claims, so writes
        assert got.exit_code == 2 and "locked" in got.output and "Traceback" not in got.output, got.output
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.log_metrics(run.id, 1, {"loss": 1.0})  # once the lock is gone, nothing stands in the way
    assert store.series(run.id, "loss") == ([1], [1.0])


@pytest.mark.parametrize("seconds", ["inf", "0", "-1", "100000"])
def test_a_watch_interval_must_be_a_real_wait(seconds):
    store = RunStore()
    run = store.create(name="w", status="running")
    got = runner.invoke(app, ["runs", "watch", run.id, "--interval", seconds])
    assert got.exit_code == 2 and "--interval must be more than 0 seconds and at most" in got.output, got.output


def test_two_runs_that_draw_the_same_id_in_one_second_both_get_made(monkeypatch):
    """A run id is its second plus 4 random hex digits; CI once drew the same one twice in a second, and the
    second `create` failed on the table's UNIQUE id. The same draw now means drawing again (and never sharing a
    run folder). The clock and the random digits (stdlib) are pinned to force it."""
    import appraiser.runs.store as store_module

    draws = iter(["abcd", "abcd", "abcd", "ef01", "abcd", "0002"])
    monkeypatch.setattr(store_module.secrets, "token_hex", lambda _n: next(draws))
    monkeypatch.setattr(store_module.time, "time", lambda: 1_800_000_000.0)
    store = RunStore()
    first = store.create(name="one")
    second = store.create(name="two")  # its own folder for abcd exists: drawn again, ef01
    hosted = store.create(name="three", kind="hosted", external_id="ftjob-1")  # no folder: the table says abcd is taken
    assert first.id.endswith("-abcd") and second.id.endswith("-ef01") and hosted.id.endswith("-0002")
    assert first.folder != second.folder and {r.name for r in store.list()} == {"one", "two", "three"}


def test_a_watch_width_is_bounded():
    store = RunStore()
    run = store.create(name="wide", status="succeeded")
    got = runner.invoke(app, ["runs", "watch", run.id, "--once", "--width", "100000"])  # was 4.6 MB of braille
    assert got.exit_code == 2 and "--width must be between 10 and 1000" in got.output, got.output
