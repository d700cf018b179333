"""`gptresume diff A B`: the resume table for two checkpoints, runs or config files."""

from __future__ import annotations

from pathlib import Path

from gptresume.resume.changes import DATA, Change, config_changes, format_changes
from gptresume.resume.effective import writer_version
from gptresume.checkpoint import MANIFEST_NAME, newest_valid, read_manifest
from gptresume.errors import UsageError
from gptresume.rundir import CONFIG_NAME


def _resolve(source: str) -> tuple[str, dict, int, str | None, str | None]:
    """(description, config, world size, data fingerprint, the Transformers release that wrote it: None for this
    one) of a checkpoint, a run or a YAML config."""
    path = Path(source)
    if path.is_file():
        from gptresume.config import load_config

        return f"config file {path}", load_config(path).to_dict(), 1, None, None
    if not path.is_dir():
        raise UsageError(f"diff: {source} does not exist; give a checkpoint-N directory, a run directory or a "
                         "YAML config")
    if (path / MANIFEST_NAME).is_file():
        manifest, fault = read_manifest(path)
        if fault:
            raise UsageError(f"diff: {path}: {fault}")
        return f"checkpoint {path} (step {manifest.get('step')})", *_from_manifest(manifest)
    info, _ = newest_valid(path)
    if info is not None:
        return f"run {path}, newest valid checkpoint {info.name}", *_from_manifest(info.manifest)
    if (path / CONFIG_NAME).is_file():
        from gptresume.config import load_config

        return (f"run {path} (no valid checkpoint; its {CONFIG_NAME})", load_config(path / CONFIG_NAME).to_dict(),
                1, None, None)
    raise UsageError(f"diff: {path} is neither a checkpoint (no {MANIFEST_NAME}) nor a run (no valid checkpoint, "
                     f"no {CONFIG_NAME})")


def _from_manifest(manifest: dict) -> tuple[dict, int, str | None, str | None]:
    return (manifest["config"], int(manifest.get("world_size") or 1), manifest.get("data_fingerprint"),
            writer_version(manifest))


def describe_source(source: str) -> str:
    return _resolve(source)[0]


def diff_table(a: str, b: str) -> str:
    _, config_a, world_a, data_a, version_a = _resolve(a)
    _, config_b, world_b, data_b, version_b = _resolve(b)
    changes = config_changes(config_a, config_b, world_a, world_b, version_a, version_b)
    if data_a and data_b and data_a != data_b:
        changes.append(Change("data", data_a, data_b, DATA, note="the packed training tokens differ"))
    if not changes:
        return "no differences: B's config resumes A exactly"
    return format_changes(changes)
