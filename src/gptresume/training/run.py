"""`gptresume train CONFIG`: config -> data, model, tokenizer -> a plain `transformers.Trainer` -> the protected run
(training/session.py, the same code `gptresume.train(trainer)` runs) -> final/ model and samples.

The run lock is taken before anything heavy; every input check happens before anything is written to RUN_DIR.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
from pathlib import Path

from gptresume.compat import warn_if_unchecked
from gptresume.config import Config, dump_config
from gptresume.data import PackedBlockCollator, load_texts, prepare_data, save_to_cache
from gptresume.data.evaluation import evaluation_set
from gptresume.data.sources import remember_source_fingerprint
from gptresume.errors import EXIT_OK, EXIT_STOPPED, UsageError
from gptresume.hub import use_cache_if_offline
from gptresume.modeling import (
    build_model,
    check_model_source,
    context_problem,
    has_dropout,
    hub_names,
    load_tokenizer,
    looks_like_path,
)
from gptresume.resume.plan import ResumePlan, RunSpec, defaults_basis
from gptresume.rundir import CONFIG_NAME, FINAL_DIR, TOKENIZER_DIR, remove_leftovers, remove_path, run_lock
from gptresume.training import distributed
from gptresume.training.session import Options, Session

log = logging.getLogger(__name__)

SAMPLE_PROMPTS = ("The", "A list", "def")


def run_training(config: Config, resume: str = "auto", overwrite: bool = False, stop_at_step: int | None = None,
                 allow_partial: bool = False, allow_change: list[str] | None = None, adopt_checkpoint: bool = False,
                 stop_exit_code: int = EXIT_STOPPED) -> int:
    c = config.checkpoint
    options = Options(resume=resume, allow_change=list(allow_change or []), allow_partial=allow_partial,
                      overwrite=overwrite, adopt=adopt_checkpoint, keep_last=c.keep_last, keep_best=keeps_best(config),
                      every_minutes=c.every_minutes, async_save=c.async_save, stop_at_step=stop_at_step,
                      stop_exit_code=stop_exit_code, remote=c.remote, remote_options=dict(c.remote_options or {}),
                      remote_keep_last=c.remote_keep_last, remote_wait_seconds=c.remote_wait_seconds,
                      health=config.health, auto_interval=c if c.every == "auto" else None)
    if distributed.is_main():
        warn_if_unchecked(log)  # exactness relies on the private behaviour listed in compat.py
    while True:
        code, outcome = _run_session(config, options)
        if outcome is None or outcome.status != "rollback":
            return code
        # A rollback (health/rollback.py): a fresh model and Trainer resume the chosen checkpoint, as a re-run would
        # (history.jsonl tells the plan what to skip), so the same fault gives the same weights bit for bit.
        options = dataclasses.replace(options, resume=str(outcome.checkpoint), overwrite=False, adopt=False)


def _run_session(config: Config, options: Options):
    """One protected run of a fresh Trainer: (exit code, Outcome or None when there was nothing to train)."""
    run_dir = config.run_dir
    spec = RunSpec(run_dir, config.to_dict(), tokenizer_from_checkpoint=True,
                   resolve=config.resolve_versioned_defaults)
    world_size = distributed.world_size()
    with Session(spec, options) as session:

        def decide() -> ResumePlan:
            session.lock()
            return session.decide(world_size)

        session.plan = plan = distributed.on_main(decide)
        config.resolve_versioned_defaults(defaults_basis(plan))  # as rank 0 did in plan_resume (every rank)
        if session.is_complete():
            return distributed.on_main(_report_complete, config, plan), None
        ckpt = session.checkpoint
        inputs = {}

        def accept() -> None:  # rank 0: every input check, then the run directory (locked until training ends)
            inputs.update(_load_inputs(config, plan))
            try:
                data = inputs["data"]
                spec.data_fingerprint = data.fingerprint
                spec.train_samples = len(data.train) if hasattr(data.train, "__len__") else None
                session.check_inputs(has_dropout(inputs["model"]))
                if config.data.streaming:
                    _check_streaming_resume(plan)
                session.prepare_run_dir(world_size, lambda: _write_inputs(config, plan, inputs["data"],
                                                                          inputs["tokenizer"]))
            except BaseException:
                inputs["data"].discard()  # packed blocks staged in data-cache/: a refused run leaves none
                raise

        distributed.on_main(accept)
        if not inputs:  # the other ranks read what rank 0 checked and wrote: tokenizer/, data-cache/
            inputs.update(_load_inputs(config, plan, tokenizer_dir=ckpt or run_dir / TOKENIZER_DIR))
        tokenizer, data, model = inputs["tokenizer"], inputs["data"], inputs["model"]
        trainer = _make_trainer(config, model, tokenizer, data)
        if config.data.streaming:  # before the session's commit callback: the state is in the committed files
            from gptresume.data.streaming import StreamStateCallback

            trainer.add_callback(StreamStateCallback(data.stream))
            if ckpt is not None:
                data.stream.load_state(ckpt)
        tokens_per_step = (trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
                           * trainer.args.world_size * data.block_size)
        session.attach(trainer, tokens_per_step)
        _use_progress_output(trainer, tokens_per_step)
        from gptresume.training.phase_progress import add_phase_progress

        loading = add_phase_progress(trainer, ckpt, sys.stderr.isatty())  # evaluation, slow saves, a large load
        distributed.warn_if_not_sharded(trainer, config.train)
        main = distributed.is_main()
        if plan.checkpoint and main:
            epoch = plan.checkpoint.manifest.get("epoch")
            at = f"step {plan.step}" + (f", epoch {epoch:.2f}" if epoch is not None else "")
            print(f"Resuming from {ckpt} ({at})", flush=True)
        elif main:
            print(f"Starting a new run in {run_dir}", flush=True)
        loading.announce()
        outcome = session.run(trainer)
        if outcome.stopped:
            if main:
                print(f"Stopped ({outcome.reason}) at step {outcome.step}: checkpoint {outcome.checkpoint} is "
                      "committed. Re-run the same command to resume.", flush=True)
            return outcome.exit_code, outcome
        if outcome.status in ("rollback", "unhealthy"):
            if main and outcome.status == "unhealthy":
                print(outcome.reason, file=sys.stderr, flush=True)
            return outcome.exit_code, outcome
        save_final(trainer, run_dir)  # every rank takes part (a sharded model is gathered); rank 0 writes
        session.record_complete(outcome.step)
        if main:
            print(f"Training complete at step {outcome.step}; model and tokenizer in {run_dir / FINAL_DIR}",
                  flush=True)
            print_samples(distributed.whole_model(trainer, run_dir / FINAL_DIR), tokenizer)
    return EXIT_OK, outcome


def keeps_best(config: Config) -> bool:
    """checkpoint.keep_best, implied by train.load_best_model_at_end: the checkpoint Trainer loads at the end must
    survive keep_last retention (config/values.py `best_model_problems` refuses a metric keep_best cannot protect)."""
    return config.checkpoint.keep_best or config.train.get("load_best_model_at_end") is True


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
        use_cache_if_offline(hub_names(config))  # no network: the cache at once, said once (hub.py)
        if config.model.tokenizer.train_vocab_size:
            texts = load_texts(config.data)
    elif config.model.peft is not None and config.model.name_or_path:  # a LoRA resume reads its base model again
        check_model_source(config.model.name_or_path, "model.name_or_path")
        if not looks_like_path(config.model.name_or_path):
            use_cache_if_offline([config.model.name_or_path])
    tokenizer = load_tokenizer(config.model, texts, tokenizer_dir or ckpt)
    if config.data.streaming:
        from gptresume.data.streaming import streamed_data

        data = streamed_data(config.data, tokenizer, config.run_dir, int(config.train.get("seed", 42)),
                             distributed.rank(), distributed.world_size())  # each rank streams its own part
    else:
        data = prepare_data(config.data, tokenizer, config.run_dir, texts)
    try:
        model = build_model(config.model, tokenizer, config.train.get("seed", 42), ckpt)
        too_long = context_problem(model, config.data.block_size)  # a pretrained model's context, known only now
        if too_long:
            raise UsageError(too_long)
    except BaseException:
        data.discard()
        raise
    return {"tokenizer": tokenizer, "data": data, "model": model}


def _write_inputs(config: Config, plan: ResumePlan, data, tokenizer) -> None:
    """The CLI's own run files: the data cache, the tokenizer it trained or chose, the resolved config."""
    run_dir = config.run_dir
    if config.data.streaming:
        remember_source_fingerprint(run_dir)  # the source's hash, stat-cached: a resume does not re-read it
    else:
        save_to_cache(data, config.data, tokenizer, run_dir)
    if plan.checkpoint is None:
        tokenizer.save_pretrained(run_dir / TOKENIZER_DIR)
    dump_config(config, run_dir / CONFIG_NAME)


