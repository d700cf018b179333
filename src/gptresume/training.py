"""`gptresume train`: config -> data, model, tokenizer -> resume plan -> `transformers.Trainer` -> checkpoints.

Every input check happens before anything is written to RUN_DIR; the checkpoint being resumed always reaches
`trainer.train(resume_from_checkpoint=...)`, which restores weights, optimizer, scheduler, RNG and data position.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from transformers import Trainer

from gptresume import distributed
from gptresume.callbacks import CommitCallback, MetricsCallback, ProgressLines, progress_bar_class
from gptresume.checkpoint import atomic_write_text
from gptresume.config import Config, dump_config
from gptresume.data import PackedBlockCollator, load_texts, prepare_data, save_to_cache
from gptresume.errors import EXIT_OK, EXIT_STOPPED, UsageError
from gptresume.modeling import TOKENIZER_DIR, build_model, check_model_source, load_tokenizer
from gptresume.preemption import StopCallback, StopRequest, TimedSaveCallback
from gptresume.reporting import use_run_tensorboard
from gptresume.adopt import adopt
from gptresume.async_save import AsyncSaveMixin, BackgroundSaver, finishing_saves
from gptresume.overrides import ResumeOverrides
from gptresume.resume import ResumePlan, check_data, clear_run, data_stream, plan_resume, report_changes
from gptresume.sampling import DERIVED, StreamSampler, derived_seed, rng_file_name, rng_source
from gptresume.rundir import (  # noqa: F401 (re-exported: the names stay importable from here)
    CONFIG_NAME,
    FINAL_DIR,
    HISTORY_NAME,
    LOCK_NAME,
    METRICS_NAME,
    TENSORBOARD_DIR,
)

log = logging.getLogger(__name__)

RUN_FILES = (CONFIG_NAME, METRICS_NAME, HISTORY_NAME, FINAL_DIR, TOKENIZER_DIR, TENSORBOARD_DIR)
SAMPLE_PROMPTS = ("The", "A list", "def")


# ---------------------------------------------------------------- run directory files


@contextmanager
def run_lock(run_dir: Path):
    """One trainer per run directory: a second one would interleave checkpoints."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise UsageError(f"{run_dir} is in use by another gptresume process ({other}); wait for it, "
                             "or stop it (SIGTERM saves a checkpoint)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop metrics logged after the checkpoint being resumed: the resumed run logs those steps again."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [ln for ln in lines if ln.strip() and _step_of(ln) <= last_step]
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(ln + "\n" for ln in kept))


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62  # an unreadable (torn) line is dropped


def append_history(run_dir: Path, event: str, **fields) -> None:
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "pid": os.getpid(),
             "event": event, **fields}
    with open(run_dir / HISTORY_NAME, "a") as f:
        f.write(json.dumps(entry) + "\n")


# ---------------------------------------------------------------- the command


def run_training(config: Config, resume: str = "auto", overwrite: bool = False, stop_at_step: int | None = None,
                 allow_partial: bool = False, allow_change: list[str] | None = None, adopt_checkpoint: bool = False
                 ) -> int:
    run_dir = config.run_dir
    # With several processes, rank 0 decides and every rank follows (distributed.on_main): one plan, one verdict.
    plan = distributed.on_main(plan_resume, config, resume, overwrite, allow_partial, allow_change,
                               adopt_checkpoint, int(os.environ.get("WORLD_SIZE", "1")))
    if plan.is_complete(config):
        return distributed.on_main(_report_complete, config, plan)
    ckpt = plan.checkpoint.path if plan.checkpoint else None

    with ExitStack() as held:
        inputs = {}

        def accept():  # rank 0: every input check, then the run directory (locked until training ends)
            inputs.update(_load_inputs(config, plan))
            held.enter_context(run_lock(run_dir))
            _prepare_run_dir(config, plan, inputs["data"], inputs["tokenizer"])

        distributed.on_main(accept)
        if not inputs:  # the other ranks read what rank 0 checked and wrote: tokenizer/, data-cache/
            inputs.update(_load_inputs(config, plan, tokenizer_dir=ckpt or run_dir / TOKENIZER_DIR))
        tokenizer, data, model = inputs["tokenizer"], inputs["data"], inputs["model"]
        args = config.training_arguments(disable_tqdm=True, **distributed.training_defaults(config.train))
        trainer, stop_cb = _make_trainer(config, args, model, tokenizer, data, stop_at_step, plan)
        distributed.warn_if_not_sharded(trainer, config.train)
        stop = stop_cb.request
        main = distributed.is_main()
        if plan.checkpoint and main:
            print(f"Resuming from {ckpt} (step {plan.step}, epoch {plan.checkpoint.manifest.get('epoch'):.2f})",
                  flush=True)
        elif main:
            print(f"Starting a new run in {run_dir}", flush=True)
        stop.install()
        try:
            with finishing_saves(trainer):  # an asynchronous save in flight is committed before we go on
                trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        finally:
            stop.uninstall()
        step = trainer.state.global_step
        if stop_cb.stopped_at is not None:
            if main:
                append_history(run_dir, "stopped", step=step, reason=stop.reason)
                print(f"Stopped ({stop.reason}) at step {step}: checkpoint {run_dir / f'checkpoint-{step}'} is "
                      "committed. Re-run the same command to resume.", flush=True)
            return EXIT_STOPPED
        save_final(trainer, run_dir)  # every rank takes part (a sharded model is gathered); rank 0 writes
        if main:
            append_history(run_dir, "complete", step=step)
            print(f"Training complete at step {step}; model and tokenizer in {run_dir / FINAL_DIR}", flush=True)
            print_samples(distributed.whole_model(trainer, run_dir / FINAL_DIR), tokenizer)
    return EXIT_OK


