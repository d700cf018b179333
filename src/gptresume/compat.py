"""Every private Transformers / accelerate / torch / datasets behaviour gptresume relies on, in one list.

Exact resume needs things no public API offers: overrides of private Trainer methods, writes into the restored
scheduler, file names Trainer builds inline, Trainer rules repeated to reproduce its numbers, warning texts
filtered as noise. Each is an entry of PRIVATE naming the gptresume module that depends on it. `problems()` checks
that each still exists with the expected parameters and source (tests/unit/test_compat.py runs it), so an upgrade
fails in a unit test that names the module to re-check, not as a difference in a 10-minute end-to-end test.
`python -m gptresume.compat` prints the table. huggingface_hub, tokenizers and safetensors are used through their
public API only. Importing this module imports no library: they are imported when a check is asked for.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
from dataclasses import dataclass

CHECKED = {  # package: (the version every entry was checked with, lowest safe version, first unchecked version)
    "transformers": ("5.24.0", "5.24", "5.25"),  # private Trainer methods change between minor releases
    "accelerate": ("1.15.0", "1.15", "1.16"),  # its sampler seeding is repeated exactly (resume/position.py)
    "torch": ("2.13.0", "2.6", "3"),  # LRScheduler attributes and RandomSampler's draw: unchanged through 2.x
    "datasets": ("5.2.0", "3.0", "6"),  # only datasets.table.InMemoryTable
}

# Known noise dropped by the log filters (gptresume/logs.py): substrings of a log record's message ...
NOISE = ("missing keys in the checkpoint model loaded: ['lm_head.weight']", "`loss_type=None` was set in the config",
         "We strongly recommend passing in an `attention_mask` since your input_ids may be padded")
# ... and a `warnings.filterwarnings` message regex (torch warns through `warnings`, not logging).
PIN_MEMORY_WARNING_REGEX = ".*'pin_memory' argument is set as true but no accelerator.*"
# What `gptresume.train` drops in a user's script while it runs (gptresume/logs.py `known_noise_filtered`): the
# logger that emits each text, and the text (a substring of the message). The bos/eos one only on a resume.
TRAINER_LOGGER, TRAINER_UTILS_LOGGER = "transformers.trainer", "transformers.trainer_utils"
SCRIPT_NOISE = {
    "missing_tied_head": (TRAINER_LOGGER, NOISE[0]),
    "cadence_mismatch": (TRAINER_UTILS_LOGGER, "Warning: The following arguments do not match the ones in the "
                                               "`trainer_state.json` within the checkpoint directory: "),
    "best_checkpoint_gone": (TRAINER_LOGGER, " recorded in the resumed state does not exist anymore. Ignoring it for "
                                             "this run."),
    "special_tokens_aligned": (TRAINER_UTILS_LOGGER, "The tokenizer has new PAD/BOS/EOS tokens that differ from the "
                                                     "model config and generation config."),
}


@dataclass(frozen=True)
class Private:
    """One private behaviour gptresume relies on."""

    target: str
    """Importable dotted name: a module, then attributes (`transformers.Trainer._get_train_sampler`)."""
    kind: str
    """override, call, attribute read/write, ordering, rule (repeated by gptresume), file name, warning text, option."""
    used_in: str
    """The gptresume module to re-check when the entry fails."""
    why: str
    params: tuple[str, ...] | None = None
    """Parameter names (inspect.signature): exactly these for an override, at least these otherwise."""
    source: tuple[str, ...] = ()
    """Fragments that must occur, in this order, in the target's source code."""
    value: object = None
    """A file name: the constant's value. A warning text: the text (or regex) gptresume filters out."""
    sha256: str | None = None
    """Start of the sha256 of the target's source, for code gptresume copies: any change must be re-checked."""


