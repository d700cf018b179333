"""Logging for the CLI: rank 0 at INFO by default, and the known-noise filter (messages from Transformers and
torch that are wrong or irrelevant for what gptresume does; the texts are listed in gptresume/compat.py).
Transformers is imported only by the commands that load models, when they call `quiet_transformers()`.

Library users (the Python API) keep their own logging set-up: only the CLI calls `setup_logging`. While
`gptresume.train(trainer)` runs in a script, `known_noise_filtered()` drops the Transformers messages gptresume makes
irrelevant there, each by its exact text on the logger that emits it, and nothing else; it is removed on return.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from gptresume.compat import SCRIPT_NOISE


def setup_logging(verbose: bool, transformers: bool = False) -> None:
    """Rank 0 at INFO (DEBUG with `verbose`), the other ranks at WARNING. Transformers is left alone (and not
    imported) unless `transformers`: the commands that load models call `quiet_transformers()` when they do."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level if rank == 0 else logging.WARNING, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if transformers:
        quiet_transformers()


def quiet_transformers() -> None:
    """Transformers at WARNING, its known noise dropped, progress bars off outside a terminal. Imports transformers
    and datasets; calling it again changes nothing."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    _quiet_known_noise(interactive=sys.stderr.isatty())


# Messages that are wrong or irrelevant for what gptresume does (checked with transformers 5.24, torch 2.13):
# the lm_head of GPT-2 is tied to the input embedding, so it is never in a checkpoint and Trainer's "missing
# keys" warning on resume is spurious; pin_memory has no effect on CPU; GPT2Config's loss_type=None is the default;
# packed training and eval blocks are never padded (the EOS token that is also GPT-2's pad id separates documents),
# so the advice to pass an attention_mask does not apply.
NOISE = ("missing keys in the checkpoint model loaded: ['lm_head.weight']", "`loss_type=None` was set in the config",
         "We strongly recommend passing in an `attention_mask` since your input_ids may be padded")


# Transformers' bars that only repeat what gptresume says in one line: save_pretrained's per-shard bar (a finished
# bar left on the terminal at every checkpoint; "checkpoint-N committed (size, seconds)" replaces it).
QUIET_BARS = ("Writing model shards",)


def _without_save_bars(factory, args, kwargs):
    if kwargs.get("desc") in QUIET_BARS:
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def drop_noise(handler: logging.Handler) -> None:
    """Put the known-noise filter on `handler` (once); for handlers that replace ours, such as the progress bar's."""
    if not any(isinstance(f, _DropNoise) for f in handler.filters):
        handler.addFilter(_DropNoise())


# What the CLI drops as well, from any logger (the CLI's runs are all gptresume's): Trainer's comparison of
# trainer_state.json with the arguments, contradicting the change table gptresume printed, and the best checkpoint
# that retention deleted (compat.SCRIPT_NOISE).
CLI_NOISE = (*NOISE, SCRIPT_NOISE["cadence_mismatch"][1], SCRIPT_NOISE["best_checkpoint_gone"][1])


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in CLI_NOISE)


def _quiet_known_noise(interactive: bool) -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true but no accelerator.*")
    # With CI=true (set by most CI systems) Transformers also propagates its records to the root logger, which
    # would print each warning twice; its own handler is enough. Filters go on handlers, not loggers: a logger's
    # filter never sees the records of its children.
    hf_logging.disable_propagation()
    # huggingface_hub's logger has a handler of its own too and propagates: without this each of its records
    # (an offline retry, a download warning) is printed twice.
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.disable_propagation()
    handlers = hf_logging.get_logger().handlers + hub_logging.get_logger().handlers + logging.getLogger().handlers
    for handler in handlers:
        drop_noise(handler)
    if getattr(hf_logging, "set_tqdm_hook", None) is not None:  # transformers >= 5: a public hook for its bars
        hf_logging.set_tqdm_hook(_without_save_bars)
    if not interactive:  # progress bars in logs and pipes are noise; our progress lines remain
        import datasets

        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()


class ScriptNoise(logging.Filter):
    """Drops the records of compat.SCRIPT_NOISE, each on the logger that emits it: the tied lm_head reported missing
    when a checkpoint of gptresume's is loaded (it is never saved), Trainer's comparison of trainer_state.json with
    the arguments (gptresume compared the whole config itself and applied what changed), the best checkpoint that
    retention deleted, and, on a resume (`resuming`), the bos/eos alignment the run's first start already
    reported. Everything else passes, the same texts from any other logger included."""

    def __init__(self):
        super().__init__()
        self.resuming = False
        """Set once the run resumes a checkpoint: the tokenizer/model-config alignment is then a repeat."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = None
        for key, (logger, text) in SCRIPT_NOISE.items():
            if record.name != logger or (key == "special_tokens_aligned" and not self.resuming):
                continue
            message = record.getMessage() if message is None else message
            if text in message:
                return False
        return True


@contextlib.contextmanager
def known_noise_filtered() -> Iterator[ScriptNoise]:
    """For the duration of `gptresume.train(trainer)` in a script: `ScriptNoise` on the two Transformers loggers that
    emit those messages, and "Writing model shards" bars (save_pretrained at every checkpoint; the committed-
    checkpoint line says it) disabled through Transformers' public tqdm hook (>= 5; an earlier hook still sees every
    other bar). The script's own logging set-up, verbosity, handlers, bars and warnings are left as they are; on exit
    the filters come off and the previous hook is restored. Yields the filter (set `.resuming` on a resume)."""
    noise = ScriptNoise()
    loggers = sorted({logging.getLogger(name) for name, _ in SCRIPT_NOISE.values()}, key=lambda lg: lg.name)
    for logger in loggers:
        logger.addFilter(noise)
    hook = _hook_api()
    previous = None
    if hook is not None:

        def without_save_bars(factory, args, kwargs):
            if kwargs.get("desc") in QUIET_BARS:
                kwargs = {**kwargs, "disable": True}
            return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

        previous = hook(without_save_bars)
    try:
        yield noise
    finally:
        for logger in loggers:
            logger.removeFilter(noise)
        if hook is not None:
            hook(previous)


def _hook_api():
    """transformers' `set_tqdm_hook` (public since 5.0), None before it or when transformers is not imported (a
    script that trains with it has imported it)."""
    if "transformers" not in sys.modules:
        return None
    from transformers.utils import logging as hf_logging

    return getattr(hf_logging, "set_tqdm_hook", None)
