"""`appraiser train` guards: bad options are one line before a run exists; a resume continues the same run.

Real components throughout (the CLI, the run store, the embedded SmolLM2, real data); the training runs are
a few steps on a few items.
"""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from appraiser.cli import app
from appraiser.data.io import DataError, read_items, write_items
from appraiser.runs.store import RunStore
from appraiser.training import TrainConfig, resume, start

runner = CliRunner()


@pytest.fixture()
def files(small_split):
    return small_split(16, 4)


def _cli(train, validation, *extra: str):
    base = ["train", "--train", str(train), "--validation", str(validation), "--n-train", "8"]
    base += ["--max-text-tokens", "8", "--max-steps", "1", "--batch-size", "2", "--threads", "1"]
    return runner.invoke(app, [*base, *extra])


def _one_line_error(out, *needles: str) -> None:
    assert out.exit_code == 2, out.output
    assert out.exception is None or isinstance(out.exception, SystemExit), out.exception
    assert "Traceback" not in out.output
    assert [line.startswith("error:") for line in out.output.splitlines() if line.strip()][-1:] == [True], out.output
    for needle in needles:
        assert needle in " ".join(out.output.split()), out.output
    assert RunStore().list() == []  # refused before a run (failed or not) exists


# ------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--seed", "-1"], "seed: Input should be greater than or equal to 0"),  # numpy refused it: traceback
        (["--seed", str(2**32)], "seed: Input should be less than or equal to 4294967295"),  # failed in the run
        (["--epochs", "inf"], "epochs: Input should be a finite number"),  # OverflowError in a created run
        (["--epochs", "1e12"], "epochs: Input should be less than or equal to 1000"),  # trillions of steps
        (["--lr", "inf"], "learning_rate: Input should be a finite number"),
        (["--head-weight", "inf"], "head_weight: Input should be a finite number"),
        (["--sources", ",", "--off-source-weight", "0"], "sources names no source prefix"),
        (["--patience", "2", "--probe-every", "0"], "patience counts probes"),  # was silently inert
        (
            ["--head-weight", "1", "--head-refit", "kernel", "--probe-every", "1", "--probe-method", "expected"],
            "cannot judge head_refit",
        ),
    ],
)
def test_bad_options_are_one_line_and_create_no_run(files, extra, needle):
    """Each of these passed the options (some even --dry-run) and then failed with a traceback, or failed a
    run already created in the store; an input error must be refused before."""
    train, validation = files
    _one_line_error(_cli(train, validation, "--probe-every", "0", *extra), needle)


def test_config_file_values_are_checked_up_front(files, tmp_path):
    """An unknown scheduler crashed when the Trainer was built, after the run was created; a decay of 1e309
    (JSON's infinity) was accepted."""
    train, validation = files
    for fields, needle in (
        ({"lr_scheduler": "bogus"}, "lr_scheduler: Input should be 'linear', 'cosine'"),
        ({"weight_decay": 1e309}, "weight_decay: Input should be a finite number"),
    ):
        cfg = tmp_path / "cfg.json"
        cfg.write_text(json.dumps(fields).replace("Infinity", "1e309"))
        _one_line_error(_cli(train, validation, "--probe-every", "0", "--config", str(cfg)), needle)


def test_the_schedulers_allowed_are_the_ones_transformers_builds_without_more_options():
    """The Literal in training.config is a list made by hand: each entry must be a transformers SchedulerType
    that builds from (optimizer, warmup, steps) alone, which is all the Trainer is given here."""
    import typing

    import torch
    from transformers.optimization import get_scheduler
    from transformers.trainer_utils import SchedulerType

    from appraiser.training.config import LrScheduler

    known = {s.value for s in SchedulerType}
    for name in typing.get_args(LrScheduler):
        assert name in known
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        get_scheduler(name, opt, num_warmup_steps=1, num_training_steps=4)
        assert TrainConfig(lr_scheduler=name).lr_scheduler == name


