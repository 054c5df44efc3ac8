"""Training on more than one process: `accelerate launch --multi_gpu --num_processes N ... appraiser train`.

Every process runs the whole of `appraiser train`: it reads and tokenizes the same data, builds the same
model (same seed, so the same LoRA initialisation) and trains its share of each batch, and the Trainer
(through accelerate: DDP, or DeepSpeed) averages the gradients. What must happen once per run, not once
per process, is done by the main process (rank 0) only:

- the run record: rank 0 creates it and tells the others its id (`create_run`), so there is one run;
- everything the run store is told (status, metrics, events, the best probe): the other processes get a
  store that reads but writes nothing (`rank_store`), so the store shows each step once, not N times;
- the files of the run folder besides the Trainer's own (`config.json`, `appraiser.json`, `best/`, `final/`,
  checkpoint markers: `checkpoints.save_adapter` and `callbacks.CheckpointMarker` check `is_main`).

Which examples a process trains on, and how the loss and its logged value are averaged, is
`training.loss` (`PriceTrainer`). With one process (a plain `appraiser train`) every function here is a
no-op and nothing initialises torch.distributed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from appraiser.runs.store import Run, RunStore

# What torchrun / `accelerate launch` set (RANK, WORLD_SIZE), or an MPI launcher (multi-CPU through mpirun).
_RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "")
        if value.strip().lstrip("-").isdigit():
            return int(value)
    return default


def world_size() -> int:
    """How many processes train this run (1 for a plain `appraiser train`)."""
    return max(_env_int(_SIZE_VARS, 1), 1)


def rank() -> int:
    """This process's index among them (0: the main process)."""
    return _env_int(_RANK_VARS, 0) if world_size() > 1 else 0


def is_main() -> bool:
    """Whether this process writes what the run writes once (always true with one process)."""
    return rank() == 0


def _state() -> Any:
    """accelerate's process state, initialised as `TrainingArguments` will initialise it (on CPU: gloo, else
    the accelerator's backend), so the run id can be shared before the Trainer exists. TrainingArguments
    later re-creates the state and keeps the process group that is already there."""
    from accelerate import PartialState

    from appraiser.training.model import device_and_dtype

    cpu = device_and_dtype()[0] == "cpu"
    kwargs: dict[str, Any] = {} if cpu else {"timeout": timedelta(seconds=1800)}  # the Trainer's ddp_timeout
    return PartialState(cpu=cpu, **kwargs)


def share(value: Any) -> Any:
    """The main process's `value`, on every process (a broadcast; with one process, `value` itself)."""
    if world_size() == 1:
        return value
    from accelerate.utils import broadcast_object_list

    _state()
    return broadcast_object_list([value], from_process=0)[0]


def barrier() -> None:
    """Wait until every process is here (nothing with one process)."""
    if world_size() > 1:
        _state().wait_for_everyone()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first, the others after it (e.g. choosing and cleaning up the
    checkpoint to resume from: the others then find what rank 0 left)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def create_run(store: RunStore, **fields: Any) -> Run:
    """`store.create(**fields)` on the main process; every process gets that one run."""
    if world_size() == 1:
        return store.create(**fields)
    run_id = store.create(**fields).id if is_main() else None
    return store.get(share(run_id))


class FollowerStore:
    """The run store as a process other than the main one uses it: reads go to the store, writes are dropped
    (rank 0 writes them once). Writes that answer something answer "nothing done"."""

    _DROPPED: dict[str, Any] = {
        "update": None,
        "set_status": None,
        "set_best": None,
        "add_event": None,
        "add_event_once": False,
        "log_metrics": None,
        "discard_after": 0,
        "set_state": None,
        "claim": False,
        "unclaim": None,
    }
    _REFUSED = frozenset({"create", "delete"})  # never meant to run on a follower: a bug, not a no-op

    def __init__(self, store: RunStore):
        self.store = store

    def __getattr__(self, name: str) -> Any:
        if name in self._REFUSED:
            raise RuntimeError(f"RunStore.{name} called on process {rank()} of {world_size()}: only rank 0 writes")
        if name in self._DROPPED:
            answer = self._DROPPED[name]
            return lambda *args, **kwargs: answer
        return getattr(self.store, name)


def rank_store(store: RunStore) -> RunStore:
    """`store` on the main process; on the others a `FollowerStore` around it."""
    if is_main() or isinstance(store, FollowerStore):
        return store
    return FollowerStore(store)  # type: ignore[return-value]
