"""A run killed with `kill -9` resumes from its last checkpoint and trains exactly as if never killed.

Real processes, real model (SmolLM2), real data: `appraiser train` runs as a subprocess, is killed
the moment its step-4 checkpoint is complete, and `appraiser train --resume RUN` finishes it. Its
losses at steps 5-8 must equal an uninterrupted run's, which holds only if the adapter, optimizer,
scheduler, RNG (LoRA dropout) and the data order (length-grouped, crossing an epoch boundary at
step 6) are all restored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appraiser.runs.store import RunStore
from appraiser.training.checkpoints import CHECKPOINT_MARKER

CLI = [sys.executable, "-c", "from appraiser.cli import main; main()"]
STEPS = 8


@pytest.fixture()
def tiny_data(small_split) -> tuple[Path, Path]:
    return small_split(12, 3)


def _options(train: Path, validation: Path) -> dict:
    return dict(
        model="smollm2-135m",
        train=train,
        validation=validation,
        n_train=12,
        batch_size=2,  # 6 steps per epoch: step 7 starts epoch 2
        max_steps=STEPS,
        save_every=2,
        keep_checkpoints=3,
        max_text_tokens=8,
        probe_every=0,
        lora_dropout=0.1,  # dropout draws random numbers: resume must restore the RNG too
        seed=7,
        threads=1,
    )


def _cli_args(opts: dict) -> list[str]:
    args = ["train"]
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def _losses(store: RunStore, run_id: str) -> dict[int, float]:
    steps, values = store.series(run_id, "loss")
    return dict(zip(steps, values, strict=True))


def test_killed_run_resumes_from_checkpoint_with_identical_losses(tiny_data):
    from appraiser.training import TrainConfig, start

    train, validation = tiny_data
    opts = _options(train, validation)
    store = RunStore()

    reference = start(TrainConfig(**opts, name="reference"), store=store)
    assert reference.steps == STEPS
    ref_loss = _losses(store, reference.run_id)
    assert sorted(ref_loss) == list(range(1, STEPS + 1))

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        CLI + _cli_args({**opts, "name": "victim"}),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 300
        marker = None
        while time.time() < deadline and proc.poll() is None:
            runs = [r for r in store.list() if r.name == "victim"]
            if runs and runs[0].folder is not None:
                marker = runs[0].folder / "checkpoint-4" / CHECKPOINT_MARKER  # written last
                if marker.exists():
                    break
            time.sleep(0.02)
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        assert marker is not None and marker.exists(), "no checkpoint-4 within the time limit"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    victim = store.get("victim")
    assert victim.status == "running"  # a killed process never records its own end ...
    assert victim.display_status == "killed"  # ... but readers can tell
    assert victim.step < STEPS
    complete = [p for p in victim.folder.glob("checkpoint-*") if (p / CHECKPOINT_MARKER).exists()]
    newest = max(int(p.name.split("-")[1]) for p in complete)
    assert newest == 4

    done = subprocess.run(CLI + ["train", "--resume", victim.id], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    resumed = store.get(victim.id)
    assert resumed.status == "succeeded"
    assert resumed.step == STEPS
    messages = [e.message for e in store.events(victim.id)]
    assert any(m.startswith("Resuming from checkpoint-4 (step 4)") for m in messages)
    assert not any(m.startswith("Resuming") and "step 0" in m for m in messages)
    # The resumed process trained steps 5..8 only (one "Step 5/8" line after the resume line).
    after = messages[[i for i, m in enumerate(messages) if m.startswith("Resuming")][0] :]
    assert [m for m in after if m.startswith("Step ")][0].startswith("Step 5/8:")

    got = _losses(store, victim.id)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(ref_loss[step], abs=1e-4), f"loss differs at step {step}"
    assert (victim.folder / "final" / "adapter_config.json").exists()
