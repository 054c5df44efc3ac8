"""Local fine-tuning: LoRA / QLoRA prompt-completion SFT of a causal LM on price prompts.

`start(TrainConfig(...))` creates a run in the run store and trains it; `resume(run_id)` continues a
killed one from its last checkpoint. See `training.trainer` for the design, `training.dataset` for the
label audit.
"""

from appraiser.training.config import TrainConfig
from appraiser.training.dataset import AuditReport, LabelAuditError, audit, encode, token_view
from appraiser.training.trainer import TrainResult, completion_loss, prepare_data, resume, start

__all__ = [
    "AuditReport",
    "LabelAuditError",
    "TrainConfig",
    "TrainResult",
    "audit",
    "completion_loss",
    "encode",
    "prepare_data",
    "resume",
    "start",
    "token_view",
]