P = Private
TRAINER, FILES, RNG = "gptresume/training/trainer.py", "gptresume/checkpoint/files.py", "gptresume/resume/rng.py"
# The modules beside training/trainer.py that hold private Transformers behaviour (trainer.py's docstring names them)
SNAPSHOT, OVERRIDES = "gptresume/training/async_snapshot.py", "gptresume/training/resume_overrides.py"
TENSORBOARD, TRACKERS = "gptresume/training/tensorboard.py", "gptresume/training/trackers.py"
AGREEMENT = "gptresume/training/agreement.py"
POSITION, EVAL, LOGS = "gptresume/resume/position.py", "gptresume/tools/evaluate.py", "gptresume/logs.py"
PACKING, T = "gptresume/data/packing.py", "transformers.Trainer."
LOADABLE = "gptresume/checkpoint/loadable.py"

WARNINGS: tuple[Private, ...] = (  # value: the text filtered; target: where it is emitted
    P(T + "_issue_warnings_after_load", "warning text", LOGS, "GPT-2's lm_head is tied to the input embedding, "
      "never saved: the warning on resume is spurious", source=("missing keys in the checkpoint model loaded: ",),
      value=NOISE[0]),
    P("transformers.PreTrainedModel.loss_function", "warning text", LOGS, "loss_type=None is GPT-2's default",
      source=("`loss_type={loss_type}", "` was set in the config"), value=NOISE[1]),
    P("transformers.PreTrainedModel.warn_if_padding_and_no_attention_mask", "warning text", LOGS, "packed blocks "
      "are never padded (EOS, also GPT-2's pad id, separates documents)", source=(NOISE[2],), value=NOISE[2]),
    P("torch.utils.data.dataloader._BaseDataLoaderIter.__init__", "warning text", LOGS, "pin_memory: no effect on "
      "CPU", source=("'pin_memory' argument is set as true but no accelerator",), value=PIN_MEMORY_WARNING_REGEX),
    P("transformers.trainer_utils.compare_trainer_and_checkpoint_args", "warning text", LOGS, "gptresume compared "
      "the config with the checkpoint's itself and applied the cadence (ResumeOverrides): contradictory after it",
      source=(SCRIPT_NOISE["cadence_mismatch"][1], "logger.warning_once(warning_str)"),
      value=SCRIPT_NOISE["cadence_mismatch"][1]),
    P(T + "_init_training_state", "warning text", LOGS, "retention (keep_last) deleted the best checkpoint that "
      "trainer_state.json names; keep_best keeps it whenever load_best_model_at_end needs it",
      source=("The best checkpoint {self.state.best_model_checkpoint} recorded in the resumed state does not ",
              "exist anymore. Ignoring it for this run."),
      value=SCRIPT_NOISE["best_checkpoint_gone"][1]),
    P("transformers.trainer_utils.align_special_tokens", "warning text", LOGS, "on a resume the script's model config "
      "is aligned as on the run's first start, which said so; the checkpoint holds the aligned config",
      source=(SCRIPT_NOISE["special_tokens_aligned"][1],), value=SCRIPT_NOISE["special_tokens_aligned"][1]),
)

