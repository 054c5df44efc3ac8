"""What a run leaves on disk, written so that a kill at any instant loses at most the step in flight.

- **Adapters** (`best/`, `final/`): `save_adapter` writes the new folder under a temporary name, then
  swaps it in (old → `.NAME.old`, new → `NAME`, delete `.NAME.old`). At every instant a complete
  adapter exists under `NAME` or, between the two renames, under `.NAME.old`; `recover_folder` (run
  by every writer and by `resume`) puts a leftover `.NAME.old` back and drops half-written temporaries.
- **Checkpoints** (`checkpoint-N/`, written by the `Trainer` in place): complete only once
  `appraiser-checkpoint.json` is in them, written last (`callbacks.CheckpointMarker`, after the
  Trainer's own save) with each file's size and SHA-256. `resume` checks the newest checkpoint
  (marker, sizes and checksums, then adapter weights, optimizer, scheduler, RNG state and
  `trainer_state.json` actually loading) and falls back to the previous one if it is damaged.
- **Small JSON files** (`config.json`, `appraiser.json`, the marker): temp file + `os.replace`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appraiser import atomic
from appraiser.models import FINETUNE_INFO
from appraiser.training.config import TrainConfig

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
#: Written last into a checkpoint folder: {"step": N, "files": {name: {"size": bytes, "sha256": hex}}}.
CHECKPOINT_MARKER = "appraiser-checkpoint.json"
#: The files a resumable checkpoint must hold (one of each group), besides the marker. A run on N processes
#: writes one RNG state per process (`rng_state_0.pth` ... `rng_state_{N-1}.pth`) instead of `rng_state.pth`;
#: under DeepSpeed the optimizer is DeepSpeed's own checkpoint (`latest` names its `global_stepN/` folder).
REQUIRED_FILES: tuple[tuple[str, ...], ...] = (
    ("trainer_state.json",),
    ("adapter_config.json",),
    ("adapter_model.safetensors", "adapter_model.bin"),
    ("optimizer.pt", "latest"),
    ("scheduler.pt",),
    ("rng_state.pth", "rng_state_0.pth"),
)


# ------------------------------------------------------------------------------------------ files


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` via a temporary file and `os.replace`."""
    return atomic.write_text(path, json.dumps(obj, indent=2) + "\n")


def _old(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.parent.glob(f".{folder.name}.tmp-*"))


def recover_folder(folder: Path, *, drop_temporaries: bool = True) -> None:
    """Undo what a kill during `replace_folder` left behind.

    Killed between its two renames, `folder` is gone and `.folder.old` holds the previous complete
    version: it is renamed back. Killed after the swap, both exist and `.folder.old` is deleted. A
    half-written `.folder.tmp-*` is deleted (only writers call this with `drop_temporaries`).
    """
    folder = Path(folder)
    old = _old(folder)
    if old.is_dir():
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            log.warning("%s: restoring the previous version from %s (a save was interrupted)", folder, old.name)
            os.rename(old, folder)
    if drop_temporaries:
        for tmp in _temporaries(folder):
            shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(folder: Path, write: Callable[[Path], None]) -> Path:
    """Replace `folder` by what `write(tmp)` puts in a fresh temporary folder, never leaving it half-written.

    If `write` fails, the temporary folder is removed and `folder` stays as it was.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    old = _old(folder)
    try:
        write(tmp)
        if folder.exists():
            os.rename(folder, old)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not folder.exists() and old.is_dir():
            os.rename(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder


# ------------------------------------------------------------------------------------------ adapters


def describe_finetune(cfg: TrainConfig, run_id: str | None = None, step: int | None = None) -> dict[str, Any]:
    """The `appraiser.json` saved beside an adapter: what `models.finetune_info` reads back so that
    `models.load_finetuned` can use it (the base model, the prompt settings and whether it has a
    regression head, attached to the base before the adapter loads)."""
    info: dict[str, Any] = {"base_model": cfg.model, "prompt": dataclasses.asdict(cfg.prompt_config())}
    if cfg.has_head:
        info["head"] = True
        info["head_pooling"] = cfg.head_pooling
    if run_id is not None:
        info["run_id"] = run_id
    if step is not None:
        info["step"] = step
    return info


def save_adapter(model: Any, folder: Path, info: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Save the LoRA adapter + appraiser.json (+ metrics.json) into `folder`, replacing it atomically.

    On several processes only rank 0 writes (the adapters are the same on all; two writers would race on
    the swap); the others return the folder's path at once."""
    from appraiser.training import distributed

    if not distributed.is_main():
        return Path(folder)

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        write_json_atomic(tmp / FINETUNE_INFO, info)
        if extra:
            write_json_atomic(tmp / "metrics.json", extra)

    return replace_folder(Path(folder), write)


# ------------------------------------------------------------------------------------------ checkpoints


def checkpoint_step(path: Path) -> int | None:
    """N for a `checkpoint-N` folder, else None."""
    suffix = Path(path).name[len(CHECKPOINT_PREFIX) :]
    numbered = Path(path).name.startswith(CHECKPOINT_PREFIX) and suffix.isascii() and suffix.isdigit()
    return int(suffix) if numbered else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mark_checkpoint(path: Path, step: int) -> Path:
    """Write the completion marker into a checkpoint folder the Trainer has finished saving."""
    path = Path(path)
    files = {
        p.relative_to(path).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != CHECKPOINT_MARKER and not p.name.startswith(".")
    }
    return write_json_atomic(path / CHECKPOINT_MARKER, {"step": step, "files": files})


