"""`appraiser hosted prepare/start/watch/checkpoints/cancel` end to end: the real CLI in its own process,
the official `openai` SDK, a live `appraiser serve` (its files and fine-tuning routes), the run store, and
trackio's local SQLite store as the tracker.

The fine-tuning jobs train SmolLM2-135M on CPU for a few steps (a couple of dozen items), so the tests that
run one are marked slow; prepare and the refusals are fast.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import KEY

from appraiser.data.io import read_items, write_items
from appraiser.runs.store import RunStore

EXE = shutil.which("appraiser") or str(Path(sys.executable).parent / "appraiser")


def cli(*args: object, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """The `appraiser` command as a user runs it (its own process, this test's state folder)."""
    return subprocess.run(
        [EXE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture()
def pool(data_dir: Path, tmp_path: Path) -> Path:
    """A small item pool: 40 real training items."""
    path = tmp_path / "pool.jsonl"
    write_items(read_items(data_dir / "train.jsonl", limit=40), path)
    return path


# ---------------------------------------------------------------- prepare


def test_prepare_writes_the_courses_chat_examples_and_checks_them(pool: Path, tmp_path: Path):
    out = tmp_path / "prepared"
    r = cli("hosted", "prepare", "--items", pool, "--n-train", 20, "--n-validation", 10, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "training_file" in r.stdout and "validation_file" in r.stdout
    assert "default epochs 5" in r.stdout  # OpenAI's rule: 100 // 20 example passes
    assert "estimated cost $" in r.stdout  # gpt-4o-mini's training price
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert len(train) == 20 and len(val) == 10
    items = {it.text: it for it in read_items(pool)}
    for ex in train + val:
        system, user, assistant = ex["messages"]
        assert system["role"] == "system" and "estimate prices" in system["content"]
        assert user["content"].startswith("How much does this cost?\n\n")
        item = items[user["content"].removeprefix("How much does this cost?\n\n")]
        assert assistant == {"role": "assistant", "content": f"Price is ${int(item.price + 0.5)}.00"}
    train_texts = {ex["messages"][1]["content"] for ex in train}
    assert not train_texts & {ex["messages"][1]["content"] for ex in val}  # no item in both files
    report = json.loads((out / "report.json").read_text())
    assert report["files"]["training_file"]["n_epochs"] == 5
    assert report["files"]["training_file"]["error"] is None


def test_prepare_refuses_a_training_file_with_too_few_examples(pool: Path, tmp_path: Path):
    r = cli("hosted", "prepare", "--items", pool, "--n-train", 5, "--n-validation", 0, "--out", tmp_path / "p")
    assert r.returncode == 2
    assert r.stderr.count("error:") == 1 and "at least 10 examples" in r.stderr
    assert (tmp_path / "p" / "train.jsonl").exists()  # kept, so the user can read what was refused


def test_prepare_refuses_more_items_than_the_pool_holds(pool: Path, tmp_path: Path):
    r = cli("hosted", "prepare", "--items", pool, "--n-train", 40, "--n-validation", 10, "--out", tmp_path / "p")
    assert r.returncode == 2 and "the training pool holds 40" in r.stderr


def test_start_refuses_a_malformed_file_before_uploading_anything(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n'
        '{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}\n'
    )
    r = cli("hosted", "start", "--train", bad, "--provider", "appraiser", "--base-url", "http://127.0.0.1:9/v1")
    assert r.returncode == 2
    err = r.stderr
    assert "invalid_json: 1" in err and "unrecognized_role: 1" in err and "example_missing_assistant_message" in err
    assert RunStore().list() == []  # nothing started


def test_start_records_a_provider_error_on_the_run(server, pool: Path, tmp_path: Path):
    """The files upload to the live server; a job on a model it does not have fails with its message."""
    out = tmp_path / "p"
    assert cli("hosted", "prepare", "--items", pool, "--n-train", 12, "--n-validation", 0, "--out", out).returncode == 0
    env = {"APPRAISER_API_KEY": KEY}
    r = cli("hosted", "start", "--from", out, "--base-url", server[0], "--key-env", "APPRAISER_API_KEY",
            "--model", "no-such-model", env=env)  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("error:") == 1
    (run,) = RunStore().list()
    assert run.kind == "hosted" and run.status == "failed" and run.error
    assert run.config["training_file"].startswith("file-")  # the upload went through before the refusal
    assert KEY not in json.dumps(run.config)  # where the key lives, never the key
