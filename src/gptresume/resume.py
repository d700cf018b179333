"""The resume plan: which checkpoint to continue from, whether the run is already complete, and how the new
config differs from the one the checkpoint was trained with. A difference that would make the resumed run
differ from an uninterrupted one is refused (exit 2) with a table naming every changed field."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from gptresume.checkpoint import (
    CHECKPOINT_RE,
    MANIFEST_NAME,
    CheckpointInfo,
    describe_skip,
    list_checkpoints,
    missing_state,
    newest_valid,
    read_trainer_state,
    verify_checkpoint,
)
from gptresume.config import Config
from gptresume.errors import UsageError

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", "never", "must")

# Fields that change what is logged, evaluated or kept, never what is trained: applied on resume and noted.
FREE_KEYS = {
    "train.output_dir", "train.logging_steps", "train.logging_strategy", "train.logging_first_step",
    "train.eval_steps", "train.eval_strategy", "train.eval_delay", "train.eval_on_start",
    "train.per_device_eval_batch_size", "train.eval_accumulation_steps", "train.save_steps",
    "train.save_strategy", "train.report_to", "train.run_name", "train.project", "train.disable_tqdm",
    "train.log_level", "train.log_level_replica", "train.dataloader_num_workers",
    "train.dataloader_pin_memory", "train.dataloader_persistent_workers", "train.dataloader_prefetch_factor",
    "train.skip_memory_metrics", "data.num_proc",
}
FREE_PREFIXES = ("checkpoint.",)


@dataclass
class Change:
    key: str
    old: object
    new: object

    @property
    def free(self) -> bool:
        return self.key in FREE_KEYS or self.key.startswith(FREE_PREFIXES)


@dataclass
class ResumePlan:
    checkpoint: CheckpointInfo | None = None
    skipped: list[CheckpointInfo] = field(default_factory=list)
    overwrite: bool = False
    changes: list[Change] = field(default_factory=list)

    @property
    def step(self) -> int:
        return self.checkpoint.step if self.checkpoint else 0

    def is_complete(self) -> bool:
        """The newest checkpoint already reached max_steps under an unchanged config."""
        if self.checkpoint is None or any(not c.free for c in self.changes):
            return False
        state = read_trainer_state(self.checkpoint.path)
        return state.get("max_steps", 0) > 0 and state["global_step"] >= state["max_steps"]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "from_scratch":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(old: dict, new: dict) -> list[Change]:
    a, b = _flatten(old), _flatten(new)
    return [Change(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def format_changes(changes: list[Change]) -> str:
    rows = [("field", "checkpoint", "now", "")] + [
        (c.key, repr(c.old), repr(c.new), "ok (does not change training)" if c.free else "REFUSED")
        for c in changes]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  " + "  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows)


def plan_resume(config: Config, mode: str, overwrite: bool = False, allow_partial: bool = False) -> ResumePlan:
    """Decide where training starts. Reads the run directory only; changes nothing."""
    run_dir = config.run_dir
    existing = list_checkpoints(run_dir)
    if mode == "never":
        if existing and not overwrite:
            raise UsageError(
                f"--resume never: {run_dir} already has {len(existing)} checkpoint(s) (newest {existing[-1].name}); "
                "use --resume auto to continue that run, or add --overwrite to delete them and start over")
        return ResumePlan(overwrite=bool(existing))
    if mode in ("auto", "must"):
        info, skipped = newest_valid(run_dir)
        for s in skipped:
            log.warning(describe_skip(s))
        if info is None and mode == "must":
            why = "; ".join(describe_skip(s) for s in skipped) or "it has no checkpoint-N directory"
            raise UsageError(f"--resume must: no valid checkpoint in {run_dir} ({why})")
        plan = ResumePlan(checkpoint=info, skipped=skipped)
    else:
        plan = ResumePlan(checkpoint=_explicit_checkpoint(Path(mode)))
    if plan.checkpoint is not None:
        plan.changes = config_changes(plan.checkpoint.manifest["config"], config.to_dict())
        refuse_changes(plan)
        check_complete_state(plan.checkpoint, allow_partial)
    return plan


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


def _explicit_checkpoint(path: Path) -> CheckpointInfo:
    if not path.is_dir():
        raise UsageError(f"--resume {path}: no such directory; give a checkpoint-N directory, or auto|never|must")
    if not CHECKPOINT_RE.match(path.name) and not (path / MANIFEST_NAME).is_file():
        raise UsageError(f"--resume {path}: not a checkpoint-N directory")
    info = verify_checkpoint(path)
    if not info.valid:
        raise UsageError(f"--resume {path}: not a valid checkpoint: " + "; ".join(info.faults))
    return info


def refuse_changes(plan: ResumePlan) -> None:
    if not plan.changes:
        return
    table = format_changes(plan.changes)
    refused = [c for c in plan.changes if not c.free]
    if refused:
        raise UsageError(
            f"the config differs from the one {plan.checkpoint.path} was trained with:\n{table}\n"
            "Resuming with these changes would make the run differ from an uninterrupted one. Restore the "
            f"original values (see {plan.checkpoint.path / MANIFEST_NAME}), or start a new run with another "
            "train.output_dir.")
    log.info("Config changes since %s (applied; they do not change training):\n%s", plan.checkpoint.name, table)


def check_data_unchanged(plan: ResumePlan, data_fingerprint: str) -> None:
    if plan.checkpoint is None:
        return
    saved = plan.checkpoint.manifest.get("data_fingerprint")
    if saved and saved != data_fingerprint:
        raise UsageError(
            f"the training data differs from the data {plan.checkpoint.path} was trained on "
            f"(data fingerprint {saved} then, {data_fingerprint} now): a file under data.source changed. "
            "Restore the original data, or start a new run with another train.output_dir.")


def clear_run(run_dir: Path) -> None:
    """--overwrite: remove what a previous run left (checkpoints, metrics, history, final model)."""
    from gptresume.training import RUN_FILES

    for path in list_checkpoints(run_dir):
        shutil.rmtree(path)
    for name in RUN_FILES:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