def _checkpoint_folders(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for p in Path(folder).glob(f"{CHECKPOINT_PREFIX}*"):
        step = checkpoint_step(p)
        if step is not None and p.is_dir():
            found.append((step, p))
    return sorted(found)


def _marked(folder: Path) -> bool:
    """Whether this run marks its checkpoints (runs from before the marker did not)."""
    return any((p / CHECKPOINT_MARKER).exists() for _, p in _checkpoint_folders(folder))


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in a run folder that were completely written, oldest first.

    Complete means the marker is there (written after every other file). A run from before markers
    existed has none; there `trainer_state.json`, the Trainer's last file, stands in for it. Whether
    the files are still intact is `validate_checkpoint`'s question.
    """
    marked = _marked(folder)
    name = CHECKPOINT_MARKER if marked else "trainer_state.json"
    return [(s, p) for s, p in _checkpoint_folders(folder) if (p / name).exists()]


def rotate_checkpoints(folder: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; delete older folders, complete or not. Called once the
    newest is marked: the Trainer's own `save_total_limit` deletes before the new checkpoint is complete, so
    with keep=1 a kill in between left none. A folder newer than the newest complete one (being written) stays."""
    complete = checkpoints(folder)
    if not complete:
        return
    kept = {p for _, p in complete[-keep:]}
    newest = complete[-1][0]
    for step, p in _checkpoint_folders(folder):
        if step < newest and p not in kept:
            shutil.rmtree(p, ignore_errors=True)


def validate_checkpoint(path: Path) -> str | None:
    """None when `path` is a checkpoint a resume can load, else why not (one line)."""
    path = Path(path)
    marker = path / CHECKPOINT_MARKER
    step = checkpoint_step(path)
    listed: dict[str, dict[str, Any]] | None = None
    if marker.exists():
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
            listed = dict(record["files"])
            if record.get("step") != step:
                return f"{CHECKPOINT_MARKER} is for step {record.get('step')}, not {step}"
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            return f"{CHECKPOINT_MARKER} is damaged ({type(e).__name__})"
    elif _marked(path.parent):
        return f"no {CHECKPOINT_MARKER} (the save was interrupted)"
    for group in REQUIRED_FILES:
        if not any((path / name).is_file() for name in group):
            return f"{group[0]} is missing"
    if listed is not None:
        for name, meta in listed.items():
            p = path / name
            if not p.is_file():
                return f"{name} is missing"
            if p.stat().st_size != meta.get("size"):
                return f"{name} has {p.stat().st_size} bytes, {meta.get('size')} were written"
            if _sha256(p) != meta.get("sha256"):
                return f"{name} is corrupt (its checksum differs from the one written)"
    return _load_problem(path, step)


def _load_problem(path: Path, step: int | None) -> str | None:
    """Load every file a resume loads; None if all load."""
    import torch

    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        if state.get("global_step") != step:
            return f"trainer_state.json is for step {state.get('global_step')}, not {step}"
        json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
        return f"a JSON file does not load ({type(e).__name__}: {e})"
    weights = path / "adapter_model.safetensors"
    try:
        if weights.exists():
            from safetensors.torch import load_file

            load_file(str(weights))
        else:
            torch.load(path / "adapter_model.bin", map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise their own types for a damaged file
        return f"the adapter weights do not load ({type(e).__name__})"
    optimizer = ["optimizer.pt"] if (path / "optimizer.pt").exists() else []  # absent: DeepSpeed's (see above)
    rng = sorted(p.name for p in path.glob("rng_state*.pth"))
    for name in (*optimizer, "scheduler.pt", *rng):
        try:
            torch.load(path / name, map_location="cpu", weights_only=False)
        except Exception as e:  # a damaged pickle/zip raises anything from EOFError to RuntimeError
            return f"{name} does not load ({type(e).__name__})"
    return None


@dataclasses.dataclass
class CheckpointChoice:
    """What `choose_checkpoint` found: the newest loadable checkpoint and the damaged newer ones."""

    step: int | None
    path: Path | None
    damaged: list[tuple[Path, str]]  # (folder, reason), newest first


def choose_checkpoint(folder: Path) -> CheckpointChoice:
    """The newest checkpoint of a run folder that validates, and every newer one that does not.

    Folders that were never completed (no marker) count as damaged too, so the caller can remove them.
    """
    complete = {p for _, p in checkpoints(folder)}
    damaged: list[tuple[Path, str]] = []
    for step, path in reversed(_checkpoint_folders(folder)):
        if path not in complete:
            reason = f"no {CHECKPOINT_MARKER} (the save was interrupted)" if _marked(folder) else "incomplete"
            damaged.append((path, reason))
            continue
        problem = validate_checkpoint(path)
        if problem is None:
            return CheckpointChoice(step, path, damaged)
        damaged.append((path, problem))
    return CheckpointChoice(None, None, damaged)