def _load_inputs(config: Config, plan: ResumePlan, tokenizer_dir: Path | None = None) -> dict:
    """Tokenizer, packed data and model. Everything that can be wrong with the input fails here, before RUN_DIR
    is touched. `tokenizer_dir`: where rank 0 left the tokenizer (ranks other than 0 load, never train, it)."""
    ckpt = plan.checkpoint.path if plan.checkpoint else None
    texts = None
    if ckpt is None and tokenizer_dir is None:
        for name, field in ((config.model.name_or_path, "model.name_or_path"),
                            (config.model.tokenizer.name_or_path, "model.tokenizer.name_or_path")):
            if name:
                check_model_source(name, field)
        if config.model.tokenizer.train_vocab_size:
            texts = load_texts(config.data)
    tokenizer = load_tokenizer(config.model, texts, tokenizer_dir or ckpt)
    data = prepare_data(config.data, tokenizer, config.run_dir, texts)
    if tokenizer_dir is None:  # rank 0 judges the data; the others follow its verdict
        check_data(plan, data.fingerprint)
    model = build_model(config.model, tokenizer, config.train.get("seed", 42), ckpt)
    return {"tokenizer": tokenizer, "data": data, "model": model}


def _prepare_run_dir(config: Config, plan: ResumePlan, data, tokenizer) -> None:
    run_dir = config.run_dir
    report_changes(plan)
    if plan.overwrite:
        clear_run(run_dir)
    if plan.adopt:
        adopt(plan.checkpoint, config, data.fingerprint, int(os.environ.get("WORLD_SIZE", "1")))
    save_to_cache(data, config.data, tokenizer, run_dir)
    if plan.checkpoint is None:
        tokenizer.save_pretrained(run_dir / TOKENIZER_DIR)
    dump_config(config, run_dir / CONFIG_NAME)
    trim_metrics(run_dir / METRICS_NAME, plan.step)
    append_history(
        run_dir, "resume" if plan.checkpoint else "start",
        checkpoint=str(plan.checkpoint.path) if plan.checkpoint else None, step=plan.step,
        skipped={s.name: s.faults for s in plan.skipped},
        changes=[{"key": c.key, "old": c.old, "new": c.new, "class": c.kind, "note": c.note} for c in plan.changes],
        adopted=plan.adopt,
        config_fingerprint=config.fingerprint(), data_fingerprint=data.fingerprint, argv=sys.argv[1:])


def _make_trainer(config: Config, args, model, tokenizer, data, stop_at_step: int | None = None,
                  plan: ResumePlan | None = None):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    plan = plan or ResumePlan()

    tokens_per_step = (args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
                       * data.block_size)
    stop_cb = StopCallback(StopRequest(), stop_at_step)
    callbacks = [stop_cb, MetricsCallback(config.run_dir / METRICS_NAME, tokens_per_step)]
    if config.checkpoint.every_minutes:
        callbacks.append(TimedSaveCallback(config.checkpoint.every_minutes))
    stream = data_stream(plan, config, len(data.train), args.world_size)
    overrides = ResumeOverrides(plan.step, plan.optimizer_values(), plan.schedule_replanned(),
                                plan.schedule_plan(), decay_names=set())
    callbacks.append(overrides)
    commit = CommitCallback(config, data.fingerprint, len(data.train),
                            lambda: _resume_state(overrides, stream))
    callbacks.append(commit)  # last: sees every other save decision
    seed = args.data_seed if args.data_seed is not None else args.seed
    trainer = ResumableTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.validation,
                               data_collator=PackedBlockCollator(), processing_class=tokenizer, callbacks=callbacks,
                               stream=StreamSampler(len(data.train), seed, stream["offset"]) if stream else None)
    overrides.decay_names = set(trainer.get_decay_parameter_names(model))
    if config.checkpoint.async_save:
        trainer.async_saver, trainer.async_commit = BackgroundSaver(), commit
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    use_run_tensorboard(trainer, config.run_dir)  # report_to tensorboard: RUN_DIR/tensorboard, one curve across resumes
    trainer.add_callback(progress_bar_class() if sys.stderr.isatty() else ProgressLines(tokens_per_step))
    return trainer, stop_cb