PRIVATE: tuple[Private, ...] = (
    P(T + "_init_training_state", "ordering", OVERRIDES, "a resume restores logging/eval/save steps from "
      "trainer_state.json after computing them from args: ResumeOverrides recomputes them at on_train_begin",
      source=("self.state.compute_steps(self.args, max_steps)", "TrainerState.load_from_json")),
    P("transformers.trainer_callback.TrainerState.compute_steps", "call", OVERRIDES, "a changed cadence applied to "
      "the restored state", params=("self", "args", "max_steps")),
    P(T + "_load_from_checkpoint", "call", TRAINER, "an already complete run loads its final checkpoint into the "
      "script's trainer without train()", params=("self", "resume_from_checkpoint", "model")),
    P(T + "_get_train_sampler", "override", TRAINER, "after a change of batch or data the sampler is a "
      "StreamSampler at the first untrained sample", params=("self", "train_dataset")),
    P(T + "_load_rng_state", "override", TRAINER, "another process count: Trainer's loader reads the mapped RNG "
      "file from a temporary directory, and skips a missing one", params=("self", "checkpoint"),
      source=("if checkpoint is None", "if not os.path.isfile(rng_file)")),
    P(T + "_run_epoch", "override", TRAINER, "a StreamSampler gets Trainer's epoch before the epoch runs: in a "
      "resumed epoch with several processes Trainer's set_epoch reaches skip_first_batches' SkipBatchSampler around "
      "accelerate's BatchSamplerShard, not the sampler",
      params=("self", "model", "epoch", "train_dataloader", "steps_in_epoch", "num_update_steps_per_epoch", "trial",
              "ignore_keys_for_eval", "start_time", "resume_from_checkpoint", "epochs_trained",
              "steps_trained_in_current_epoch"),
      source=("train_dataloader = skip_first_batches(", "train_dataloader.set_epoch(epoch)")),
    P(T + "get_train_dataloader", "override", TRAINER, "streaming with several processes: each rank's stream is "
      "its own part, so accelerate's IterableDatasetShard around it is made a pass-through", params=("self",)),
    P("accelerate.data_loader.IterableDatasetShard.__iter__", "attribute write", TRAINER, "num_processes=1, "
      "process_index=0 make it yield every element of the rank's own stream",
      source=("self.batch_size * self.num_processes", "range(self.process_index * process_batch_size")),
    P(T + "get_batch_samples", "override", TRAINER, "a streaming resume restores the RNG state after it, once the "
      "DataLoader iterator drew its seed on the first fetch (as Trainer's own skip path does)",
      params=("self", "epoch_iterator", "num_batches", "device")),
    P(T + "_run_epoch", "ordering", TRAINER, "with ignore_data_skip the RNG state is loaded before "
      "iter(train_dataloader); the streaming resume defers it to get_batch_samples",
      source=("elif steps_trained_in_current_epoch == 0:",)),
    P(T + "_get_grad_norm", "override", TRAINER, "run health reads each step's gradient norm (called once per "
      "optimizer step, after clipping, before the optimizer step)", params=("self", "model", "grad_norm"),
      source=("if grad_norm is None:",)),
    P(T + "_maybe_log_save_evaluate", "override", TRAINER, "a stop during an evaluation cuts it (StopSignal from "
      "on_prediction_step); the override then saves and fires on_save as this method's own tail does",
      params=("self", "tr_loss", "grad_norm", "model", "trial", "epoch", "ignore_keys_for_eval", "start_time",
              "learning_rate"),
      source=("metrics = self._evaluate(trial, ignore_keys_for_eval)", "if self.control.should_save:",
              "self._save_checkpoint(model, trial)", "self.control = self.callback_handler.on_save(")),
    P(T + "evaluation_loop", "ordering", TRAINER, "on_prediction_step runs on every process after each eval batch: "
      "where StopCallback cuts an evaluation", source=("self.control = self.callback_handler.on_prediction_step(",)),
    P(T + "_save_checkpoint", "override", TRAINER, "checkpoint.async_save replaces it (Trainer's own runs when the "
      "save must be synchronous)", params=("self", "model", "trial")),
    P(T + "_save_checkpoint", "rule", SNAPSHOT, "checkpoint.async_save copies this body: the snapshot on the "
      "training thread, the writing in the background", sha256="a9111e30faa99339"),
    *(P(T + name, "call", SNAPSHOT, "the async save's copy of _save_checkpoint calls it", params=params)
      for name, params in (("_save", ("self", "output_dir", "state_dict")), ("_get_output_dir", ("self", "trial")),
                           ("_save_scaler", ("self", "output_dir")), ("_save_rng_state", ("self", "output_dir")))),
    *(P("transformers.trainer." + name, "call", SNAPSHOT, "the async save's copy of _save_checkpoint uses it")
      for name in ("ExportableState", "SaveStrategy", "reissue_pt_warnings", "is_sagemaker_mp_enabled",
                   "is_torch_xla_available")),
    P(T + "create_accelerator_and_postprocess", "attribute read", SNAPSHOT, "is_deepspeed_enabled, is_fsdp_enabled: "
      "async saves refuse them; an inactive train.fsdp is warned of",
      source=("self.is_deepspeed_enabled =", "self.is_fsdp_enabled =")),
    P(T + "__init__", "attribute read", SNAPSHOT, "hp_search_backend: async saves refuse hyper-parameter search",
      source=("self.hp_search_backend = None",)),
    P(T + "__init__", "attribute read", SNAPSHOT, "is_distributed_loading_by_transformers: async saves refuse a model "
      "loaded sharded across ranks (its save gathers across ranks)",
      source=("self.is_distributed_loading_by_transformers =",)),
    P(T + "_prepare_for_training", "ordering", OVERRIDES, "optimizer and scheduler are restored before the callbacks "
      "get them: ResumeOverrides writes into the restored ones",
      source=("self._load_optimizer_and_scheduler(resume_from_checkpoint)", '("model", "optimizer", "lr_scheduler")')),
    P(T + "_inner_training_loop", "ordering", OVERRIDES, "on_train_begin runs after that restore and before the first "
      "resumed step: where changed values are written in",
      source=("self._prepare_for_training(", "callback_handler.on_train_begin(", "self._run_epoch(")),
    P("transformers.trainer_callback.DefaultFlowCallback.on_step_end", "ordering", AGREEMENT, "Trainer's first "
      "callback sets the step's should_log / should_evaluate / should_save before gptresume's: the agreement reads "
      "the health values exactly at the steps that log, evaluate or may save",
      source=("control.should_log = True", "control.should_evaluate = True", "control.should_save = True")),
    P("transformers.trainer_callback.DefaultFlowCallback.on_epoch_end", "ordering", AGREEMENT, "a save by epoch is "
      "decided at on_epoch_end: the agreement judges the health values there too", source=("control.should_save",)),
    P(T + "_run_epoch", "ordering", AGREEMENT, "on_step_end runs before _maybe_log_save_evaluate, whose log reads "
      "the loss (.item()) and whose save follows: the health read at a logging step waits on what Trainer's read "
      "would, and a save is judged before it is written",
      source=("self.callback_handler.on_step_end(", "self._maybe_log_save_evaluate(")),
    P(T + "_maybe_log_save_evaluate", "rule", AGREEMENT, "Trainer syncs on the loss only when should_log "
      "(`.item()`), then saves when should_save", source=("if self.control.should_log", ".item()",
                                                          "if self.control.should_save", "self._save_checkpoint(")),
    P(T + "get_decay_parameter_names", "call", OVERRIDES, "a changed weight_decay goes to the groups Trainer decays",
      params=("self", "model")),
    P("torch.optim.lr_scheduler.LRScheduler.get_last_lr", "attribute write", OVERRIDES, "ResumeOverrides writes "
      "_last_lr so the next logged learning rate is the new one", source=("return self._last_lr",)),
    P("torch.optim.lr_scheduler.LambdaLR.get_lr", "attribute write", OVERRIDES, "ResumeOverrides replaces lr_lambdas "
      "(a re-planned schedule) and base_lrs (a new learning_rate)", source=("zip(self.lr_lambdas, self.base_lrs",)),
    P("accelerate.scheduler.AcceleratedScheduler.__init__", "attribute read", OVERRIDES, "accelerate wraps Trainer's "
      "scheduler: the LambdaLR written into is `.scheduler`", source=("self.scheduler = scheduler",)),
    P("transformers.integrations.TensorBoardCallback._init_summary_writer", "override", TENSORBOARD, "the writer opens "
      "RUN_DIR/tensorboard with purge_step = resume step + 1: one curve across resumes", params=("self", "args")),
    P("transformers.integrations.TensorBoardCallback.__init__", "attribute write", TENSORBOARD, "the override sets "
      "logging_dir unless TENSORBOARD_LOGGING_DIR did, and opens _SummaryWriter into tb_writer",
      source=("self._SummaryWriter =", "self.tb_writer =", '"TENSORBOARD_LOGGING_DIR"')),
    P("transformers.integrations.TensorBoardCallback.on_train_begin", "ordering", TENSORBOARD, "the writer opens in "
      "on_train_begin, after the override has read the resume step",
      source=("if self.tb_writer is None", "self._init_summary_writer(args)")),
    P("transformers.integrations.WandbCallback.setup", "rule", TRACKERS, "ContinuedWandbCallback opens (or re-opens, "
      "resume='allow') the wandb run before setup; setup then uses that run instead of calling wandb.init",
      params=("self", "args", "state", "model"), source=("if self._wandb.run is None:", "self._wandb.init(")),
    P("transformers.integrations.WandbCallback.on_train_begin", "ordering", TRACKERS, "setup runs from "
      "on_train_begin, after Trainer restored the checkpoint's state", source=("self.setup(args, state, model",)),
    P("transformers.integrations.MLflowCallback.setup", "option", TRACKERS, "a resumed process re-attaches with "
      "MLFLOW_RUN_ID and logs no parameters again (MLFLOW_MAX_LOG_PARAMS=0; MLflow refuses a changed value)",
      params=("self", "args", "state", "model"),
      source=('os.getenv("MLFLOW_RUN_ID"', 'os.getenv("MLFLOW_MAX_LOG_PARAMS"',
              "combined_dict_items[:max_log_params]")),
    P("transformers.integrations.MLflowCallback.on_log", "rule", TRACKERS, "metric names are sanitised with this "
      "regex before logging: ContinuedMLflowCallback looks the held steps up under the same names (MLFLOW_UNSAFE)",
      source=('re.sub(r"[^0-9A-Za-z_\\-\\.\\ :/]", "_", k)', "step=state.global_step")),
    P("transformers.trainer_callback.ProgressCallback.__init__", "attribute read", "gptresume/training/callbacks.py",
      "the progress bar shows the loss in Trainer's tqdm bar, training_bar", source=("self.training_bar = None",)),
    *(P("transformers.trainer." + name, "file name", FILES, "checkpoint/ names Trainer's files without importing "
        "Trainer", value=value)
      for name, value in (("TRAINER_STATE_NAME", "trainer_state.json"), ("OPTIMIZER_NAME", "optimizer.pt"),
                          ("SCHEDULER_NAME", "scheduler.pt"), ("TRAINING_ARGS_NAME", "training_args.bin"),
                          ("PREFIX_CHECKPOINT_DIR", "checkpoint"))),
    P(T + "_save_rng_state", "file name", FILES, "the RNG files: rng_state.pth, or rng_state_{rank}.pth with "
      "several processes", source=('"rng_state.pth"', 'f"rng_state_{self.args.process_index}.pth"')),
    P(T + "_load_optimizer_and_scheduler", "rule", LOADABLE, "the resume's load check loads optimizer.pt and "
      "scheduler.pt as Trainer does, weights-only (a file it refuses makes the resume fall back)",
      source=("OPTIMIZER_NAME", "weights_only=True", "SCHEDULER_NAME", "weights_only=True")),
    P(T + "_load_rng_state", "rule", LOADABLE, "RNG files load weights-only under transformers' numpy allowlist",
      source=("with safe_globals():", "torch.load(rng_file, weights_only=True)")),
    P("transformers.trainer_pt_utils.safe_globals", "call", LOADABLE, "the same allowlist for the RNG files"),
    P(T + "_load_scaler", "rule", LOADABLE, "scaler.pt loads weights-only",
      source=("SCALER_NAME", "weights_only=True")),
    P("transformers.trainer.SCALER_NAME", "file name", LOADABLE, "checkpoint/loadable.py names it", value="scaler.pt"),
    P(T + "_load_from_checkpoint", "rule", LOADABLE, "weights load with load_state_dict(strict=False): a shape "
      "mismatch raises mid-resume, so the check compares the safetensors header with the model first",
      source=("load_state_dict(state_dict, False)",)),
    P("accelerate.utils.constants.OPTIMIZER_NAME", "file name", FILES, "FSDP's optimizer state: optimizer.bin or "
      "optimizer_N/ (SHARDED_OPTIMIZER_RE)", value="optimizer"),
    P("transformers.TrainerState", "attribute read", "gptresume/checkpoint/manifest.py", "trainer_state.json, read "
      "by status, verify and adopt; a resume restores the logging/eval/save cadence from it",
      params=("epoch", "global_step", "max_steps", "logging_steps", "eval_steps", "save_steps", "log_history",
              "stateful_callbacks")),
    P(T + "_load_rng_state", "file name", RNG, "rng_source maps ranks onto the file Trainer reads for each rank",
      source=('f"rng_state_{process_index}.pth"', '"rng_state.pth"')),
    P("accelerate.data_loader.SeedableRandomSampler.__iter__", "rule", POSITION, "StreamSampler draws Trainer's "
      "order: data epoch e is randperm(n) from a generator seeded with seed + e",
      source=("seed = self.epoch + self.initial_seed", "self.generator.manual_seed(seed)")),
    P("torch.utils.data.RandomSampler.__iter__", "rule", POSITION, "one randperm(n) per epoch",
      source=("torch.randperm(n, generator=generator)",)),
    P(T + "set_initial_training_values", "rule", POSITION, "Geometry.steps_per_epoch: ceil(batches / "
      "gradient_accumulation_steps), at least 1", source=("len_dataloader // args.gradient_accumulation_steps",
                                                          "len_dataloader % args.gradient_accumulation_steps > 0")),
    P("accelerate.data_loader.BatchSamplerShard.__init__", "rule", POSITION, "even_batches (on): the last set of "
      "batches is padded from the epoch's start", params=("even_batches",)),
    P("accelerate.data_loader.BatchSamplerShard._iter_with_no_split", "rule", "gptresume/ledger/packed.py",
      "the sample ledger attributes the global order by count: every process iterates the whole sampler and keeps "
      "batch idx when idx % processes == rank; even_batches fills the last round from the epoch's first batches "
      "(initial_data, in order); drop_last yields whole rounds only",
      source=("if not self.drop_last and idx < self.num_processes:", "initial_data += batch",
              "if idx % self.num_processes == self.process_index:", "batch += initial_data[cycle_index:end_index]")),
    P(T + "_run_epoch", "rule", "gptresume/ledger/packed.py", "a resumed epoch's skipped batches are drawn from the "
      "sampler from the epoch's start (skip_first_batches), and set_epoch reaches the sampler under "
      "BatchSamplerShard: the ledger numbers positions from the epoch's start",
      source=("skip_first_batches(train_dataloader, steps_trained_in_current_epoch)",
              "underlying_sampler.set_epoch(epoch)")),
    P(T + "__init__", "rule", EVAL, "_trainer_counts_shifted_labels repeats it: count labels[..., 1:] when loss_type "
      "maps to ForCausalLMLoss", source=("unwrapped_model.accepts_loss_kwargs", "self._loss_shifts_labels = "
                                         "LOSS_MAPPING.get(", "is ForCausalLMLoss", "is_encoder_decoder")),
    *(P("transformers.loss.loss_utils." + name, "call", EVAL, "imported to repeat that rule")
      for name in ("LOSS_MAPPING", "ForCausalLMLoss")),
    P("transformers.PreTrainedModel.__init__", "rule", EVAL, "GPT-2 has no loss_type (its class name holds no "
      "LOSS_MAPPING key), so Trainer counts every label",
      source=("loss_type = self.__class__.__name__", "self.loss_type = loss_type")),
    P(T + "_get_num_items_in_batch", "rule", EVAL, "num_items_in_batch: labels != -100, of labels[..., 1:] when the "
      "loss shifts labels", source=('batch["labels"][..., 1:]', "labels.ne(-100).sum()")),
    P(T + "_get_num_items_in_batch", "rule", "gptresume/data/collator.py", "PackedBlockCollator masks each block's "
      "first label so that the count is the predicted tokens", source=("labels.ne(-100).sum()",)),
    P(T + "evaluation_loop", "rule", EVAL, "eval_loss: the mean over examples of their batch's loss",
      source=("losses.repeat(batch_size)",)),
    P("transformers.utils.logging._configure_library_root_logger", "rule", LOGS, "with CI=true Transformers "
      "propagates to the root logger: each warning would print twice", source=('os.getenv("CI")', "= is_ci")),
    P("transformers.utils.logging.disable_propagation", "call", LOGS, "undoes that"),
    P("accelerate.state.AcceleratorState.__init__", "rule", "gptresume/training/distributed.py", "under torchrun "
      "without an accelerator, DDP on the CPU needs ACCELERATE_USE_CPU", source=('"ACCELERATE_USE_CPU"',)),
    P("torch.distributed.run", "option", "gptresume/launch.py", "--signals-to-handle: the agent must not end the "
      "workers on the signals gptresume forwards (optional: without it torch handles SIGTERM/SIGINT)",
      source=("--signals-to-handle",)),
    P("datasets.table.InMemoryTable", "call", PACKING, "packed blocks become a Dataset without a copy",
      params=("table",)),
    *WARNINGS,
)


