"""Defaults that changed after runs existed (issue 26: data.validation_max_blocks, data.eval_batches): a new run gets
today's defaults and records them; a resume of a run whose checkpoint recorded a config without them keeps their
legacy values (no cap, the whole split), so neither its training blocks nor its config become a "change". The rule
is config/schema.py VERSIONED_DEFAULTS, applied by `Config.resolve_versioned_defaults` from `plan_resume`."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from gptresume.config import config_from_dict, fingerprint_of
from gptresume.config.schema import (
    DEFAULT_EVAL_BATCHES,
    DEFAULT_VALIDATION_MAX_BLOCKS,
    VERSIONED_DEFAULTS,
    data_config_of_record,
    recorded_value,
)
from gptresume.data.blocks import split_indices
from gptresume.errors import ResumeRefused
from gptresume.resume.changes import DATA, FREE
from gptresume.resume.plan import RunSpec, check_inputs, plan_resume

pytestmark = pytest.mark.usefixtures("no_fsync")


def raw_config(tmp_path, **data) -> dict:
    return {"model": {"name_or_path": "gpt2"},
            "data": {"source": "corpus.txt", "block_size": 32, **data},
            "train": {"output_dir": str(tmp_path / "run"), "max_steps": 100, "save_steps": 10, "seed": 7},
            "checkpoint": {"keep_last": 3}}


def test_a_config_that_leaves_them_out_marks_them_defaulted(tmp_path):
    config = config_from_dict(raw_config(tmp_path))
    assert config.defaulted == frozenset(VERSIONED_DEFAULTS)
    assert config.data.validation_max_blocks == DEFAULT_VALIDATION_MAX_BLOCKS
    assert config.data.eval_batches == DEFAULT_EVAL_BATCHES
    explicit = config_from_dict(raw_config(tmp_path, validation_max_blocks=None, eval_batches=5))
    assert explicit.defaulted == frozenset()
    assert (explicit.data.validation_max_blocks, explicit.data.eval_batches) == (None, 5)


def test_resolution_new_run_old_run_and_recorded_values(tmp_path):
    config = config_from_dict(raw_config(tmp_path))
    new_run = config.resolve_versioned_defaults(None)
    assert new_run["data"]["validation_max_blocks"] == DEFAULT_VALIDATION_MAX_BLOCKS  # recorded by a new run
    assert new_run["data"]["eval_batches"] == DEFAULT_EVAL_BATCHES
    old_record = {k: v for k, v in new_run.items()}
    old_record["data"] = {k: v for k, v in new_run["data"].items() if k not in ("validation_max_blocks",
                                                                                 "eval_batches")}
    resumed = config.resolve_versioned_defaults(old_record)
    assert (config.data.validation_max_blocks, config.data.eval_batches) == (None, None)
    assert resumed == old_record  # the very config (and fingerprint) the old checkpoint recorded
    assert config.resolve_versioned_defaults(new_run) == new_run  # a new run's resume keeps what it recorded
    assert config.resolve_versioned_defaults(old_record) == old_record  # idempotent, whatever came before
    # a value the user sets is never replaced, whatever the checkpoint recorded
    explicit = config_from_dict(raw_config(tmp_path, validation_max_blocks=50))
    assert explicit.resolve_versioned_defaults(old_record)["data"]["validation_max_blocks"] == 50


def test_a_recorded_value_is_read_only_when_some_version_could_have_written_it():
    name = "data.validation_max_blocks"
    assert recorded_value({"data": {"validation_max_blocks": 7}}, name) == 7
    assert recorded_value({"data": {}}, name) is None
    assert recorded_value({}, name) is None
    assert recorded_value({"data": {"validation_max_blocks": "x"}}, name) is None
    assert recorded_value({"data": {"validation_max_blocks": True}}, name) is None


def test_tools_read_a_recorded_data_section_with_legacy_values():
    old = data_config_of_record({"source": "a.txt", "block_size": 16, "validation_fraction": 0.1, "unknown": 1})
    assert (old.validation_max_blocks, old.eval_batches, old.block_size) == (None, None, 16)
    new = data_config_of_record({"source": "a.txt", "validation_max_blocks": 9, "eval_batches": 2})
    assert (new.validation_max_blocks, new.eval_batches) == (9, 2)


def test_the_cap_takes_the_head_of_the_same_permutation():
    train, val = split_indices(10_000, 0.05)
    capped_train, capped_val = split_indices(10_000, 0.05, max_blocks=100)
    assert len(val) == 500 and len(capped_val) == 100
    perm = np.random.default_rng(0).permutation(10_000)
    assert np.array_equal(capped_val, np.sort(perm[:100]))
    assert len(capped_train) == 9_900 and not set(capped_train) & set(capped_val)
    loose_train, loose_val = split_indices(10_000, 0.05, max_blocks=501)  # not binding: the split of before
    assert np.array_equal(loose_val, val) and np.array_equal(loose_train, train)
    assert split_indices(100, 0.0, max_blocks=10) == (None, None)


# ---------------------------------------------------------------- through the resume plan


def make_checkpoint(run_dir, step: int, recorded: dict):
    """A committed checkpoint whose manifest records `recorded` (the plan reads names, manifests and
    trainer_state.json only)."""
    from conftest import fake_checkpoint

    files = {name: name for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth")}
    files["trainer_state.json"] = json.dumps({"global_step": step, "max_steps": 100, "log_history": []})
    return fake_checkpoint(run_dir, step, files, config=recorded, config_fingerprint=fingerprint_of(recorded),
                           data_fingerprint="data-1", epoch=0.5)


def _spec(config) -> RunSpec:
    return RunSpec(config.run_dir, config.to_dict(), "data-1", 100, resolve=config.resolve_versioned_defaults)


def test_a_run_from_before_the_defaults_resumes_without_a_change(tmp_path):
    old_shape = config_from_dict(raw_config(tmp_path, validation_max_blocks=None, eval_batches=None)).to_dict()
    assert "validation_max_blocks" not in old_shape["data"]  # today's config shape, as main records it
    make_checkpoint(tmp_path / "run", 10, old_shape)
    config = config_from_dict(raw_config(tmp_path))  # the user's unchanged YAML, under the new code
    spec = _spec(config)
    plan = plan_resume(spec, "auto")
    assert plan.step == 10 and plan.changes == []
    assert spec.config == old_shape and spec.fingerprint() == fingerprint_of(old_shape)
    assert (config.data.validation_max_blocks, config.data.eval_batches) == (None, None)  # the data it packs
    check_inputs(plan, "data-1", dropout=True)  # and the same data fingerprint: nothing refused


def test_a_new_run_records_the_defaults_and_resumes_with_them(tmp_path):
    config = config_from_dict(raw_config(tmp_path))
    spec = _spec(config)
    assert plan_resume(spec, "auto").checkpoint is None
    recorded = copy.deepcopy(spec.config)
    assert recorded["data"]["validation_max_blocks"] == DEFAULT_VALIDATION_MAX_BLOCKS
    make_checkpoint(tmp_path / "run", 10, recorded)
    again = config_from_dict(raw_config(tmp_path))
    plan = plan_resume(_spec(again), "auto")
    assert plan.changes == [] and again.data.validation_max_blocks == DEFAULT_VALIDATION_MAX_BLOCKS


def test_setting_them_on_resume_is_a_change_of_its_class(tmp_path):
    old_shape = config_from_dict(raw_config(tmp_path, validation_max_blocks=None, eval_batches=None)).to_dict()
    make_checkpoint(tmp_path / "run", 10, old_shape)
    config = config_from_dict(raw_config(tmp_path, validation_max_blocks=100, eval_batches=4))
    plan = plan_resume(_spec(config), "auto")
    kinds = {c.key: c.kind for c in plan.changes}
    assert kinds == {"data.validation_max_blocks": DATA, "data.eval_batches": FREE}
    with pytest.raises(ResumeRefused, match="training data differs"):  # a binding cap moves training blocks
        check_inputs(plan, "data-2", dropout=False)
