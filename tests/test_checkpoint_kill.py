"""Kill at every instant: whatever a kill (or a bad disk) leaves of the newest checkpoint, resume falls
back to the previous good one and trains exactly as if nothing had happened.

One real run (SmolLM2, 12 real items, 6 steps, a checkpoint every 2) is trained once per module. Each
case copies its folder into a fresh "killed" run whose newest checkpoint is checkpoint-4, damages it
(every file in turn, truncated or corrupted; the marker deleted; half-written folders left beside it)
and checks that checkpoint-4 is refused with a reason and checkpoint-2 chosen. Three cases resume for
real and must reproduce the uninterrupted run's per-step losses (fp32, pinned in conftest).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from appraiser.data.io import DataError, read_items, write_items
from appraiser.runs.store import RunStore
from appraiser.training.checkpoints import (
    CHECKPOINT_MARKER,
    checkpoints,
    choose_checkpoint,
    recover_folder,
    replace_folder,
    save_adapter,
    validate_checkpoint,
)

STEPS = 6
#: Every file the Trainer writes into a checkpoint of a LoRA run, and our marker.
CHECKPOINT_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
    "training_args.bin",
    "README.md",
)


@pytest.fixture(scope="module")
def reference(data_dir: Path, tmp_path_factory):
    """(store, TrainResult, losses by step) of one uninterrupted run with checkpoints 2, 4 and 6."""
    import torch

    from appraiser.training import TrainConfig, start

    root = tmp_path_factory.mktemp("kill")
    train, validation = root / "train.jsonl", root / "validation.jsonl"
    write_items(read_items(data_dir / "train.jsonl", limit=12), train)
    write_items(read_items(data_dir / "validation.jsonl", limit=3), validation)
    store = RunStore(root / "runs.db")
    cfg = TrainConfig(
        model="smollm2-135m",
        train=train,
        validation=validation,
        n_train=12,
        batch_size=2,
        max_steps=STEPS,
        save_every=2,
        keep_checkpoints=3,
        max_text_tokens=8,
        probe_every=0,
        lora_dropout=0.1,  # dropout draws random numbers: the RNG state must be restored too
        seed=7,
        threads=1,
        name="reference",
    )
    threads = torch.get_num_threads()
    try:
        result = start(cfg, store=store)
    finally:
        torch.set_num_threads(threads)
    steps, losses = store.series(result.run_id, "loss")
    assert steps == list(range(1, STEPS + 1))
    assert [s for s, _ in checkpoints(result.folder)] == [2, 4, 6]
    return store, result, dict(zip(steps, losses, strict=True))


def killed_copy(reference) -> tuple[RunStore, str, Path]:
    """A run killed during step 5: the reference folder up to checkpoint-4, its metrics up to step 4."""
    store, result, losses = reference
    ref = store.get(result.run_id)
    run = store.create(kind="local", name="killed", model=ref.model, config=ref.config, status="running")
    folder = Path(run.folder)
    for name in ("config.json", "appraiser.json"):
        shutil.copy2(result.folder / name, folder / name)
    for step in (2, 4):
        shutil.copytree(result.folder / f"checkpoint-{step}", folder / f"checkpoint-{step}")
    for step in range(1, 5):
        store.log_metrics(run.id, step, {"loss": losses[step]})
    store.set_status(run.id, "failed", error="killed")
    return store, run.id, folder


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt(path: Path) -> None:
    """Same size, different bytes in the middle (what a bad disk or a torn write leaves)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def test_the_checkpoint_files_are_the_ones_the_cases_damage(reference):
    _, result, _ = reference
    files = sorted(p.name for p in (result.folder / "checkpoint-4").iterdir())
    assert files == sorted((*CHECKPOINT_FILES, CHECKPOINT_MARKER))
    assert validate_checkpoint(result.folder / "checkpoint-4") is None
    marker = json.loads((result.folder / "checkpoint-4" / CHECKPOINT_MARKER).read_text())
    assert marker["step"] == 4 and sorted(marker["files"]) == sorted(CHECKPOINT_FILES)


@pytest.mark.parametrize("damage", [truncate, corrupt], ids=["truncated", "corrupted"])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_damaged_file_of_the_newest_checkpoint_falls_back_to_the_previous(reference, name, damage):
    _, _, folder = killed_copy(reference)
    damage(folder / "checkpoint-4" / name)
    choice = choose_checkpoint(folder)
    assert (choice.step, choice.path) == (2, folder / "checkpoint-2")
    [(path, reason)] = choice.damaged
    assert path == folder / "checkpoint-4"
    assert name in reason


