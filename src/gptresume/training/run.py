"""`gptresume train CONFIG`: the CLI's source of a run (`ConfigSource`: YAML + --set -> tokenizer, data, model, a
plain `transformers.Trainer`), fed to the start pipeline (training/start.py, the same one `gptresume.train(trainer)`
and `--dry-run` run), trained by the protected session (training/session.py) -> final/ model and samples.
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
from gptresume.errors import EXIT_OK, UsageError
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
from gptresume.options import Options
from gptresume.resume.plan import ResumePlan, RunSpec, defaults_basis
from gptresume.rundir import CONFIG_NAME, FINAL_DIR, TOKENIZER_DIR, remove_path, run_lock
from gptresume.training import distributed
from gptresume.training.session import Session
from gptresume.training.start import Inputs, Start, announce, announce_start, finish_complete, start

log = logging.getLogger(__name__)

SAMPLE_PROMPTS = ("The", "A list", "def")


def run_training(config: Config, options: Options) -> int:
    """Train (or resume) the run `config` describes; the exit code."""
    if distributed.is_main():
        warn_if_unchecked(log)  # exactness relies on the private behaviour listed in compat.py
    source = ConfigSource(config)
    while True:
        code, outcome = _run_once(source, options)
        if outcome is None or outcome.status != "rollback":
            return code
        # A rollback (health/rollback.py): a fresh model and Trainer resume the chosen checkpoint, as a re-run would
        # (history.jsonl tells the plan what to skip), so the same fault gives the same weights bit for bit.
        options = dataclasses.replace(options, resume=str(outcome.checkpoint), overwrite=False, adopt=False)


def _run_once(source: ConfigSource, options: Options):
    """One protected run of a fresh Trainer: (exit code, Outcome or None when there was nothing to train)."""
    with start(source, options) as s:
        if s.complete:
            finish_complete(s, source)
            return EXIT_OK, None
        trainer = source.trainer(s)
        session = Session(s, source.say)
        session.attach(trainer, source.tokens_per_step(trainer))
        _use_progress_output(trainer, source.tokens_per_step(trainer))
        from gptresume.training.phase_progress import add_phase_progress

        loading = add_phase_progress(trainer, s.checkpoint, sys.stderr.isatty())  # evaluation, slow saves, a load
        announce_start(s, source)
        loading.announce()
        outcome = session.run(trainer)
        if outcome.status == "complete":
            run_dir = s.run_dir
            save_final(trainer, run_dir)  # every rank takes part (a sharded model is gathered); rank 0 writes
            session.record_complete(outcome)
            if distributed.is_main():
                source.say(f"Training complete at step {outcome.step}; model and tokenizer in {run_dir / FINAL_DIR}")
                print_samples(distributed.whole_model(trainer, run_dir / FINAL_DIR), s.inputs.tokenizer)
        elif outcome.status != "rollback":  # a rollback is continued at once by a fresh Trainer (run_training)
            announce(outcome, source)
    return outcome.exit_code, outcome


@dataclasses.dataclass
class ConfigInputs(Inputs):
    """The CLI's inputs: the model, and the tokenizer and packed (or streamed) data it built."""

    tokenizer: object = None
    data: object = None

    def discard(self) -> None:
        if self.data is not None:
            self.data.discard()


class ConfigSource:
    """A run described by a YAML config (training/start.py `Source`): the CLI builds everything from it."""

    rerun = "Re-run the same command"

    def __init__(self, config: Config):
        self.config = config
        self.run_dir = config.run_dir

    def spec(self) -> RunSpec:
        return RunSpec(self.run_dir, self.config.to_dict(), tokenizer_from_checkpoint=True,
                       resolve=self.config.resolve_versioned_defaults)

    def load_inputs(self, plan: ResumePlan) -> ConfigInputs:
        return _inputs(*_load_inputs(self.config, plan))

    def follow(self, plan: ResumePlan) -> ConfigInputs:
        """The other ranks read what rank 0 checked and wrote: tokenizer/, data-cache/."""
        ckpt = plan.checkpoint.path if plan.checkpoint else None
        self.config.resolve_versioned_defaults(defaults_basis(plan))  # as rank 0 did in plan_resume
        return _inputs(*_load_inputs(self.config, plan, tokenizer_dir=ckpt or self.run_dir / TOKENIZER_DIR))

    def keep_on_node(self, inputs: ConfigInputs) -> None:
        """Another node's leader, when the nodes share no file system: the data it prepared stays on its disk."""
        from gptresume.training.nodes import keep_node_data

        keep_node_data(self.config, inputs.data, inputs.tokenizer)

    def check(self, plan: ResumePlan, inputs: ConfigInputs) -> None:
        if self.config.data.streaming:
            _check_streaming_resume(plan)

    def write_files(self, plan: ResumePlan, inputs: ConfigInputs) -> None:
        _write_inputs(self.config, plan, inputs.data, inputs.tokenizer)

    def trainer(self, s: Start):
        """A plain Trainer over the checked inputs (streaming: the stream's own position restored)."""
        config, inputs = self.config, s.inputs
        trainer = _make_trainer(config, inputs.model, inputs.tokenizer, inputs.data)
        if config.data.streaming:  # before the session's commit callback: the state is in the committed files
            from gptresume.data.streaming import StreamStateCallback

            trainer.add_callback(StreamStateCallback(inputs.data.stream))
            if s.checkpoint is not None:
                inputs.data.stream.load_state(s.checkpoint)
        distributed.warn_if_not_sharded(trainer, config.train)
        return trainer

    def tokens_per_step(self, trainer) -> int:
        args = trainer.args
        return (args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
                * self.config.data.block_size)

    def complete(self, s: Start) -> None:
        if distributed.is_main():
            _final_from_checkpoint(self.run_dir, s.checkpoint)

    def complete_hint(self, s: Start) -> str:
        return (f"The model is in {self.run_dir / FINAL_DIR}. To train longer: --set train.max_steps=N "
                "--allow-change max_steps (the schedule is re-planned); to start over: --resume never --overwrite.")

    def say(self, text: str, level: int = logging.INFO) -> None:
        print(text, file=sys.stderr if level >= logging.ERROR else sys.stdout, flush=True)


def _inputs(tokenizer, data, model) -> ConfigInputs:
    return ConfigInputs(model, data.fingerprint, len(data.train) if hasattr(data.train, "__len__") else None,
                        has_dropout(model), tokenizer, data)


def _load_inputs(config: Config, plan: ResumePlan, tokenizer_dir: Path | None = None) -> tuple:
    """(tokenizer, packed data, model). Everything that can be wrong with the input fails here, before RUN_DIR
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
                             distributed.rank(), distributed.world_size(), ckpt)  # each rank streams its own parts
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
    return tokenizer, data, model


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


def _final_from_checkpoint(run_dir: Path, ckpt: Path) -> None:
    """A run that finished training but died before writing final/: final/ from its last checkpoint."""
    final = run_dir / FINAL_DIR
    if final.is_dir():
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gptresume.checkpoint.loadable import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHT_NAMES, is_adapter_checkpoint

    with run_lock(run_dir):
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
        tmp = run_dir / f".{FINAL_DIR}.tmp-{os.getpid()}"
        if is_adapter_checkpoint(ckpt):  # LoRA: final/ holds the adapters, as save_model writes them
            tmp.mkdir()
            for name in (ADAPTER_CONFIG_NAME, *ADAPTER_WEIGHT_NAMES):
                if (ckpt / name).is_file():
                    shutil.copyfile(ckpt / name, tmp / name)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(ckpt))
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, final)