def _resolve(target: str):
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj.fget if isinstance(obj, property) else obj
    raise ImportError(f"no module named {parts[0]!r}")


def check(entry: Private) -> tuple[str, str] | None:
    """None when `entry` holds, else (MISSING or CHANGED, a message naming the target and the module to re-check)."""
    def fail(status, detail):
        return status, f"{entry.target} ({entry.kind}): {detail}; re-check {entry.used_in}"

    try:
        obj = _resolve(entry.target)
    except (ImportError, AttributeError) as e:
        return fail("MISSING", f"missing ({e})")
    if entry.params is not None:
        names = tuple(inspect.signature(obj).parameters)
        exact = entry.kind == "override"  # Trainer calls an override with its own arguments
        if (names != entry.params) if exact else not set(entry.params) <= set(names):
            return fail("CHANGED", f"parameters ({', '.join(names)}), expected ({', '.join(entry.params)})")
    if entry.kind == "file name" and entry.value is not None and obj != entry.value:
        return fail("CHANGED", f"value {obj!r}, expected {entry.value!r}")
    if entry.source or entry.sha256:
        src, at = inspect.getsource(obj), 0
        for fragment in entry.source:
            at = src.find(fragment, at)
            if at < 0:
                return fail("CHANGED", f"its source no longer has {fragment!r} (after the fragments before it)")
            at += len(fragment)
        if entry.sha256 and not hashlib.sha256(src.encode()).hexdigest().startswith(entry.sha256):
            return fail("CHANGED", "its source changed: gptresume copies it (compare, update, then the sha256)")
    return None


