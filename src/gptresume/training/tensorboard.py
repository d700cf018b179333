"""TensorBoard through Trainer's own integration, written to RUN_DIR/tensorboard and continuous across resumes.

`train.report_to: tensorboard` makes Trainer add `TensorBoardCallback`, which (transformers 5.24) writes to
TENSORBOARD_LOGGING_DIR or OUTPUT_DIR/runs/<time>_<host> -- a new directory per process, so a resumed run is
a separate TensorBoard run, and the steps the interrupted process logged after its last checkpoint stay
beside the ones the resumed process logs again. (TrainingArguments has no `logging_dir` in transformers 5.)
`ResumableTensorBoardCallback` replaces it: every process writes to RUN_DIR/tensorboard, and a resumed process
opens its SummaryWriter with `purge_step` = resume step + 1, so TensorBoard discards the interrupted process's
events from that step on and one curve remains.

Private behaviour (listed in compat.py under this module): the override of `_init_summary_writer`, and the
attributes TensorBoardCallback's `__init__` and `on_train_begin` set and read.
"""

from __future__ import annotations

from pathlib import Path

from transformers.integrations import TensorBoardCallback

from gptresume.rundir import TENSORBOARD_DIR


class ResumableTensorBoardCallback(TensorBoardCallback):
    """Trainer's TensorBoardCallback, with a fixed log directory and purge_step on resume."""

    def __init__(self, logging_dir: Path):
        super().__init__()
        if self.logging_dir is None:  # TENSORBOARD_LOGGING_DIR, when set, still wins
            self.logging_dir = str(logging_dir)
        self.purge_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        # Trainer has restored the checkpoint's state here: global_step is the step training resumes from.
        self.purge_step = state.global_step + 1 if state.global_step > 0 else None
        return super().on_train_begin(args, state, control, **kwargs)

    def _init_summary_writer(self, args):  # checked with transformers 5.24 (compat.py)
        if self._SummaryWriter is not None:
            self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=self.purge_step)


def use_run_tensorboard(trainer, run_dir: Path) -> bool:
    """Swap Trainer's TensorBoardCallback (present when report_to includes tensorboard) for the resumable one."""
    existing = [cb for cb in trainer.callback_handler.callbacks if type(cb) is TensorBoardCallback]
    if not existing:
        return False
    for cb in existing:
        trainer.remove_callback(cb)
    trainer.add_callback(ResumableTensorBoardCallback(Path(run_dir) / TENSORBOARD_DIR))
    return True