def test_weights_that_drop_every_item_are_one_line(files):
    """Weights that drop every item were a ValueError traceback (the weighting's, never a DataError), with
    --dry-run as without."""
    train, validation = files
    for dry in ([], ["--dry-run"]):
        args = ["--probe-every", "0", "--sources", "nonexist", "--off-source-weight", "0", *dry]
        _one_line_error(_cli(train, validation, *args), "no item's source starts with nonexist (off_source_weight 0)")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--weighting", "match", "--probe-every", "0"], "validation items are needed for weighting 'match'"),
        (["--probe-every", "2"], "validation items are needed for probes (probe_every 2)"),
        (["--probe-every", "2", "--patience", "1"], "validation items are needed for probes"),
    ],
)
def test_an_empty_validation_file_is_one_line_when_it_is_needed(files, tmp_path, extra, needle):
    """An empty validation file failed deep in the weighting (traceback), or silently trained without a single
    probe ("probe: 0 validation items"), --patience included."""
    train, _ = files
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _one_line_error(_cli(train, empty, *extra), needle)


def test_head_refit_is_probed_by_the_head_by_default_and_saved_configs_still_load(tmp_path):
    """With head_refit and no probe_method given, the probe reads the head (what the refit changes, and what
    reading the run uses); a config saved before this check, with a digit probe, still loads for a resume."""
    cfg = TrainConfig(head_weight=1.0, head_refit="kernel")
    assert cfg.probe_method == "head"
    assert TrainConfig(head_weight=1.0).probe_method == "expected"
    saved = tmp_path / "config.json"
    data = json.loads(TrainConfig(head_weight=1.0).model_dump_json())
    data.update(head_refit="kernel", probe_every=5, probe_method="expected", patience=None)
    saved.write_text(json.dumps(data))
    assert TrainConfig.load(saved).probe_method == "expected"  # resumes as it started
    data.update(patience=2, probe_every=0)
    saved.write_text(json.dumps(data))
    assert TrainConfig.load(saved).patience == 2


# ------------------------------------------------------------------------------------------ training


def test_the_refit_head_is_probed_by_the_head_and_can_become_best(files):
    """With the default probe method the refit was probed by its digits, which the refit does not change: it
    tied with the step's probe and never reached best/, so `predict -m RUN` read the head before the refit.
    Probed by the head, the refit's probe differs from the step's, and best/ holds whichever is better."""
    from appraiser.inference.head import head_module
    from appraiser.models import load_finetuned

    train, validation = files
    cfg = TrainConfig(
        train=train,
        validation=validation,
        n_train=16,
        max_steps=2,
        batch_size=4,
        max_text_tokens=8,
        head_weight=1.0,
        head_refit="kernel",
        head_refit_items=10,
        probe_every=2,
        probe_size=4,
        name="refit",
        threads=1,
    )
    result = start(cfg)
    store = RunStore()
    events = [e.message for e in store.events(result.run_id) if e.message.startswith("Probe at step 2:")]
    scores = [e.split(" - new best")[0] for e in events]
    assert len(scores) == 2 and scores[0] != scores[1], events  # the refit is seen by the probe
    saved = TrainConfig.load(result.folder / "config.json")
    assert saved.probe_method == "head"
    best = json.loads((result.folder / "best" / "metrics.json").read_text())
    model, _ = load_finetuned(result.folder / "best")
    refit_won = "new best" in events[1]
    assert (head_module(model).kernel_rows == 10) == refit_won
    assert best["probe_mae"] == pytest.approx(result.best_probe_mae)


def test_an_early_stopped_run_killed_after_its_last_checkpoint_resumes_to_the_same_end(files):
    """The early stop lived in the Trainer's control, which a resume does not restore: a run killed after the
    checkpoint of the step it stopped at trained on past it. Here the kill is the state it leaves: the run not
    finished (status 'running' from a dead process reads as killed; 'failed' resumes the same way) and no final/."""
    train, validation = files
    cfg = TrainConfig(
        train=train,
        validation=validation,
        n_train=8,
        max_steps=5,
        batch_size=2,
        max_text_tokens=8,
        learning_rate=1e-12,  # the model does not move, so the probe MAE cannot improve
        probe_every=2,
        probe_size=1,
        probe_method="greedy",
        patience=1,
        save_every=2,
        name="stopper",
        threads=1,
    )
    store = RunStore()
    first = start(cfg, store=store)
    assert first.stopped_early and first.steps == 4
    assert (first.folder / "checkpoint-4").is_dir()
    shutil.rmtree(first.folder / "final")
    store.set_status(first.run_id, "failed", error="killed")

    again = resume(first.run_id, store=store)
    assert again.steps == 4 and again.stopped_early
    assert store.series(first.run_id, "loss")[0] == [1, 2, 3, 4]  # no step 5
    assert store.get(first.run_id).status == "succeeded"
    assert (first.folder / "final" / "adapter_config.json").exists()
    assert json.loads((first.folder / "final" / "appraiser.json").read_text())["step"] == 4
    assert again.train_loss == pytest.approx(first.train_loss)