@pytest.mark.parametrize("damage", ["deleted", "truncated", "other step"])
def test_a_missing_or_damaged_marker_falls_back_to_the_previous(reference, damage):
    _, _, folder = killed_copy(reference)
    marker = folder / "checkpoint-4" / CHECKPOINT_MARKER
    if damage == "deleted":
        marker.unlink()  # killed after the Trainer's save, before the marker
    elif damage == "truncated":
        truncate(marker)
    else:
        marker.write_text(json.dumps({**json.loads(marker.read_text()), "step": 6}))
    choice = choose_checkpoint(folder)
    assert choice.step == 2
    assert [p.name for p, _ in choice.damaged] == ["checkpoint-4"]
    assert CHECKPOINT_MARKER in choice.damaged[0][1]
    assert [s for s, _ in checkpoints(folder)] == ([2] if damage == "deleted" else [2, 4])


def test_a_file_missing_from_the_newest_checkpoint_falls_back(reference):
    _, _, folder = killed_copy(reference)
    (folder / "checkpoint-4" / "optimizer.pt").unlink()
    choice = choose_checkpoint(folder)
    assert choice.step == 2 and "optimizer.pt is missing" in choice.damaged[0][1]


def test_every_checkpoint_damaged_restarts_from_step_0(reference):
    _, _, folder = killed_copy(reference)
    truncate(folder / "checkpoint-4" / "trainer_state.json")
    (folder / "checkpoint-2" / CHECKPOINT_MARKER).unlink()
    choice = choose_checkpoint(folder)
    assert choice.path is None and [p.name for p, _ in choice.damaged] == ["checkpoint-4", "checkpoint-2"]


def _resume_and_check(reference, store: RunStore, run_id: str, from_step: int) -> None:
    import torch

    from appraiser.training import resume

    _, _, ref_losses = reference
    threads = torch.get_num_threads()
    try:
        result = resume(run_id, store=store)
    finally:
        torch.set_num_threads(threads)
    assert result.steps == STEPS
    messages = [e.message for e in store.events(run_id)]
    assert any(m.startswith(f"Resuming from checkpoint-{from_step} (step {from_step})") for m in messages)
    after = messages[[i for i, m in enumerate(messages) if m.startswith("Resuming")][-1] :]
    assert [m for m in after if m.startswith("Step ")][0].startswith(f"Step {from_step + 1}/{STEPS}:")
    steps, losses = store.series(run_id, "loss")
    assert steps == list(range(1, STEPS + 1))
    for step, loss in zip(steps, losses, strict=True):
        assert loss == pytest.approx(ref_losses[step], abs=1e-4), f"loss differs at step {step}"
    folder = Path(store.get(run_id).folder)
    assert [s for s, _ in checkpoints(folder)] == [2, 4, 6]  # checkpoint-4 rewritten, complete again
    assert all(validate_checkpoint(p) is None for _, p in checkpoints(folder))


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "trainer_state.json"])
def test_resume_skips_a_damaged_newest_checkpoint_with_the_same_losses(reference, name):
    store, run_id, folder = killed_copy(reference)
    truncate(folder / "checkpoint-4" / name)
    _resume_and_check(reference, store, run_id, from_step=2)
    warnings = [e for e in store.events(run_id) if e.message.startswith("Skipping damaged checkpoint-4")]
    assert len(warnings) == 1 and warnings[0].level == "warning" and name in warnings[0].message


def test_resume_ignores_half_written_folders_beside_a_good_checkpoint(reference):
    """Killed while writing checkpoint-6 and while swapping in a new final/: both are left half-done."""
    store, run_id, folder = killed_copy(reference)
    half = folder / "checkpoint-6"
    half.mkdir()
    shutil.copy2(folder / "checkpoint-4" / "adapter_model.safetensors", half / "adapter_model.safetensors")
    truncate(half / "adapter_model.safetensors")
    tmp = folder / ".final.tmp-deadbeef"
    tmp.mkdir()
    (tmp / "adapter_config.json").write_text("{")
    _resume_and_check(reference, store, run_id, from_step=4)
    assert not tmp.exists()
    assert any(e.message.startswith("Skipping damaged checkpoint-6") for e in store.events(run_id))


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"lora_r": "many"}', ""])
def test_a_damaged_run_config_is_a_data_error_naming_the_file(reference, content):
    from appraiser.training import resume

    store, run_id, folder = killed_copy(reference)
    (folder / "config.json").write_text(content)
    with pytest.raises(DataError, match=r"config\.json: ") as e:
        resume(run_id, store=store)
    assert str(folder / "config.json") in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ best/, final/


