"""The callbacks `gptresume train` adds to Trainer: crash-safe commits of Trainer's saves, metrics.jsonl, and
progress output. Each one only reads Trainer's state or sets `control` flags; none changes what is trained."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from transformers import TrainerCallback

from gptresume.training import distributed
from gptresume.checkpoint import RESUME_STATE_NAME, apply_retention, atomic_write_text, clear_the_way, write_manifest
from gptresume.checkpoint.files import checkpoint_name
from gptresume.resume.plan import RunSpec
from gptresume.rundir import perplexity

log = logging.getLogger(__name__)


class CommitCallback(TrainerCallback):
    """Make Trainer's saves crash-safe: a fresh directory per save, the manifest written last, then retention."""

    def __init__(self, spec: RunSpec, keep_last: int | None, keep_best: bool = False, resume_state=lambda: None,
                 uploader=None, ledger=None):
        self.spec = spec
        self.ledger = ledger  # the sample ledger (ledger/recording.py LedgerCommit): its segment in each commit
        self.uploader = uploader  # checkpoint.remote (remote/uploader.py): each commit queued, retention guarded
        self.config_fingerprint = spec.fingerprint()
        self.keep_last, self.keep_best = keep_last, keep_best
        self.resume_state = resume_state  # () -> dict | None: what a changed resume decided, kept in each save
        self.deferred_step: int | None = None  # the step whose commit an asynchronous save's writer will run
        self.save_started: float | None = None  # when the latest save began (for its committed line)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True  # always keep the final state, so the run can be extended later
        if control.should_save and state.is_world_process_zero:
            stale = Path(args.output_dir) / checkpoint_name(state.global_step)
            if stale.exists() or stale.is_symlink():  # an earlier attempt at this step (crashed save, other timeline)
                log.warning(clear_the_way(stale))
        if control.should_save:  # the same on every rank (stop and timed saves are agreed across ranks)
            self.save_started = time.perf_counter()
            distributed.barrier()  # no rank writes its RNG file into the old checkpoint before rank 0 moved it aside
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save:  # an epoch-based save
            self.save_started = time.perf_counter()
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.deferred_step == state.global_step:  # an asynchronous save: its writer thread commits it
            return
        distributed.barrier()  # every rank's files are on disk before the manifest commits them
        if state.is_world_process_zero:
            self.commit_later(args, state, deferred=False)()
        distributed.barrier()

    def commit_later(self, args, state, deferred: bool = True):
        """What the commit needs, captured now (at the save's step); returns the commit itself: write the
        manifest once every file is on disk, then apply retention. async_save.py runs it in its writer thread."""
        ckpt = Path(args.output_dir) / checkpoint_name(state.global_step)
        step, epoch, world_size, extra = state.global_step, state.epoch, args.world_size, self.resume_state()
        ledger = self.ledger.capture(step) if self.ledger is not None else None
        started = self.save_started if self.save_started is not None else time.perf_counter()
        self.save_started = None
        if deferred:
            self.deferred_step = step

        def commit():
            t0 = time.perf_counter()
            if extra:
                atomic_write_text(ckpt / RESUME_STATE_NAME, json.dumps(extra, indent=1, sort_keys=True))
            if ledger is not None:
                ledger.before_manifest(ckpt)
            manifest = write_manifest(ckpt, step=step, epoch=epoch, config=self.spec.config,
                                      config_fingerprint=self.config_fingerprint,
                                      data_fingerprint=self.spec.data_fingerprint,
                                      world_size=world_size, train_samples=self.spec.train_samples)
            log.info(commit_line(ckpt.name, manifest, time.perf_counter() - started))
            if ledger is not None:
                ledger.after_manifest(ckpt)  # the run's books (RUN_DIR/ledger/), after the commit
            if self.uploader is not None:
                self.uploader.submit(ckpt)
            deleted = apply_retention(Path(args.output_dir), self.keep_last, ckpt, self.keep_best,
                                      self.uploader.may_delete if self.uploader is not None else None)
            log.debug("Committed %s in %.3fs; removed %s", ckpt.name, time.perf_counter() - t0,
                      [p.name for p in deleted])

        return commit


