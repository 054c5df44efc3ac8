"""One fine-tuning job, trained in its own process: `python -m appraiser.server.jobworker ROOT JOB_ID PARENT_PID`.

A process of its own, so that training (all cores, a few hundred MB) never stalls the server's event loop,
a cancel can always end it, and a server killed with `kill -9` takes its worker with it (the kernel's
parent-death signal) instead of leaving two trainers on one run after a restart. The restarted server
starts a new worker, which resumes the run from its newest complete checkpoint.

The worker turns the job's chat examples into prompt/completion examples (loss on the final assistant
message only: `hosted.validate.to_prompt_completion`), trains them with `training.trainer.train_prepared`,
and records what OpenAI's API shows: checkpoints (copied to `RUN/snapshots/step-N/`, an event each),
the result CSV, the fine-tuned model's name and the job's end. Between steps it reads the job's control
file (`jobs/<id>.control`, written by the server): `cancel` stops at once, `pause` saves a checkpoint and
then stops.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from appraiser.runs.store import RunStore
from appraiser.server import jobs
from appraiser.server.store import ServerStore


class JobStopped(KeyboardInterrupt):
    """Raised between steps to end training: `reason` is cancel, pause or orphan. A KeyboardInterrupt, so
    the trainer records its run as cancelled (resumable), not failed."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def read_control(root: Path, job_id: str) -> str | None:
    try:
        return jobs.control_path(root, job_id).read_text().strip() or None
    except FileNotFoundError:
        return None


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when the server dies (kill -9 included)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent:  # the server died before the request took effect
        os._exit(1)


# ---------------------------------------------------------------- data


def chat_examples(path: Path, tokenizer: Any) -> tuple[list[Any], list[Any], list[str], list[Any]]:
    """(training-style examples, probe items, probe prompts, probe examples) of a chat JSONL file.

    Probe items are the examples whose answer holds a price ("Price is $123.00"): the probe continues
    prompt + the answer's text before the number, as the model is asked at inference.
    """
    from appraiser.hosted.validate import price_target, read_examples, to_prompt_completion
    from appraiser.items import MAX_SANE_PRICE, Item
    from appraiser.training.dataset import IGNORE_INDEX, Example

    eos = tokenizer.eos_token_id
    examples, items, prompts, probe_examples = [], [], [], []
    for line, ex in read_examples(path):
        prompt, completion = to_prompt_completion(ex, tokenizer)
        p_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        c_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
        full = p_ids + c_ids + [eos]
        target = price_target(completion)
        price = target[1] if target else float("nan")
        example = Example(
            f"line-{line}", full, [IGNORE_INDEX] * len(p_ids) + c_ids + [eos], len(p_ids), completion, price
        )
        examples.append(example)
        if target is not None and 0 < target[1] <= MAX_SANE_PRICE:  # a probe item is an Item: a price it takes
            user = next((m["content"] for m in reversed(ex["messages"]) if m.get("role") == "user"), "") or "-"
            items.append(Item(id=f"line-{line}", text=user, price=target[1]))
            prompts.append(prompt + target[0])
            probe_examples.append(example)
    return examples, items, prompts, probe_examples


def _prepared(store: ServerStore, job: dict[str, Any], cfg: Any, tokenizer: Any) -> Any:
    from appraiser.training.dataset import AuditReport
    from appraiser.training.trainer import PreparedData

    train_path = store.file_path(job["training_file"])
    examples, _, _, _ = chat_examples(train_path, tokenizer)
    probe_items, prompts, probe_examples = [], [], []
    if job.get("validation_file"):
        _, probe_items, prompts, probe_examples = chat_examples(store.file_path(job["validation_file"]), tokenizer)
    report = AuditReport(
        n=len(examples),
        prompt_tokens=[ex.prompt_len for ex in examples],
        completion_tokens=[len(ex) - ex.prompt_len for ex in examples],
    )
    return PreparedData(
        train_items=[],
        examples=examples,
        probe_items=probe_items,
        audit=report,
        prompt=cfg.prompt_config(),
        fingerprint=hashlib.sha256(train_path.read_bytes()).hexdigest()[:16],
        probe_prompts=prompts,
        probe_examples=probe_examples,
    )


# ---------------------------------------------------------------- checkpoints


def record_checkpoint(runs: RunStore, job: dict[str, Any], cfg: Any, step: int, source: Path) -> None:
    """Copy a complete Trainer checkpoint's adapter to `snapshots/step-N/` (a servable model that outlives
    checkpoint rotation) and record the checkpoint and its event, once."""
    from appraiser.models import FINETUNE_INFO
    from appraiser.training.checkpoints import describe_finetune, write_json_atomic

    dest = jobs.snapshot_dir(runs, job, step)
    if not (dest / "adapter_config.json").exists():
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
            if (source / name).exists():
                shutil.copy2(source / name, tmp / name)
        write_json_atomic(tmp / FINETUNE_INFO, {**describe_finetune(cfg, job["_run_id"]), "step": step})
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    row = jobs.step_metrics(runs, job["_run_id"]).get(step, {})
    model = jobs.checkpoint_model(job["_ft_name"], step)
    runs.claim(
        job["_run_id"], f"ftckpt:{step}", {"created_at": time.time(), "metrics": jobs.checkpoint_metrics(step, row)}
    )
    jobs.add_message(
        runs, job, f"ckpt:{step}", f"Checkpoint created at step {step} with Snapshot ID: {model}", data={"step": step}
    )