def problems() -> list[str]:
    """One message per entry of PRIVATE that no longer holds in the installed libraries (imports them)."""
    return [found[1] for found in map(check, PRIVATE) if found]


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.match(r"\d+(?:\.\d+)*", version).group().split("."))


def check_versions(installed: dict[str, str] | None = None) -> list[str]:
    """A message per package of CHECKED whose version (installed, or as given) is outside its range."""
    if installed is None:
        from importlib.metadata import PackageNotFoundError, version

        installed = {}
        for name in CHECKED:
            try:
                installed[name] = version(name)
            except PackageNotFoundError:  # not installed: its import fails elsewhere, with its own message
                pass
    out = []
    for name, (checked, low, high) in CHECKED.items():
        have = installed.get(name)
        if have is not None and not _release(low) <= _release(have) < _release(high):
            out.append(f"{name} {have} is outside the range gptresume was checked against (>={low}, <{high}; "
                       f"checked with {checked}); exact resume relies on the private behaviour listed in "
                       "gptresume/compat.py: run `python -m gptresume.compat` to check it")
    return out


def warn_if_unchecked(logger) -> list[str]:
    """At start-up: one warning per library outside its checked range (reads package metadata, imports nothing)."""
    messages = check_versions()
    for message in messages:
        logger.warning(message)
    return messages


def main() -> int:
    print("".join(f"warning: {message}\n" for message in check_versions()), end="")
    width, failed = max(len(e.target) for e in PRIVATE), []
    for entry in PRIVATE:
        found = check(entry)
        print(f"{found[0] if found else 'ok':<8} {entry.target:<{width}}  {entry.kind:<15} {entry.used_in}")
        failed += [found[1]] if found else []
    print("\n" + "\n".join(failed) if failed else f"\nall {len(PRIVATE)} entries hold")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
