"""Names users bring from other trainers (Lightning, litgpt, axolotl, nanoGPT, older Transformers) and what
gptresume calls them. An unknown key found here gets the right name, or the reason it has none, instead of
difflib's nearest spelling, which points the wrong way for these (`batch_size` is closest to
`auto_find_batch_size`, `max_epochs` to `max_steps`, `logging_dir` to `logging_first_step`).
Pure data, no imports.

Each entry is `foreign name -> what to write instead`: a field name in the same section (shown as "it is called
'X' here"), or a sentence starting with a punctuation mark (shown as it is).
tests/unit/config/test_config_first_hour.py checks that no foreign name is a real field and that every suggested name
exists.
"""

from __future__ import annotations

_FRACTION = ("; use 'warmup_steps': a value below 1 is a fraction of the run (warmup_steps: 0.1 warms up over the "
             "first 10% of the steps; transformers 5 folded warmup_ratio into warmup_steps)")
_PROCESSES = ("; the number of processes comes from the launcher (torchrun --nproc_per_node N or accelerate "
              "launch); on a machine with a GPU it is used unless train.use_cpu is true")

TRAIN = {
    # batch
    "batch_size": "per_device_train_batch_size",
    "train_batch_size": "per_device_train_batch_size",
    "micro_batch_size": "per_device_train_batch_size",
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "eval_batch_size": "per_device_eval_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
    "accumulate_grad_batches": "gradient_accumulation_steps",
    "grad_accum_steps": "gradient_accumulation_steps",
    "global_batch_size": ("; the global batch is per_device_train_batch_size x gradient_accumulation_steps x "
                          "processes: set those two"),
    # length of the run
    "epochs": "num_train_epochs",
    "max_epochs": "num_train_epochs",
    "num_epochs": "num_train_epochs",
    "max_iters": "max_steps",
    "max_iterations": "max_steps",
    "lr_decay_iters": "max_steps",
    # optimizer
    "lr": "learning_rate",
    "learning_rate_max": "learning_rate",
    "beta1": "adam_beta1",
    "beta2": "adam_beta2",
    "eps": "adam_epsilon",
    "grad_clip": "max_grad_norm",
    "gradient_clip_val": "max_grad_norm",
    "max_norm": "max_grad_norm",
    "clip_grad_norm": "max_grad_norm",
    "optimizer": "optim",
    "lr_scheduler": "lr_scheduler_type",
    "scheduler": "lr_scheduler_type",
    "min_lr": ("; a floor for the learning rate is lr_scheduler_type: cosine_with_min_lr with "
               "lr_scheduler_kwargs: {min_lr: ...}"),
    # warmup
    "warmup_ratio": _FRACTION,
    "warmup_iters": "warmup_steps",
    "lr_warmup_steps": "warmup_steps",
    "warmup_fraction": _FRACTION,
    # cadence
    "eval_interval": "eval_steps",
    "val_check_interval": "eval_steps",
    "evaluation_strategy": "eval_strategy",
    "log_interval": "logging_steps",
    "log_every_n_steps": "logging_steps",
    "save_interval": "save_steps",
    "checkpoint_interval": "save_steps",
    # where things go
    "out_dir": "output_dir",
    "default_root_dir": "output_dir",
    "overwrite_output_dir": ("; gptresume never writes over a run by accident: `gptresume train` resumes the "
                             "newest valid checkpoint in output_dir, and `--resume never --overwrite` deletes the "
                             "run's checkpoints, metrics and final model and starts again"),
    "logging_dir": ("; the run directory is the place for logs: RUN_DIR/metrics.jsonl and history.jsonl always, "
                    "RUN_DIR/tensorboard/ with report_to: tensorboard (one curve across resumes)"),
    "save_total_limit_best": "; use checkpoint.keep_best: true",
    "keep_last": "; it belongs to the checkpoint: section (checkpoint.keep_last)",
    "every_minutes": "; it belongs to the checkpoint: section (checkpoint.every_minutes)",
    # precision and devices
    "precision": "; use bf16: true or fp16: true (bf16: auto picks bf16 where the hardware has it)",
    "dtype": "; training precision is bf16: true or fp16: true",
    "no_cuda": "use_cpu",
    "device": "use_cpu" + _PROCESSES.replace("; the number", ": the number"),
    "devices": _PROCESSES,
    "accelerator": _PROCESSES,
    "compile": "torch_compile",
    # things that are another section's
    "block_size": "; it belongs to the data: section (data.block_size)",
    "sequence_len": "; it belongs to the data: section (data.block_size)",
    "max_seq_length": "; it belongs to the data: section (data.block_size)",
    "seq_len": "; it belongs to the data: section (data.block_size)",
    "val_set_size": "; it belongs to the data: section (data.validation_fraction)",
    "dropout": "; dropout is a model setting: model.from_scratch.resid_pdrop, embd_pdrop, attn_pdrop",
    "resume": "; resuming is the command's: gptresume train CONFIG --resume auto|never|must|PATH",
    "init_from": "; resuming is the command's: gptresume train CONFIG --resume auto|never|must|PATH",
}

DATA = {
    "seq_len": "block_size",
    "sequence_len": "block_size",
    "max_seq_length": "block_size",
    "context_length": "block_size",
    "val_set_size": "validation_fraction",
    "val_fraction": "validation_fraction",
    "validation_split": "validation_fraction",
    "path": "source",
    "paths": "source",
    "files": "source",
    "dataset": "source",
    "datasets": "source",
    "field": "text_column",
    "text_field": "text_column",
}

CHECKPOINT = {
    "save_total_limit": "keep_last",
    "keep_latest_k": "keep_last",
    "keep": "keep_last",
    "save_top_k": "; keep_last keeps the newest N, keep_best: true also keeps the lowest eval loss",
    "async": "async_save",
    "async_mode": "async_save",
    "interval_minutes": "every_minutes",
}

MODEL = {
    "model_name_or_path": "name_or_path",
    "base_model": "name_or_path",
    "pretrained": "name_or_path",
    "checkpoint_dir": "name_or_path",
    "config": "; a new model's architecture is from_scratch: {n_layer: ..., n_embd: ...}",
}

BY_SECTION = {"train": TRAIN, "data": DATA, "checkpoint": CHECKPOINT, "model": MODEL}


def foreign_name_hint(key: str, where: str, valid: list[str]) -> str | None:
    """The hint for `key` in section `where` if it is a known foreign name: "; it is called 'X' here" when X is
    valid there, else the entry's explanation. None when `key` is not a known foreign name."""
    entry = BY_SECTION.get(where, {}).get(str(key))
    if entry is None:
        return None
    if entry[:1].isalpha():
        name, _, rest = entry.partition(":")
        if name in valid or not valid:
            return f"; it is called {name!r} here" + (f":{rest}" if rest else "")
        return None  # a name this installation does not have: let the generic hint speak
    return entry