class JobControl(TrainerCallback):
    """Cancel / pause between steps (the server's control file), an orphan check, and checkpoint records."""

    def __init__(self, root: Path, store: ServerStore, runs: RunStore, job: dict[str, Any], cfg: Any, parent: int):
        self.root, self.store, self.runs, self.job, self.cfg, self.parent = root, store, runs, job, cfg, parent
        self.pausing = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if os.getppid() != self.parent:
            raise JobStopped("orphan")
        what = read_control(self.root, self.job["id"])
        if what == "cancel":
            raise JobStopped("cancel")
        if what == "pause" and not self.pausing:
            self.pausing = True
            control.should_save = True  # the Trainer saves this step, then on_save below stops

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        from appraiser.training.checkpoints import CHECKPOINT_PREFIX

        record_checkpoint(self.runs, self.job, self.cfg, step, Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{step}")
        if self.pausing:
            raise JobStopped("pause")


# ---------------------------------------------------------------- the job


def run_job(root: Path, job_id: str, parent: int) -> None:
    from appraiser.models import FINETUNE_INFO, load_tokenizer
    from appraiser.training.checkpoints import checkpoints, describe_finetune, write_json_atomic
    from appraiser.training.config import TrainConfig
    from appraiser.training.trainer import train_prepared

    store = ServerStore(root)
    runs = RunStore(root / "runs.db", root / "runs")
    job = store.get_job(None, job_id)
    if store.update_job(job_id, expect=("queued", "running"), status="running", _attempts=job["_attempts"] + 1) is None:
        return  # cancelled or paused before it started
    jobs.add_message(runs, job, "started", "Fine-tuning job started")
    cfg = TrainConfig.model_validate(job["_config"])
    run = runs.get(job["_run_id"])
    folder = Path(run.folder)  # type: ignore[arg-type]
    if not (folder / "config.json").exists():
        cfg.save(folder / "config.json")
        write_json_atomic(folder / FINETUNE_INFO, describe_finetune(cfg, run.id))
    for step, path in checkpoints(folder):  # a kill between the Trainer's save and our record of it
        record_checkpoint(runs, job, cfg, step, path)
    data = _prepared(store, job, cfg, load_tokenizer(cfg.model))
    resume = bool(checkpoints(folder)) or run.step > 0
    try:
        result = train_prepared(
            runs, run, cfg, data, resume=resume, callbacks=[JobControl(root, store, runs, job, cfg, parent)]
        )
    except JobStopped:
        return  # the server has already set cancelled / paused (an orphan leaves `running`: resumed later)
    except Exception as e:
        msg = f"The job failed due to an internal error ({type(e).__name__})."
        if store.update_job(
            job_id,
            expect=("running",),
            status="failed",
            finished_at=int(time.time()),
            error={"code": "server_error", "message": msg, "param": None},
        ):
            jobs.add_message(runs, job, "failed", msg, level="error")
        raise
    epochs = cfg.epochs
    trained = int(sum(len(ex) for ex in data.examples) * epochs)
    if cfg.max_steps:
        per_epoch = math.ceil(len(data.examples) / cfg.batch_size)
        trained = int(trained * min(1.0, result.steps / max(1, per_epoch * epochs)))
    owner = job["_owner"]
    csv_file = store.add_file(owner, "step_metrics.csv", "fine-tune-results", jobs.result_csv(runs, run.id))
    name = job["_ft_name"]
    if store.get_job(None, job_id)["status"] == "running":  # the events first: a client that sees succeeded sees them
        jobs.add_message(runs, job, "model", f"New fine-tuned model created: {name}")
        jobs.add_message(runs, job, "succeeded", "The job has successfully completed")
    done = store.update_job(
        job_id,
        expect=("running",),
        status="succeeded",
        fine_tuned_model=name,
        finished_at=int(time.time()),
        trained_tokens=trained,
        result_files=[csv_file["id"]],
        estimated_finish=None,
    )
    if done is None:  # cancelled in the last instant
        store.delete_file(owner, csv_file["id"])


def main(argv: list[str]) -> int:
    root, job_id, parent = Path(argv[0]), argv[1], int(argv[2])
    _die_with_parent(parent)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # the server stops: the job resumes on its restart
    from appraiser.cli import quiet_libraries

    quiet_libraries()
    try:
        run_job(root, job_id, parent)
    except Exception:  # already recorded on the job; the traceback goes to the job's log (no prompt text in it)
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