def _check_streaming_resume(plan: ResumePlan) -> None:
    from gptresume.data.streaming import streaming_refusal

    why = streaming_refusal(plan) if plan.checkpoint else None
    if why:
        raise UsageError(f"resume refused: {why}")


def _make_trainer(config: Config, model, tokenizer, data):
    """A plain `transformers.Trainer`, as a script would build it; the session makes it resumable."""
    from transformers import Trainer

    extra = {"ignore_data_skip": True} if config.data.streaming else {}  # the stream restores its own position
    if config.data.streaming and distributed.world_size() > 1:  # each rank's stream is its own part: accelerate
        # must neither read the batches on rank 0 and send them (its default for an IterableDataset) nor shard them
        accel = config.train.get("accelerator_config")
        extra["accelerator_config"] = {**(accel if isinstance(accel, dict) else {}), "dispatch_batches": False}
    args = config.training_arguments(disable_tqdm=True, **distributed.training_defaults(config.train), **extra)
    evaluated = evaluation_set(data.validation, config.data.eval_batches, args.eval_batch_size * args.world_size)
    return Trainer(model=model, args=args, train_dataset=data.train, eval_dataset=evaluated,
                   data_collator=PackedBlockCollator(), processing_class=tokenizer)


def _use_progress_output(trainer, tokens_per_step: int) -> None:
    """The CLI's progress output instead of Trainer's printed dicts: a bar on a terminal, lines elsewhere."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from gptresume.training.callbacks import ProgressLines, progress_bar_class

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    bar = sys.stderr.isatty()
    trainer.add_callback(progress_bar_class()(tokens_per_step) if bar else ProgressLines(tokens_per_step))


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
    if distributed.is_main():  # the old final/ moves aside first: no instant leaves a half-deleted final/
        old = run_dir / f".{FINAL_DIR}.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        if old.exists():
            remove_path(old)


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
    from gptresume.checkpoint import apply_retention

    run_dir = config.run_dir
    final = run_dir / FINAL_DIR
    with run_lock(run_dir):  # what a kill during the last commit's retention or during final/ left is finished
        remove_leftovers(run_dir)
        guard = None
        if config.checkpoint.remote:  # a checkpoint without a verified upload stays (remote/ledger.py)
            from gptresume.remote.ledger import Ledger

            guard = Ledger(run_dir, config.checkpoint.remote.rstrip("/")).may_delete
        apply_retention(run_dir, config.checkpoint.keep_last, plan.checkpoint.path, keeps_best(config), guard)
    if not final.is_dir():  # finished training but died before writing final/: write it from the checkpoint
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from gptresume.checkpoint.loadable import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHT_NAMES, is_adapter_checkpoint

        with run_lock(run_dir):
            tokenizer = AutoTokenizer.from_pretrained(str(plan.checkpoint.path))
            tmp = run_dir / f".{FINAL_DIR}.tmp-{os.getpid()}"
            if is_adapter_checkpoint(plan.checkpoint.path):  # LoRA: final/ holds the adapters, as save_model writes
                tmp.mkdir()
                for name in (ADAPTER_CONFIG_NAME, *ADAPTER_WEIGHT_NAMES):
                    if (plan.checkpoint.path / name).is_file():
                        shutil.copyfile(plan.checkpoint.path / name, tmp / name)
            else:
                model = AutoModelForCausalLM.from_pretrained(str(plan.checkpoint.path))
                model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, final)
    print(f"Run complete: {run_dir} reached step {plan.step} ({plan.checkpoint.path.name}); nothing to train. "
          f"The model is in {final}. To train longer: --set train.max_steps=N --allow-change max_steps (the "
          "schedule is re-planned); to start over: --resume never --overwrite.", flush=True)
    return EXIT_OK