def _cancelled_at_step_2(train, validation, name: str) -> tuple[RunStore, str]:
    cfg = TrainConfig(
        train=train,
        validation=validation,
        n_train=4,
        batch_size=2,
        max_steps=3,
        max_text_tokens=8,
        probe_every=1,
        probe_size=1,
        probe_method="greedy",
        save_every=1,
        threads=1,
        name=name,
    )

    def interrupt(step, total, values):
        if step == 2 and "loss" in values:
            raise KeyboardInterrupt

    store = RunStore()
    with pytest.raises(KeyboardInterrupt):
        start(cfg, store=store, listeners=[interrupt])
    return store, store.get(name).id


def test_resume_refuses_another_precision_or_other_probe_items(files, monkeypatch):
    """An fp32 run resumed under APPRAISER_DTYPE=bf16 went on in bf16; a replaced validation file made new
    probe MAEs compare with a best/ chosen on other items. Both are refused, before anything is changed, with
    how to get the original back; a run made before these were recorded still resumes."""
    train, validation = files
    store, run_id = _cancelled_at_step_2(train, validation, "precise")
    run = store.get(run_id)
    assert run.config["dtype"] == "float32" and run.config["probe_fingerprint"]
    events = len(store.events(run_id))

    monkeypatch.setenv("APPRAISER_DTYPE", "bf16")
    with pytest.raises(DataError, match=r"trained in float32 and would resume in bfloat16.*APPRAISER_DTYPE=fp32"):
        resume(run_id, store=store)
    out = runner.invoke(app, ["train", "--resume", run_id])
    assert out.exit_code == 2 and "APPRAISER_DTYPE=fp32" in out.output, out.output
    monkeypatch.setenv("APPRAISER_DTYPE", "fp32")

    items = read_items(validation)
    write_items([*items[:-1], items[0]], validation)  # another last item: another probe set
    with pytest.raises(DataError, match="probe items changed"):
        resume(run_id, store=store)
    assert len(store.events(run_id)) == events and store.get(run_id).status == "cancelled"  # nothing touched

    old = {k: v for k, v in run.config.items() if k not in ("dtype", "probe_fingerprint")}
    store.update(run_id, config=old)  # as a run made before they were recorded
    result = resume(run_id, store=store)
    assert result.steps == 3 and store.get(run_id).status == "succeeded"


# ------------------------------------------------------------------------------------------ NaN loss


def test_a_nan_loss_names_the_learning_rate_only_when_it_moved_the_weights():
    """The message always said "try a lower --lr", even when no step had a learning rate above 0 (the loss
    at step N is computed with the updates of steps 1..N-1), where it sends the user the wrong way."""
    from transformers import TrainerState

    from appraiser.training.callbacks import NonFiniteLoss, StoreCallback

    store = RunStore()

    def first_nan(lrs: list[float]) -> str:
        run = store.create(name=None)
        cb = StoreCallback(store, run.id)
        state = TrainerState(global_step=0, max_steps=9, num_input_tokens_seen=0, epoch=0.0)
        cb.on_train_begin(SimpleNamespace(), state, None)
        for step, lr in enumerate(lrs, start=1):
            state.global_step = step
            loss = math.nan if step == len(lrs) else 1.0
            try:
                cb.on_log(SimpleNamespace(), state, None, logs={"loss": loss, "learning_rate": lr})
            except NonFiniteLoss as e:
                return str(e)
        raise AssertionError("no NonFiniteLoss")

    for lrs in ([0.0], [2e-4], [0.0, 0.0, 1e-3]):  # no update before the NaN: not the learning rate
        msg = first_nan(lrs)
        assert "training loss is nan" in msg and "lower --lr" not in msg and "not the cause" in msg, msg
    msg = first_nan([1e-3, 1e-3])
    assert "try a lower --lr" in msg and "1.00e-03" in msg
