"""Every verified user-error defect of issue 12: one red line on stderr, exit code 2 (130 for Ctrl-C), no traceback.

Each test runs the command a user would type, through the real app (typer's runner, which bypasses `main()`,
and the real `appraiser` entry point in a subprocess where `main()` itself is what is checked).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appraiser.cli import app
from appraiser.data.io import DataError
from appraiser.pricers.base import Prediction, Pricer
from appraiser.pricers.registry import register
from appraiser.runs.store import RunStore

runner = CliRunner()
CLI = [sys.executable, "-c", "from appraiser.cli import main; main()"]


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_user_error(result, *fragments: str, code: int = 2) -> None:
    """Exit `code`, every fragment in the output, and no traceback."""
    output = result.output
    assert result.exit_code == code, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in {output!r}"


@pytest.fixture()
def split(small_split) -> tuple[Path, Path]:
    return small_split(40, 10)


def test_unknown_pricer_option_lists_the_valid_options(split):
    train, validation = split
    r = run("eval", "xgboost", "-o", "n_trees=3", "--test", validation, "--train", train, "--size", "5")
    assert_user_error(r, "error:", "xgboost: unknown option(s) n_trees", "n_estimators", "max_depth")


def test_wrongly_typed_pricer_option_names_the_option(split):
    train, validation = split
    r = run("eval", "linear", "-o", "seed=abc", "--test", validation, "--train", train, "--size", "5")
    assert_user_error(r, "linear: option seed='abc'", "valid integer")
    r = run("baseline", "linear", "-o", "no_such=1", "--test", validation, "--train", train, "--size", "5")
    assert_user_error(r, "linear: unknown option(s) no_such", "weighting")


def test_match_weighting_without_validation_is_a_clean_error(split):
    train, validation = split
    r = run("eval", "linear", "-o", "weighting=match", "--test", validation, "--train", train, "--size", "5")
    assert_user_error(r, "needs the validation split", "--validation")
    # ... and with --validation it fits and evaluates (the same flow `baseline` uses).
    ok = run(
        "eval", "linear", "-o", "weighting=match", "--validation", validation,
        "--test", validation, "--train", train, "--size", "5", "--no-record",
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output


def test_unknown_llm_model_is_a_clean_error_and_not_an_interrupted_run(split):
    _, validation = split
    r = run("eval", "llm", "-o", "model=typo", "--test", validation, "--size", "3")
    assert_user_error(r, "unknown model 'typo'", "smollm2-135m")
    assert "interrupted" not in r.output and "rerun to resume" not in r.output


def test_train_with_an_unknown_model_fails_before_loading_anything(split):
    train, validation = split
    start = time.perf_counter()
    r = run("train", "--model", "typo", "--train", train, "--validation", validation)
    assert_user_error(r, "unknown model 'typo'", "a folder or a hub id")
    assert RunStore().list() == []  # no run was created for it
    r = run("train", "--model", str(train.parent), "--dry-run", "--train", train)  # a folder with no model
    assert_user_error(r, "no model here")
    assert time.perf_counter() - start < 30  # checked up front: no model load, no tokenizing


@register("test-fails-on-batch", "Test only: prices batch 1, then fails as told.", kind="other", needs_fit=False)
class FailsOnBatch(Pricer):
    name = "test-fails-on-batch"
    batch_size = 2

    def __init__(self, at: int = 0, interrupt: bool = False):
        self.at, self.interrupt, self.calls = at, interrupt, 0

    def config(self):
        return {"at": self.at, "interrupt": self.interrupt}

    def predict(self, items):
        self.calls += 1
        if self.calls > self.at:
            if self.interrupt:
                raise KeyboardInterrupt
            raise DataError("the pricing service refused the request")
        return [Prediction(price=10.0) for _ in items]


def test_evaluator_says_interrupted_only_when_there_is_progress_to_resume(split):
    _, validation = split
    base = ["eval", "test-fails-on-batch", "--test", validation, "--size", "6"]
    r = run(*base, "-o", "at=0")  # fails on its first batch: nothing to resume
    assert_user_error(r, "the pricing service refused the request")
    assert "rerun to resume" not in r.output and "interrupted" not in r.output
    r = run(*base, "-o", "at=1")  # one batch priced, then an error: that batch is kept
    assert_user_error(r, "stopped by an error: 2/6 predictions are cached; rerun to resume", "refused")
    assert "interrupted" not in r.output
    r = run(*base, "-o", "at=1", "-o", "interrupt=true")  # Ctrl-C after one batch
    assert_user_error(r, "interrupted: 2/6 predictions are cached; rerun to resume", code=130)


@register(
    "test-markup-raw",
    "Test only: fails every item with raw text that looks like markup.",
    kind="other",
    needs_fit=False,
)
class MarkupRaw(Pricer):
    name = "test-markup-raw[/]"

    def predict(self, items):
        return [Prediction(price=None, raw="[/] [bold]Price is $[/bold]") for _ in items]


def test_model_text_and_labels_that_look_like_markup_are_printed_as_written(split):
    _, validation = split
    r = run("eval", "test-markup-raw", "--test", validation, "--size", "3", "--name", "mine[/]")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "[/] [bold]Price is $[/bold]" in r.output and "mine[/]" in r.output


def _failed_run(store: RunStore, name: str = "victim") -> object:
    run_ = store.create(kind="local", name=name, model="smollm2-135m", config={})
    store.set_status(run_.id, "failed", error="RuntimeError: killed")
    return store.get(run_.id)


def test_resume_with_a_damaged_config_names_the_file():
    store = RunStore()
    victim = _failed_run(store)
    config = victim.folder / "config.json"
    config.write_text('{"model": "smollm2-135m", "max_st', encoding="utf-8")  # cut off mid-write
    r = run("train", "--resume", victim.id)
    assert_user_error(r, str(config), "damaged, not a readable JSON config", f"cannot resume run {victim.id}")
    config.write_text(json.dumps({"lora_r": "many"}), encoding="utf-8")  # valid JSON, invalid config
    r = run("train", "--resume", victim.name)
    assert_user_error(r, str(config), "invalid training option lora_r")
    config.write_bytes(b"\xff\xfe\x00garbage")
    assert_user_error(run("train", "--resume", victim.id), str(config), "damaged")


def test_config_file_holding_a_list_or_bad_values_is_a_clean_error(tmp_path, split):
    train, _ = split
    cfg = tmp_path / "cfg.json"
    cfg.write_text("[1, 2, 3]", encoding="utf-8")
    assert_user_error(run("train", "--config", cfg, "--dry-run"), str(cfg), "holds a JSON list, not an object")
    cfg.write_text(json.dumps({"train": str(train), "lora_r": "x", "weighting": "?"}), encoding="utf-8")
    assert_user_error(
        run("train", "--config", cfg, "--dry-run"), "invalid training option", "(and 1 more)", f"in {cfg}"
    )
    cfg.write_text("{not json", encoding="utf-8")
    assert_user_error(run("train", "--config", cfg, "--dry-run"), "not valid JSON")
    assert_user_error(run("train", "--config", tmp_path, "--dry-run"), "is a folder")


def test_run_names_with_markup_are_printed_as_written():
    store = RunStore()
    victim = _failed_run(store, name="x[/]")
    store.update(victim.id, error="boom [red]not red[/red] [/]")
    listed = run("runs", "list")
    assert listed.exit_code == 0, listed.output
    assert "x[/]" in listed.output
    shown = run("runs", "show", "x[/]")
    assert shown.exit_code == 0, shown.output
    assert "x[/]" in shown.output and "[red]not red[/red] [/]" in shown.output
    for args in (("runs", "watch", "x[/]", "--once"), ("runs", "events", "x[/]")):
        r = run(*args)
        assert r.exit_code == 0 and "Traceback" not in r.output, r.output


def test_main_prints_error_text_verbatim():
    """`main()` (the real entry point) prints the message as text: brackets are not eaten as markup."""
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run([*CLI, "runs", "show", "appraiser[gpu]"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "no run 'appraiser[gpu]'" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0  # one line
    r = subprocess.run(
        [*CLI, "eval", "constant-mean", "-o", "weight[gpu]=1", "--size", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "unknown option(s) weight[gpu]" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout} s")


def _interrupt(args: list[str], predicate, what: str) -> tuple[int, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(predicate, proc, what)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # say where it is stuck: the CLI dumps every thread's stack on SIGUSR1
            proc.send_signal(signal.SIGUSR1)
            time.sleep(3)
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"still running 60 s after Ctrl-C; its threads:\n{err[-6000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def test_ctrl_c_during_train_and_resume_is_one_line_and_exit_130(small_split):
    """Ctrl-C once a checkpoint exists: "interrupted at step N; `appraiser train --resume RUN` continues",
    exit code 130 and the run marked cancelled; the same again during `train --resume`."""
    train, validation = small_split(6, 2)
    store = RunStore()
    args = [
        "train", "--train", str(train), "--validation", str(validation), "--n-train", "6", "--batch-size", "1",
        "--max-steps", "400", "--save-every", "1", "--keep-checkpoints", "2", "--max-text-tokens", "8",
        "--probe-every", "0", "--threads", "1", "--name", "ctrl-c",
    ]  # fmt: skip

    def step_at_least(n: int):
        def check() -> bool:
            runs = store.list()
            return bool(runs) and runs[0].step >= n and any(runs[0].folder.glob("checkpoint-*/trainer_state.json"))

        return check

    code, err = _interrupt(args, step_at_least(1), "checkpoint")
    victim = store.get("ctrl-c")
    assert code == 130, err
    assert "Traceback" not in err, err
    assert f"`appraiser train --resume {victim.id}` continues" in err, err
    assert f"interrupted at step {victim.step}" in err, err
    assert victim.status == "cancelled"
    first_stop = victim.step

    code, err = _interrupt(["train", "--resume", victim.id], step_at_least(first_stop + 1), "a resumed step")
    resumed = store.get(victim.id)
    assert code == 130 and "Traceback" not in err, err
    assert resumed.status == "cancelled" and resumed.step > first_stop
    assert f"interrupted at step {resumed.step}; `appraiser train --resume {victim.id}` continues" in err, err


def test_ctrl_c_during_the_demo_says_how_to_finish(data_dir, tmp_path):
    """The demo finishes a stopped run when run again (cache, resumed fine-tune): Ctrl-C says so, exit 130."""
    out = tmp_path / "report"
    code, err = _interrupt(
        ["demo", "--quick", "--data", str(data_dir), "--out", str(out)], (out / "demo.json").exists, "the demo's start"
    )
    assert code == 130 and "Traceback" not in err, err
    assert "stopped: run the same command again to finish" in " ".join(err.split()), err


def test_unknown_or_missing_tracker_is_refused_before_anything_loads(split):
    train, _ = split
    r = run("train", "--train", train, "--report-to", "wandbb", "--dry-run")
    assert_user_error(r, "--report-to wandbb: unknown tracker", "tensorboard")


def test_a_target_module_the_model_lacks_is_refused_before_a_run_exists(split):
    train, validation = split
    r = run("train", "--train", train, "--validation", validation, "--target-modules", "q_proj,bogus_proj")
    assert_user_error(r, "target module(s) bogus_proj not in smollm2-135m", "v_proj")
    assert RunStore().list() == []


def test_a_command_module_that_fails_to_import_is_an_error_not_a_missing_command():
    """Blocking `appraiser.cli.runs` (as a broken import would) must stop the CLI, not drop `runs` silently."""
    code = "import sys; sys.modules['appraiser.cli.runs'] = None; import appraiser.cli"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "appraiser.cli.runs" in r.stderr


def test_help_texts_keep_their_square_brackets():
    """Typer renders help through Rich, which takes `[owner]` for a style tag and drops it: every bracket in
    a command's or option's help is escaped (`\\[`), and shows up in --help as written."""
    import re

    import typer

    from appraiser.cli import app

    def walk(command, path):
        yield path, command
        for name, sub in (getattr(command, "commands", None) or {}).items():
            yield from walk(sub, [*path, name])

    unescaped = []
    for path, command in walk(typer.main.get_command(app), []):
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        unescaped += [(path, m.group(0)) for t in texts for m in re.finditer(r"(?<!\\)\[[^\]]*\]", t)]
    assert not unescaped
    shown = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "one per line [owner]" in shown
