"""Local fine-tuning: LoRA / QLoRA prompt-completion SFT of a causal LM on price prompts.

`start(TrainConfig(...))` creates a run in the run store and trains it; `resume(run_id)` continues a
killed one from its newest intact checkpoint. See `training.trainer` for the design (it reads top-down:
data → model → train → save), `training.model` for the model, `training.loss` for the loss and the
`Trainer` subclass, `training.callbacks` for what watches a run, `training.checkpoints` for what is
saved and how it survives a kill, `training.dataset` for the label audit.
"""

from appraiser.training.config import TrainConfig
from appraiser.training.dataset import AuditReport, LabelAuditError, audit, encode, token_view
from appraiser.training.loss import completion_loss
from appraiser.training.trainer import TrainResult, prepare_data, resume, start

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