class _FailingModel:
    """Stands in for a PEFT model whose save dies part-way (a full disk, a kill)."""

    def save_pretrained(self, folder: str) -> None:
        Path(folder).mkdir(parents=True)
        (Path(folder) / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")


def test_a_failed_save_of_best_leaves_the_old_best_loadable(reference, tmp_path: Path):
    from safetensors.torch import load_file

    from appraiser.models import find_adapter, finetune_info

    _, result, _ = reference
    run = tmp_path / "run"
    shutil.copytree(result.folder / "final", run / "best")  # a real adapter as the current best
    before = (run / "best" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(OSError, match="No space left"):
        save_adapter(_FailingModel(), run / "best", {"base_model": "smollm2-135m", "step": 99})
    assert (run / "best" / "adapter_model.safetensors").read_bytes() == before
    assert find_adapter(run) == run / "best"
    assert finetune_info(run / "best")["step"] == STEPS
    assert load_file(str(run / "best" / "adapter_model.safetensors"))
    assert sorted(p.name for p in run.iterdir()) == ["best"]  # no temporary left behind


def test_a_kill_between_the_swap_renames_loses_no_best(reference, tmp_path: Path):
    from appraiser.models import find_adapter

    _, result, _ = reference
    run = tmp_path / "run"
    shutil.copytree(result.folder / "final", run / "best")
    # The instant between `best -> .best.old` and `.best.tmp-* -> best`:
    (run / "best").rename(run / ".best.old")
    (run / ".best.tmp-0001").mkdir()
    assert find_adapter(run) == run / ".best.old"  # a reader still finds the previous best
    recover_folder(run / "best")  # what the next writer, or resume, does first
    assert sorted(p.name for p in run.iterdir()) == ["best"]
    assert find_adapter(run) == run / "best"
    # Killed after the swap, before the old copy was deleted: the new one stays.
    shutil.copytree(run / "best", run / ".best.old")
    (run / "best" / "metrics.json").write_text('{"step": 7}')
    recover_folder(run / "best")
    assert sorted(p.name for p in run.iterdir()) == ["best"]
    assert json.loads((run / "best" / "metrics.json").read_text()) == {"step": 7}


def test_replace_folder_swaps_in_the_new_version(tmp_path: Path):
    target = tmp_path / "best"
    replace_folder(target, lambda tmp: (tmp.mkdir(), (tmp / "v").write_text("1")))
    replace_folder(target, lambda tmp: (tmp.mkdir(), (tmp / "v").write_text("2")))
    assert (target / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_pricer_save_is_atomic(data_dir: Path, tmp_path: Path):
    from appraiser.pricers import registry
    from appraiser.pricers.base import Pricer

    items = read_items(data_dir / "train.jsonl", limit=50)
    pricer = registry.create("constant-median").fit(items)
    path = tmp_path / "median.pkl"
    pricer.save(path)
    good = Pricer.load(path).predict(items[:3])
    pricer.unpicklable = lambda: None  # pickling now fails part-way through the object
    with pytest.raises(Exception, match="pickle|lambda"):
        pricer.save(path)
    assert Pricer.load(path).predict(items[:3]) == good  # the previous file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["median.pkl"]
    truncate(path)
    with pytest.raises(DataError, match=r"median\.pkl: damaged or not a saved pricer"):
        Pricer.load(path)


def test_a_run_killed_after_its_last_checkpoint_resumes_without_training_past_the_end(reference):
    """Killed while writing final/ after the checkpoint of its last step (here a run of 4 steps, which ends
    mid-epoch): the resume trains no step past max_steps, where the stock loop would train one more on every
    resume, and writes final/."""
    import torch

    from appraiser.training import resume

    store, run_id, folder = killed_copy(reference)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_steps": 4}))
    threads = torch.get_num_threads()
    try:
        again = resume(run_id, store=store)
    finally:
        torch.set_num_threads(threads)
    assert again.steps == 4 and store.get(run_id).step == 4
    assert not [e for e in store.events(run_id) if e.message.startswith("Step 5/")]
    assert [s for s, _ in checkpoints(folder)] == [2, 4] and (folder / "final" / "adapter_config.json").exists()


def test_checkpoints_are_rotated_only_after_the_new_one_is_marked(tmp_path: Path):
    """keep=1: the Trainer's own rotation deleted the old checkpoint before the new one was marked, so a kill
    in between left none. CheckpointMarker rotates (this) after marking: the newest complete ones stay, a folder
    still being written (newer) is never touched, and older unmarked leftovers go."""
    from appraiser.training.checkpoints import mark_checkpoint, rotate_checkpoints

    for step in (1, 2, 3, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"x" * step)
    for step in (2, 3):
        mark_checkpoint(tmp_path / f"checkpoint-{step}", step)
    rotate_checkpoints(tmp_path, keep=1)  # 1: unmarked and older; 4: being written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-4"]
    assert [s for s, _ in checkpoints(tmp_path)] == [3]
