"""The resume plan: which checkpoint to continue from, whether the run is already complete, and how the new
config differs from the one the checkpoint was trained with. A difference that would make the resumed run
differ from an uninterrupted one is refused (exit 2) with a table naming every changed field."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gptresume.checkpoint import (
    CHECKPOINT_RE,
    MANIFEST_NAME,
    RESUME_STATE_NAME,
    CheckpointInfo,
    describe_skip,
    list_checkpoints,
    missing_state,
    newest_valid,
    read_resume_state,
    read_trainer_state,
    verify_checkpoint,
)
from gptresume.resume.changes import (
    BATCH,
    DATA,
    OPTIMIZER,
    SCHEDULE,
    Change,
    allow_keys,
    apply_allowed,
    config_changes,
    eval_cadence_with_dropout,
    format_changes,
    refusal_hint,
    train_value,
)
from gptresume.resume.adopt import adoption, trained_with
from gptresume.resume.effective import writer_version
from gptresume.config import fingerprint_of
from gptresume.errors import ResumeRefused, UsageError
from gptresume.resume.position import Geometry, map_position
from gptresume.resume.schedule import SHAPES, SchedulePlan
from gptresume.rundir import CONFIG_NAME

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", "never", "must")


@dataclass
class RunSpec:
    """What a run is, as far as resuming is concerned: where it lives, the settings a checkpoint records and a
    resume compares (`config`: {"train": TrainingArguments fields, ...}; the CLI adds its model, data and
    checkpoint sections), and the identity of its training data. The CLI and the Python API both build one."""

    run_dir: Path
    config: dict
    data_fingerprint: str | None = None
    train_samples: int | None = None
    tokenizer_from_checkpoint: bool = False
    """A resume loads the tokenizer from the checkpoint (the CLI): an adopted checkpoint must hold one."""
    model_shapes: dict[str, tuple] | None = None
    """Name -> shape of every weight of the model a resume loads the checkpoint into (a script's Trainer model).
    None: the model is built from the checkpoint's own config.json (the CLI)."""
    resolve: Callable[[dict | None], dict] | None = None
    """(recorded config of the resumed checkpoint, or None for a new run) -> `config` with the defaults that changed
    since the run began resolved to what it recorded (the CLI's `Config.resolve_versioned_defaults`); called by
    `plan_resume` once the checkpoint is chosen, before the configs are compared."""

    @property
    def train(self) -> dict:
        return self.config.get("train") or {}

    def fingerprint(self) -> str:
        return fingerprint_of(self.config)


@dataclass
class ResumePlan:
    checkpoint: CheckpointInfo | None = None
    skipped: list[CheckpointInfo] = field(default_factory=list)
    overwrite: bool = False
    changes: list[Change] = field(default_factory=list)
    adopt: bool = False
    resume_state: dict = field(default_factory=dict)  # RESUME_STATE_NAME of the checkpoint (schedule, stream)
    allowed: set[str] = field(default_factory=set)  # fields accepted with --allow-change
    adopted_config: dict = field(default_factory=dict)  # --adopt: the settings training_args.bin records
    skip_samples: int = 0  # a rollback to this checkpoint skips these samples of the stream (health/rollback.py)

    @property
    def step(self) -> int:
        return self.checkpoint.step if self.checkpoint else 0

    @property
    def old_config(self) -> dict:
        if self.checkpoint is None:
            return {}
        return (self.checkpoint.manifest or {}).get("config") or self.adopted_config

    @property
    def old_world_size(self) -> int:
        return int((self.checkpoint.manifest or {}).get("world_size") or 1) if self.checkpoint else 1

    def changed(self, kind: str) -> list[Change]:
        return [c for c in self.changes if c.kind == kind]

    def optimizer_values(self) -> dict[str, tuple]:
        """Allowed optimizer changes, by TrainingArguments name: (old, new)."""
        return {c.key.removeprefix("train."): (c.old, c.new) for c in self.changed(OPTIMIZER) if c.allowed}

    def schedule_replanned(self) -> bool:
        return any(c.allowed for c in self.changed(SCHEDULE))

    def schedule_plan(self) -> SchedulePlan | None:
        """The re-planned schedule an earlier changed resume left in the checkpoint, to be continued."""
        saved = self.resume_state.get("schedule_plan")
        return SchedulePlan.from_dict(saved) if saved else None

    def is_complete(self, spec: RunSpec) -> bool:
        """The checkpoint already reached the max_steps the (unchanged or allowed) config asks for."""
        if self.checkpoint is None or any(c.refused for c in self.changes):
            return False
        state = read_trainer_state(self.checkpoint.path)
        max_steps = spec.train.get("max_steps")
        if max_steps is None or max_steps <= 0:  # epoch-based: an allowed longer schedule is for Trainer to count
            if any(c.allowed for c in self.changed(SCHEDULE)):
                return False
            max_steps = state.get("max_steps", 0)
        return max_steps > 0 and state["global_step"] >= max_steps


def plan_resume(spec: RunSpec, mode: str, overwrite: bool = False, allow_partial: bool = False,
                allow_change: list[str] | None = None, adopt: bool = False, world_size: int = 1,
                check=None) -> ResumePlan:
    """Decide where training starts and check the config against the checkpoint's. Reads the run directory
    only; changes nothing. Data changes are judged later, by `check_data` (they need the data fingerprint).

    `check(info) -> faults`: what a checkpoint must also pass to be resumed (`loads(spec)` for training: its
    state loads); auto/must skip one that fails it like an invalid one, an explicit PATH is refused."""
    run_dir = spec.run_dir
    existing = list_checkpoints(run_dir)
    if adopt and mode in RESUME_MODES:
        raise UsageError("--adopt needs --resume PATH: the checkpoint directory written by a plain Trainer script")
    if mode == "never":
        if existing and not overwrite:
            raise UsageError(
                f"--resume never: {run_dir} already has {len(existing)} checkpoint(s) (newest {existing[-1].name}); "
                "use --resume auto to continue that run, or add --overwrite to delete them and start over")
        _resolve_defaults(spec, None)
        return ResumePlan(overwrite=bool(existing))
    if mode in ("auto", "must"):
        info, skipped = newest_valid(run_dir, check)
        for s in skipped:
            log.warning(describe_skip(s))
        if info is None and mode == "must":
            why = "; ".join(describe_skip(s) for s in skipped) or "it has no checkpoint-N directory"
            raise UsageError(f"--resume must: no valid checkpoint in {run_dir} ({why})")
        plan = ResumePlan(checkpoint=info, skipped=skipped)
    elif adopt and not (Path(mode) / MANIFEST_NAME).is_file():  # adopted into run_dir, never written where it is
        info, adopting = adoption(Path(mode), run_dir, spec.tokenizer_from_checkpoint, check)
        plan = ResumePlan(checkpoint=info, adopt=adopting)
    else:
        plan = ResumePlan(checkpoint=_explicit_checkpoint(Path(mode), check))
    _resolve_defaults(spec, defaults_basis(plan))
    if plan.checkpoint is None:
        return plan
    check_complete_state(plan.checkpoint, allow_partial)
    if plan.adopt:
        compared = trained_with(plan.checkpoint.path, spec.config)
        if compared is None:
            return plan
        plan.adopted_config, new = compared
        plan.changes = config_changes(plan.adopted_config, new)
    else:
        plan.resume_state = read_resume_state(plan.checkpoint.path)
        plan.changes = config_changes(plan.old_config, spec.config, plan.old_world_size, world_size,
                                      old_version=writer_version(plan.checkpoint.manifest))
    plan.allowed = allow_keys(allow_change or [], {c.key for c in plan.changes})
    apply_allowed(plan.changes, plan.allowed)
    _check_schedule(plan, spec)
    refused = [c for c in plan.changes if c.refused and c.kind != DATA]  # data: judged with the fingerprint
    if refused:
        raise ResumeRefused(_refusal(plan), plan.changes)
    return plan


def defaults_basis(plan: ResumePlan) -> dict | None:
    """The recorded config that defaults changed since a run began resolve against (config/schema.py
    VERSIONED_DEFAULTS): the resumed checkpoint's; None for a new run and for an adopted plain-Trainer checkpoint
    (which recorded no gptresume config: it gets today's defaults)."""
    if plan.checkpoint is None or plan.adopt:
        return None
    return plan.old_config


def _resolve_defaults(spec: RunSpec, recorded: dict | None) -> None:
    if spec.resolve is not None:
        spec.config = spec.resolve(recorded)


def _check_schedule(plan: ResumePlan, spec: RunSpec) -> None:
    kind = train_value(spec.config, "lr_scheduler_type")
    kind = str(getattr(kind, "value", kind))
    if any(c.allowed for c in plan.changed(SCHEDULE)) and kind not in SHAPES:
        raise UsageError(f"train.lr_scheduler_type={kind!r}: a changed schedule is re-planned for "
                         f"{', '.join(SHAPES)} only; choose one of them, or start a new run")
    new = spec.train.get("max_steps")
    if plan.changed(SCHEDULE) and new and 0 < new < plan.step:
        raise UsageError(f"train.max_steps={new} ends before {plan.checkpoint.path} (step {plan.step}); give a "
                         "max_steps beyond it, or resume an earlier checkpoint with --resume PATH")


def _refusal(plan: ResumePlan) -> str:
    return (f"the config differs from the one {plan.checkpoint.path} was trained with:\n"
            f"{format_changes(plan.changes)}\n{refusal_hint(plan.changes)}{_recorded_config_hint(plan)}")


def _recorded_config_hint(plan: ResumePlan) -> str:
    """A run started with `gptresume train` recorded its resolved config: `gptresume resume` continues from it,
    without the --set options of the command that started it (a script's run has none: it re-runs its script)."""
    run_dir = plan.checkpoint.path.parent
    if plan.adopt or not (run_dir / CONFIG_NAME).is_file():
        return ""
    return (f"\nTo continue with the settings the run was started with (its recorded {CONFIG_NAME}, every --set "
            f"included): gptresume resume {run_dir}")


def check_inputs(plan: ResumePlan, data_fingerprint: str | None, dropout: bool) -> None:
    """The checks that need the loaded data and model: changed training data, and (with dropout on) a changed
    eval cadence. Refuses with the same table as a config change."""
    if plan.checkpoint is None or plan.adopt:
        return
    if dropout:
        eval_cadence_with_dropout(plan.changes, plan.allowed)
    check_data(plan, data_fingerprint)
    if any(c.refused for c in plan.changes):
        raise ResumeRefused(_refusal(plan), plan.changes)


def check_data(plan: ResumePlan, data_fingerprint: str | None) -> None:
    """Refuse changed training data unless --allow-change data; a changed data.* field with the same packed
    tokens (e.g. a moved file) is harmless and only noted."""
    if plan.checkpoint is None or plan.adopt:
        return
    saved = plan.checkpoint.manifest.get("data_fingerprint")
    if saved and data_fingerprint and saved != data_fingerprint:
        if not any(c.key == "data" for c in plan.changes):
            plan.changes.append(Change("data", saved, data_fingerprint, DATA,
                                       allowed="data" in plan.allowed,
                                       note="the packed training tokens differ"))
    else:
        for c in plan.changed(DATA):
            c.allowed, c.equivalent, c.note = True, True, "same packed tokens"
    if any(c.refused and c.kind == DATA for c in plan.changes):
        raise ResumeRefused(f"the training data differs from the data {plan.checkpoint.path} was trained on "
                            f"(data fingerprint {saved} then, {data_fingerprint} now).\n" + _refusal(plan),
                            plan.changes)


def data_stream(plan: ResumePlan, spec: RunSpec, train_samples: int, world_size: int) -> dict | None:
    """The stream offset for a resume whose global batch or data changed (or whose checkpoint already runs on
    one); None when Trainer's own sampler and step-based skip are exact."""
    if plan.checkpoint is None or plan.adopt:
        return None
    saved = plan.resume_state.get("stream")
    data_changed = any(c.key == "data" and c.allowed for c in plan.changes)
    batch_changed = any(c.kind == BATCH and c.allowed and not c.equivalent for c in plan.changes)
    if not (saved or data_changed or batch_changed or plan.skip_samples):
        return None
    old_n = (saved or {}).get("samples") or plan.checkpoint.manifest.get("train_samples") or train_samples
    old = _geometry(plan.old_config, plan.old_world_size)
    position = old.position(plan.step, old_n, (saved or {}).get("offset", 0))
    if old_n != train_samples:
        position = map_position(position, old_n, train_samples)
    if plan.skip_samples:
        log.info("Rollback: skipping %d samples after %s", plan.skip_samples, plan.checkpoint.name)
        position += plan.skip_samples
    new = _geometry(spec.config, world_size)
    offset = new.offset_for(plan.step, train_samples, position)
    log.info("Data position: sample %d of the stream (epoch %d, sample %d of %d); stream offset %d",
             position, position // train_samples, position % train_samples, train_samples, offset)
    return {"offset": offset, "samples": train_samples}


def _geometry(config: dict, world_size: int) -> Geometry:
    return Geometry(int(train_value(config, "per_device_train_batch_size")),
                    int(train_value(config, "gradient_accumulation_steps")), int(world_size),
                    bool(train_value(config, "dataloader_drop_last")))


def report_changes(plan: ResumePlan) -> None:
    if plan.changes:
        log.info("Config changes since %s:\n%s", plan.checkpoint.name, format_changes(plan.changes))
    if any(c.kind == DATA and c.key == "data" for c in plan.changes):
        log.warning("Training continues on changed data at the same sample offset of the current epoch "
                    "(--allow-change data): the run is no longer comparable to an uninterrupted one.")


def check_complete_state(info: CheckpointInfo, allow_partial: bool) -> None:
    """Plain Trainer resumes silently with a fresh optimizer when optimizer.pt is absent; we refuse."""
    missing = missing_state(info.path)
    if not missing:
        return
    lines = "\n".join(f"  - no {piece}: {effect}" for piece, effect in missing.items())
    if not allow_partial:
        raise UsageError(f"{info.path} lacks training state, so a resume from it cannot be exact:\n{lines}\n"
                         "Add --allow-partial to resume anyway with these differences (checkpoints written with "
                         "train.save_only_model: true never hold this state).")
    log.warning("Resuming from %s without part of its training state (--allow-partial):\n%s", info.path, lines)


def loads(spec: RunSpec):
    """The check a training resume applies to each checkpoint it would take (plan_resume's `check`): the optimizer,
    scheduler, scaler and RNG files load as Trainer loads them (weights-only), the weights parse and fit the model
    (`spec.model_shapes`, else the model the checkpoint's config.json describes, which the CLI builds), and the
    tokenizer loads when the resume takes it from the checkpoint. Faults name the file."""

    def check(info: CheckpointInfo) -> list[str]:
        from gptresume.checkpoint.loadable import adapter_faults, is_adapter_checkpoint, load_faults
        from gptresume.modeling import checkpoint_model_shapes, tokenizer_problem

        faults, shapes = [], spec.model_shapes
        if is_adapter_checkpoint(info.path):  # LoRA: adapters only; the base model is read from its source
            faults += adapter_faults(info.path)
        elif shapes is None:
            shapes, why = checkpoint_model_shapes(info.path)
            faults += [why] if why else []
        if spec.tokenizer_from_checkpoint:
            why = tokenizer_problem(info.path)
            faults += [why] if why else []
        why = resume_state_problem(info.path)
        faults += [why] if why else []
        return faults + load_faults(info.path, shapes)

    return check


def resume_state_problem(ckpt: Path) -> str | None:
    """gptresume_state.json (what an earlier changed resume decided) as the plan reads it: None when it is absent
    or well-formed."""
    try:
        state = read_resume_state(ckpt)
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        if state.get("schedule_plan") is not None:
            SchedulePlan.from_dict(state["schedule_plan"])
        stream = state.get("stream")
        if stream is not None and not (isinstance(stream, dict) and _is_int(stream.get("offset"))
                                       and _is_int(stream.get("samples")) and stream["samples"] >= 1):
            raise ValueError("'stream' must hold an integer 'offset' and a positive integer 'samples'")
    except (ValueError, TypeError, OSError) as e:
        return f"{RESUME_STATE_NAME}: unreadable ({e})"
    return None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _explicit_checkpoint(path: Path, check=None) -> CheckpointInfo:
    if not path.is_dir():
        raise UsageError(f"--resume {path}: no such directory; give a checkpoint-N directory, or auto|never|must")
    if not CHECKPOINT_RE.match(path.name) and not (path / MANIFEST_NAME).is_file():
        raise UsageError(f"--resume {path}: not a checkpoint-N directory")
    info = verify_checkpoint(path)
    if not (path / MANIFEST_NAME).is_file():
        raise UsageError(f"--resume {path}: no {MANIFEST_NAME}: not written by gptresume, or its save never "
                         "finished. If a plain Transformers script wrote it, add --adopt to check it and take it "
                         "over")
    if info.valid and check is not None:
        info.faults.extend(check(info))
    if not info.valid:
        raise UsageError(f"--resume {path}: not a valid checkpoint: " + "; ".join(info.faults))
    return info
