"""TensorBoard through Trainer's own integration, written to RUN_DIR/tensorboard and continuous across resumes.

`train.report_to: tensorboard` makes Trainer add `TensorBoardCallback`, which (transformers 5.24) writes to
TENSORBOARD_LOGGING_DIR or OUTPUT_DIR/runs/<time>_<host> -- a new directory per process, so a resumed run is
a separate TensorBoard run, and the steps the interrupted process logged after its last checkpoint stay
beside the ones the resumed process logs again. (TrainingArguments has no `logging_dir` in transformers 5.)
`ResumableTensorBoardCallback` replaces it: every process writes to RUN_DIR/tensorboard, and a resumed process
opens its SummaryWriter with `purge_step` = resume step + 1, so TensorBoard discards the interrupted process's
events from that step on and one curve remains. (The class, which overrides a private method, is in trainer.py.)
"""

from __future__ import annotations

from pathlib import Path

from gptresume.rundir import TENSORBOARD_DIR
from gptresume.training.trainer import tensorboard_callback_class


def use_run_tensorboard(trainer, run_dir: Path) -> bool:
    """Swap Trainer's TensorBoardCallback (present when report_to includes tensorboard) for the resumable one."""
    from transformers.integrations import TensorBoardCallback

    existing = [cb for cb in trainer.callback_handler.callbacks if type(cb) is TensorBoardCallback]
    if not existing:
        return False
    for cb in existing:
        trainer.remove_callback(cb)
    trainer.add_callback(tensorboard_callback_class()(Path(run_dir) / TENSORBOARD_DIR))
    return True