class MetricsCallback(TrainerCallback):
    """One JSON line per logged step in RUN_DIR/metrics.jsonl; tokens/s counts training time only."""

    def __init__(self, path: Path, tokens_per_step: int | None):
        self.path = path
        self.tokens_per_step = tokens_per_step
        self.train_seconds = 0.0
        self.steps = 0
        self._t = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t is not None:
            self.train_seconds += time.perf_counter() - self._t
            self.steps += 1

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch}
        if "loss" in logs:
            row.update(loss=logs["loss"], learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"))
            if self.train_seconds > 0 and self.tokens_per_step:
                row["tokens_per_s"] = round(self.steps * self.tokens_per_step / self.train_seconds, 1)
            row["train_s"] = round(self.train_seconds, 4)  # what goodput counts (health/goodput.py)
            self.train_seconds, self.steps = 0.0, 0
        elif "eval_loss" in logs:
            row.update(eval_loss=logs["eval_loss"], eval_perplexity=perplexity(logs["eval_loss"]))
        else:
            return
        row["time"] = round(time.time(), 3)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class ProgressLines(TrainerCallback):
    """A progress line every ~5% of the run and at each evaluation (for logs and non-interactive output)."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.every = 1
        self.start = None
        self.start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.every = max(1, state.max_steps // 20)
        self.start, self.start_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        step, total = state.global_step, state.max_steps
        if "loss" in logs and (step % self.every == 0 or step == total):
            elapsed = time.perf_counter() - self.start
            done = step - self.start_step
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = (total - step) / rate if rate > 0 else 0.0
            print(f"{clock()} step {step:>6}/{total} | loss {logs['loss']:.4f} | "
                  f"lr {logs.get('learning_rate', 0):.2e} | {rate * self.tokens_per_step:,.0f} tok/s | "
                  f"eta {_duration(eta)}", flush=True)
        elif "eval_loss" in logs:
            print(f"{clock()} step {step:>6}/{total} | eval loss {logs['eval_loss']:.4f} | "
                  f"perplexity {perplexity(logs['eval_loss']):.2f}", flush=True)


def progress_bar_class():
    from transformers.trainer_callback import ProgressCallback

    class QuietProgressBar(ProgressCallback):
        """Trainer's tqdm bar, with the latest loss, learning rate and tokens/s in the bar instead of a printed
        dict per log (tqdm's own rate is s/it, which says little when steps differ in size)."""

        def __init__(self, tokens_per_step: int | None = None, **kwargs):
            super().__init__(**kwargs)
            self.tokens_per_step = tokens_per_step
            self.start, self.start_step = None, 0
            self._redirect = None  # tqdm's logging redirect while the bar is shown

        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            self.start, self.start_step = time.perf_counter(), state.global_step
            if state.is_world_process_zero and self._redirect is None:  # log lines above the bar, not through it
                from tqdm.contrib.logging import logging_redirect_tqdm

                from gptresume.logs import drop_noise

                self._redirect = logging_redirect_tqdm()
                self._redirect.__enter__()
                for handler in logging.getLogger().handlers:
                    drop_noise(handler)

        def on_train_end(self, args, state, control, **kwargs):
            super().on_train_end(args, state, control, **kwargs)
            if self._redirect is not None:
                self._redirect.__exit__(None, None, None)
                self._redirect = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs:
                if "loss" in logs:
                    shown = {"loss": f"{logs['loss']:.4f}", "lr": f"{logs.get('learning_rate', 0):.2e}"}
                    elapsed = time.perf_counter() - self.start if self.start is not None else 0
                    if self.tokens_per_step and elapsed > 0:
                        done = state.global_step - self.start_step
                        shown["tok/s"] = f"{done * self.tokens_per_step / elapsed:,.0f}"
                    self.training_bar.set_postfix(shown, refresh=False)
                elif "eval_loss" in logs:
                    self.training_bar.write(f"{clock()} step {state.global_step}: eval loss "
                                            f"{logs['eval_loss']:.4f}, perplexity {perplexity(logs['eval_loss']):.2f}")

    return QuietProgressBar


def clock() -> str:
    """The wall-clock time that starts every progress line (so a log shows when each step happened)."""
    return time.strftime("%H:%M:%S")


def commit_line(name: str, manifest: dict, seconds: float) -> str:
    """One line per committed save: `checkpoint-N committed (12.3 MB, 0.41 s)`; the seconds run from the save's
    start (Trainer writing its files) to the manifest, the bytes are every file the manifest lists."""
    size = sum(int(f.get("bytes", 0)) for f in (manifest or {}).get("files", {}).values())
    return f"{clock()} {name} committed ({_size(size)}, {seconds:.2f} s)"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