def _resume_state(overrides: ResumeOverrides, stream: dict | None) -> dict | None:
    """What each later checkpoint must carry so the next resume continues the same schedule and data stream."""
    state = {}
    if overrides.plan is not None:
        state["schedule_plan"] = overrides.plan.to_dict()
    if stream is not None:
        state["stream"] = stream
    return state or None


class ResumableTrainer(AsyncSaveMixin, Trainer):
    """Trainer with two changes: after a resume that changed the global batch or the data, the training sampler
    is a `StreamSampler` positioned at the first untrained sample (sampling.py), otherwise Trainer's own; and
    with checkpoint.async_save, checkpoints are written in a background thread (async_save.py)."""

    def __init__(self, *args, stream: StreamSampler | None = None, **kwargs):
        self._stream = stream
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):  # checked with transformers 5.24
        return self._stream if self._stream is not None else super()._get_train_sampler(train_dataset)

    def _load_rng_state(self, checkpoint):  # checked with transformers 5.24 (Trainer skips a missing file)
        """Resuming on another number of processes: rank r takes the RNG file of the checkpoint's rank r, and a
        rank the checkpoint did not have gets generators seeded from (seed, step, rank), so every rank's random
        stream is defined and a repeated resume is reproducible. Same process count: Trainer's own code."""
        if checkpoint is None:
            return super()._load_rng_state(checkpoint)
        source = rng_source(Path(checkpoint), self.args.world_size, self.args.process_index)
        if source is None or source == Path(checkpoint) / rng_file_name(self.args.world_size, self.args.process_index):
            return super()._load_rng_state(checkpoint)
        if source.name == DERIVED:
            from transformers import set_seed

            seed = derived_seed(self.args.seed, self.state.global_step, self.args.process_index)
            log.warning("Rank %d has no RNG state in %s (written by fewer processes): seeded with %d",
                     self.args.process_index, checkpoint, seed)
            set_seed(seed)
            return None
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # Trainer's loader, pointed at the mapped file
            os.symlink(source, Path(tmp) / rng_file_name(self.args.world_size, self.args.process_index))
            log.info("Rank %d restores the RNG state of %s", self.args.process_index, source.name)
            return super()._load_rng_state(tmp)


def save_final(trainer, run_dir: Path) -> None:
    """RUN_DIR/final: save_pretrained model + tokenizer, written to a temp dir and renamed into place.

    Called on every rank (a sharded model is gathered collectively); only rank 0 writes and renames."""
    final = run_dir / FINAL_DIR
    tmp = run_dir / f".{FINAL_DIR}.tmp"  # the same name on every rank; the run lock keeps other runs out
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    distributed.barrier()
    trainer.save_model(str(tmp))
    distributed.barrier()
    if distributed.is_main():
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)


def print_samples(model, tokenizer, prompts=SAMPLE_PROMPTS, max_new_tokens: int = 30, seed: int = 0) -> None:
    import torch

    model.eval()
    torch.manual_seed(seed)
    print("Samples:")
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt").to(model.device)
        # Never past the model's context (n_positions): GPT-2 has no position embedding beyond it (IndexError).
        room = getattr(model.config, "n_positions", None)
        new_tokens = max_new_tokens if room is None else min(max_new_tokens, room - enc["input_ids"].shape[1])
        if new_tokens < 1:
            continue
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, top_k=40, max_new_tokens=new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0], skip_special_tokens=True).replace("\n", " ")
        print(f"  {text!r}")


def _report_complete(config: Config, plan: ResumePlan) -> int:
    run_dir = config.run_dir
    final = run_dir / FINAL_DIR
    if not final.is_dir():  # finished training but died before writing final/: write it from the checkpoint
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with run_lock(run_dir):
            model = AutoModelForCausalLM.from_pretrained(str(plan.checkpoint.path))
            tokenizer = AutoTokenizer.from_pretrained(str(plan.checkpoint.path))
            tmp = run_dir / f".{FINAL_DIR}.tmp-{os.getpid()}"
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, final)
    print(f"Run complete: {run_dir} reached step {plan.step} ({plan.checkpoint.path.name}); nothing to train. "
          f"The model is in {final}. To train longer: --set train.max_steps=N --allow-change max_steps (the "
          "schedule is re-planned); to start over: --resume never --overwrite.", flush=True)
    return EXIT_OK
