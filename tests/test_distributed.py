"""`appraiser train` on two processes (accelerate launch, DDP over gloo on CPU) trains what one process trains.

Two processes at per-device batch 2 must give the loss curve of one process at batch 4: the same examples in
the same global batches (the sampler draws global batches, each process trains its slice), the loss scaled so
that DDP's gradient average is the global batch's mean, and one run in the store, written once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from appraiser.runs.store import RunStore
from appraiser.training.checkpoints import CHECKPOINT_MARKER, validate_checkpoint
from appraiser.training.dataset import LengthGroupedSampler
from appraiser.training.distributed import FollowerStore, rank_store
from appraiser.training.loss import PriceTrainer

STEPS = 3
OPTIONS = dict(
    n_train=12,  # 3 global batches of 4: one epoch, no short last batch
    max_steps=STEPS,
    max_text_tokens=8,
    probe_every=0,
    lora_dropout=0.0,  # dropout draws per process: the curves can only match without it
    head_weight=0.5,  # the regression head trains through the DDP wrapper too (its Huber mean over the global batch)
    seed=5,
    save_every=100,  # the Trainer still saves at the last step: checkpoint-3, with one RNG state per process
    threads=1,
)


def _sampler(lengths: list[int], per_device: int, processes: int) -> LengthGroupedSampler:
    """The sampler `PriceTrainer` gives the Trainer on `processes` processes (only these attributes are read)."""
    args = SimpleNamespace(per_device_train_batch_size=per_device, world_size=processes, seed=11)
    trainer = SimpleNamespace(args=args, group_by_length=True, train_dataset=SimpleNamespace(lengths=lengths))
    return PriceTrainer._get_train_sampler(trainer)  # type: ignore[arg-type]


@pytest.mark.parametrize("processes", [2, 3])
def test_each_process_trains_its_slice_of_the_one_process_global_batches(processes):
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    lengths = [(i * 37) % 101 + 10 for i in range(2 * processes * 10)]
    per_device = 2
    one = _sampler(lengths, per_device * processes, 1).batches()  # one process, the global batch size
    shards = []
    for r in range(processes):  # what accelerate's prepared DataLoader gives process r
        sampler = _sampler(lengths, per_device, processes)
        shards.append(list(BatchSamplerShard(BatchSampler(sampler, per_device, False), processes, r)))
    assert all(len(s) == len(one) for s in shards)
    for k, batch in enumerate(one):
        assert [i for r in range(processes) for i in shards[r][k]] == batch, f"global batch {k} differs"
    # The order depends on seed and epoch only: the same on every process, different next epoch.
    first = list(_sampler(lengths, per_device, processes))
    later = _sampler(lengths, per_device, processes)
    later.set_epoch(1)
    assert list(later) != first and sorted(later) == sorted(first)


def test_a_follower_process_reads_the_store_but_writes_nothing():
    store = RunStore()
    run = store.create(name="shared")
    store.log_metrics(run.id, 1, {"loss": 2.0})
    follower = FollowerStore(store)
    assert follower.get(run.id).id == run.id and follower.series(run.id, "loss") == ([1], [2.0])
    follower.log_metrics(run.id, 2, {"loss": 1.0})
    follower.add_event(run.id, "twice")
    follower.set_status(run.id, "running")
    assert follower.discard_after(run.id, 0) == 0 and follower.claim(run.id, "notified") is False
    assert store.series(run.id, "loss") == ([1], [2.0]) and store.events(run.id) == []
    assert store.get(run.id).status == "queued" and store.claim(run.id, "notified")
    with pytest.raises(RuntimeError, match="only rank 0 writes"):
        follower.create(name="second")
    assert rank_store(store) is store  # one process (no RANK/WORLD_SIZE): the store itself


def _command(
    processes: int,
    batch_size: int,
    name: str | None,
    train: Path,
    validation: Path,
    options: dict,
    resume: str | None = None,
) -> list[str]:
    """`accelerate launch --multi_gpu --num_processes N -m appraiser.cli train ...` (on a CPU machine --multi_gpu
    only picks torchrun's launcher; `--cpu --num_processes N` would start one process)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    if resume is not None:
        return [*launch, "-m", "appraiser.cli", "train", "--resume", resume]
    args = ["train", "--train", str(train), "--validation", str(validation), "--batch-size", str(batch_size)]
    args += ["--name", str(name)]
    for k, v in options.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return [*launch, "-m", "appraiser.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}


def _launch(
    processes, batch_size, name, train, validation, options=OPTIONS, resume=None
) -> subprocess.CompletedProcess:
    command = _command(processes, batch_size, name, train, validation, options, resume)
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)


def _start(processes, batch_size, name, train, validation, options) -> subprocess.Popen:
    command = _command(processes, batch_size, name, train, validation, options)
    return subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_two_processes_give_the_loss_curve_of_one_at_the_same_global_batch(small_split):
    from appraiser.training import TrainConfig, start

    train, validation = small_split(12, 2)
    store = RunStore()
    cfg = TrainConfig(model="smollm2-135m", train=train, validation=validation, batch_size=4, name="one", **OPTIONS)
    one = start(cfg)
    done = _launch(2, 2, "two", train, validation)  # 2 processes x 2 = a global batch of 4
    assert done.returncode == 0, done.stderr[-3000:]

    runs = {r.name: r for r in store.list()}
    assert sorted(runs) == ["one", "two"]  # one run for the two processes
    two = runs["two"]
    assert two.status == "succeeded" and two.step == STEPS and two.max_steps == STEPS
    for metric in ("loss", "grad_norm"):
        steps, want = store.series(one.run_id, metric)
        assert steps == list(range(1, STEPS + 1))
        got_steps, got = store.series(two.id, metric)
        assert got_steps == steps
        assert got == pytest.approx(want, rel=1e-3), f"{metric}: 2 processes {got}, 1 process {want}"
    messages = [e.message for e in store.events(two.id)]
    assert [m.split(":")[0] for m in messages if m.startswith("Step ")] == [f"Step {s}/{STEPS}" for s in steps]
    assert sum(m.startswith("Run created") for m in messages) == 1
    assert sum(m.startswith("Training finished") for m in messages) == 1

    checkpoint = two.folder / f"checkpoint-{STEPS}"
    assert sorted(p.name for p in checkpoint.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert (checkpoint / CHECKPOINT_MARKER).exists() and validate_checkpoint(checkpoint) is None
    assert (two.folder / "final" / "adapter_config.json").exists()


@pytest.mark.slow
def test_two_processes_killed_and_resumed_train_as_if_never_killed(small_split):
    """kill -9 of every process after checkpoint-2 of 6 (the epoch ends at step 3), then `--resume` on two
    processes: steps 3-6 repeat the uninterrupted two-process run's losses exactly (per-process RNG states,
    with dropout on; the data position; the optimizer). About 2.5 minutes on 2 cores."""
    import time

    import psutil

    train, validation = small_split(12, 2)
    opts = {**OPTIONS, "max_steps": 6, "save_every": 2, "keep_checkpoints": 3, "lora_dropout": 0.1}
    store = RunStore()
    ref = _launch(2, 2, "ref", train, validation, opts)
    assert ref.returncode == 0, ref.stderr[-3000:]
    victim = _start(2, 2, "victim", train, validation, opts)
    try:
        deadline = time.time() + 600
        while victim.poll() is None and time.time() < deadline:
            runs = [r for r in store.list() if r.name == "victim"]
            if runs and (runs[0].folder / "checkpoint-2" / CHECKPOINT_MARKER).exists():
                break
            time.sleep(0.02)
        assert victim.poll() is None, "the run ended before it could be killed"
    finally:
        launcher = psutil.Process(victim.pid)
        for proc in [*launcher.children(recursive=True), launcher]:  # torchrun's workers have their own sessions
            proc.kill()
        victim.wait(timeout=60)
    run = store.get("victim")
    assert run.status == "running" and run.step < 6
    done = _launch(2, 2, None, train, validation, opts, resume=run.id)
    assert done.returncode == 0, done.stderr[-3000:]
    run = store.get(run.id)
    assert run.status == "succeeded" and run.step == 6
    messages = [e.message for e in store.events(run.id)]
    assert any(m.startswith("Resuming from checkpoint-2 (step 2)") for m in messages)
    assert store.series(run.id, "loss") == store.series(store.get("ref").id, "loss")
