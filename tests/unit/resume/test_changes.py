"""resume/changes.py: the class of every changed field, the batch rule (same global batch needs no flag), the
--allow-change names, eval cadence with dropout, and the refusal table and hint."""

from __future__ import annotations

import pytest

from gptresume.errors import UsageError
from gptresume.resume.changes import (
    BATCH,
    BATCH_KEYS,
    DATA,
    DATA_KEYS,
    EVAL_CADENCE_KEYS,
    EVAL_WITH_DROPOUT,
    FREE,
    FREE_KEYS,
    NEVER,
    OPTIMIZER,
    OPTIMIZER_KEYS,
    OTHER,
    SCHEDULE,
    SCHEDULE_KEYS,
    Change,
    allow_keys,
    apply_allowed,
    classify,
    config_changes,
    eval_cadence_with_dropout,
    format_changes,
    refusal_hint,
)


def config(**train) -> dict:
    base = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "learning_rate": 1e-3,
            "max_steps": 100, "seed": 7, "logging_steps": 5, "eval_steps": 10}
    return {"model": {"from_scratch": {"n_layer": 2, "n_embd": 32}},
            "data": {"source": "corpus.txt", "block_size": 32},
            "train": {**base, **train},
            "checkpoint": {"keep_last": 3}}


# ---------------------------------------------------------------- classify


@pytest.mark.parametrize("key, kind", [
    ("train.logging_steps", FREE), ("train.save_steps", FREE), ("train.output_dir", FREE),
    ("train.eval_steps", FREE), ("checkpoint.keep_last", FREE), ("checkpoint.anything_new", FREE),
    ("data.num_proc", FREE),
    ("train.learning_rate", OPTIMIZER), ("train.max_grad_norm", OPTIMIZER), ("train.adam_beta2", OPTIMIZER),
    ("train.max_steps", SCHEDULE), ("train.num_train_epochs", SCHEDULE), ("train.lr_scheduler_type", SCHEDULE),
    ("train.per_device_train_batch_size", BATCH), ("train.gradient_accumulation_steps", BATCH),
    ("world_size", BATCH),
    ("data.source", DATA), ("data.text_column", DATA), ("data", DATA),
    ("data.block_size", NEVER), ("model.from_scratch", NEVER), ("model.name_or_path", NEVER),
    ("model.tokenizer.train_vocab_size", NEVER), ("train.seed", NEVER), ("train.data_seed", NEVER),
    ("train.fp16", OTHER), ("train.optim", OTHER), ("train.seed_extra", OTHER), ("modelx.y", OTHER),
])
def test_classify(key, kind):
    assert classify(key) == kind


def test_the_key_sets_do_not_overlap():
    sets = [FREE_KEYS, set(OPTIMIZER_KEYS), SCHEDULE_KEYS, BATCH_KEYS, DATA_KEYS]
    for i, a in enumerate(sets):
        for b in sets[i + 1:]:
            assert not a & b
    assert EVAL_CADENCE_KEYS <= FREE_KEYS


# ---------------------------------------------------------------- config_changes


def test_only_differing_fields_in_key_order():
    old, new = config(), config(learning_rate=2e-3, logging_steps=1)
    new["data"]["source"] = "other.txt"
    changes = config_changes(old, new)
    assert [(c.key, c.old, c.new, c.kind) for c in changes] == [
        ("data.source", "corpus.txt", "other.txt", DATA),
        ("train.learning_rate", 1e-3, 2e-3, OPTIMIZER),
        ("train.logging_steps", 5, 1, FREE),
    ]
    assert [c.refused for c in changes] == [True, True, False]
    assert config_changes(old, config()) == []


def test_model_architecture_is_compared_as_a_whole():
    old, new = config(), config()
    new["model"]["from_scratch"]["n_layer"] = 4
    (change,) = config_changes(old, new)
    assert change.key == "model.from_scratch" and change.kind == NEVER and change.refused
    assert change.old == {"n_layer": 2, "n_embd": 32} and change.new == {"n_layer": 4, "n_embd": 32}


def test_a_field_only_one_side_sets_is_compared_with_its_declared_default():
    old, new = config(), config(warmup_steps=10)
    (change,) = config_changes(old, new)
    assert (change.key, change.old, change.new, change.kind) == ("train.warmup_steps", 0, 10, SCHEDULE)
    assert change.old_default and not change.new_default
    assert "  train.warmup_steps  0 (default)  10  " in format_changes([change])


def test_same_global_batch_is_allowed_with_a_note():
    changes = config_changes(config(), config(per_device_train_batch_size=4, gradient_accumulation_steps=2))
    assert {c.key for c in changes} == {"train.per_device_train_batch_size", "train.gradient_accumulation_steps"}
    assert all(c.kind == BATCH and c.allowed and not c.refused for c in changes)
    assert all(c.note == "same global batch (8): same samples per step" for c in changes)


def test_a_different_global_batch_is_refused_with_both_sizes():
    (change,) = config_changes(config(), config(per_device_train_batch_size=4))
    assert change.refused and change.note == "global batch 8 -> 4"


def test_world_size_is_a_batch_pseudo_field():
    (change,) = config_changes(config(), config(), old_world=1, new_world=2)
    assert (change.key, change.old, change.new, change.kind) == ("world_size", 1, 2, BATCH)
    assert change.refused and change.note == "global batch 8 -> 16"

    changes = config_changes(config(), config(per_device_train_batch_size=4), old_world=1, new_world=2)
    assert [c.key for c in changes] == ["train.per_device_train_batch_size", "world_size"]
    assert all(c.allowed for c in changes)


def test_a_field_left_at_its_default_is_no_change_from_the_same_value_given():
    old, new = config(), config()
    del old["train"]["gradient_accumulation_steps"]  # TrainingArguments default: 1
    assert config_changes(old, new) == []
    assert config_changes(new, old) == []


# ---------------------------------------------------------------- allow_keys


@pytest.mark.parametrize("requested, expected", [
    (["learning_rate"], {"train.learning_rate"}),
    ([" learning_rate "], {"train.learning_rate"}),
    (["train.max_steps"], {"train.max_steps"}),
    (["source"], {"data.source"}),
    (["data.source"], {"data.source"}),
    (["world_size"], {"world_size"}),
    (["fp16"], {"train.fp16"}),  # a TrainingArguments field in no class
    (["eval_steps"], {"train.eval_steps"}),
    (["optimizer"], set(OPTIMIZER_KEYS)),
    (["schedule"], SCHEDULE_KEYS),
    (["batch"], BATCH_KEYS),
    (["data"], DATA_KEYS),
    (["learning_rate", "max_steps"], {"train.learning_rate", "train.max_steps"}),
    ([], set()),
])
def test_allow_keys_expands_short_names_and_classes(requested, expected):
    assert allow_keys(requested, set()) == expected


def test_allow_keys_accepts_a_changed_field_of_any_section():
    assert allow_keys(["extra.thing"], {"extra.thing"}) == {"extra.thing"}


@pytest.mark.parametrize("name", ["learnin_rate", "train.no_such_field", "foo.bar", "schedules"])
def test_allow_keys_refuses_unknown_names(name):
    with pytest.raises(UsageError, match=f"--allow-change {name}: no such config field"):
        allow_keys([name], {"train.learning_rate"})


@pytest.mark.parametrize("name, full", [("seed", "train.seed"), ("data_seed", "train.data_seed"),
                                        ("block_size", "data.block_size"), ("model.from_scratch", "model.from_scratch"),
                                        ("model.name_or_path", "model.name_or_path")])
def test_allow_keys_refuses_fields_that_can_never_change(name, full):
    with pytest.raises(UsageError) as e:
        allow_keys([name], set())
    assert f"--allow-change {name}: {full} can never change on resume" in str(e.value)


def test_apply_allowed_allows_only_the_named_training_changes():
    changes = config_changes(config(), config(learning_rate=2e-3, max_steps=200, fp16=True, seed=8))
    apply_allowed(changes, allow_keys(["learning_rate", "fp16"], {c.key for c in changes}))
    assert {c.key: c.refused for c in changes} == {"train.learning_rate": False, "train.fp16": False,
                                                   "train.max_steps": True, "train.seed": True}


# ---------------------------------------------------------------- eval cadence with dropout


def test_eval_cadence_with_dropout_becomes_a_refused_training_change():
    changes = config_changes(config(), config(eval_steps=5, logging_steps=1))
    eval_cadence_with_dropout(changes, set())
    by_key = {c.key: c for c in changes}
    assert by_key["train.eval_steps"].kind == OTHER and by_key["train.eval_steps"].refused
    assert by_key["train.eval_steps"].note == EVAL_WITH_DROPOUT
    assert by_key["train.logging_steps"].kind == FREE and not by_key["train.logging_steps"].refused


def test_eval_cadence_with_dropout_can_be_allowed():
    changes = config_changes(config(), config(eval_steps=5))
    eval_cadence_with_dropout(changes, allow_keys(["eval_steps"], {c.key for c in changes}))
    assert changes[0].kind == OTHER and changes[0].allowed and not changes[0].refused


def test_without_dropout_eval_cadence_stays_free():
    (change,) = config_changes(config(), config(eval_steps=5))
    assert change.kind == FREE and not change.refused


# ---------------------------------------------------------------- the refusal table and hint


def test_format_changes_table():
    changes = config_changes(config(), config(learning_rate=2e-3, logging_steps=1, per_device_train_batch_size=4,
                                              gradient_accumulation_steps=2))
    changes.append(Change("data", "aaaa", "bbbb", DATA, note="the packed training tokens differ"))
    changes.append(Change("train.lr_scheduler_kwargs", None, {"k": "x" * 60}, SCHEDULE))
    lines = format_changes(changes).splitlines()
    assert lines[0].split() == ["field", "checkpoint", "now", "class", "on", "resume"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert "REFUSED (--allow-change learning_rate)" in rows["train.learning_rate"]
    assert "0.001" in rows["train.learning_rate"] and "0.002" in rows["train.learning_rate"]
    assert "applied (does not change training)" in rows["train.logging_steps"]
    assert "ok; same global batch (8)" in rows["train.per_device_train_batch_size"]
    assert "REFUSED (--allow-change data); the packed training tokens differ" in rows["data"]
    # a mapping shows one row per key (model.from_scratch.n_layer 2 -> 4); a long value is still cut
    assert "..." in rows["train.lr_scheduler_kwargs.k"] and "x" * 60 not in rows["train.lr_scheduler_kwargs.k"]
    # the columns line up
    assert len({line.index(" optimizer") for line in lines if " optimizer " in line}) == 1


def test_format_changes_says_why_never():
    (change,) = config_changes(config(), config(seed=8))
    assert "NEVER: the data order and dropout masks" in format_changes([change])


def test_refusal_hint_names_the_flag_and_the_python_form():
    changes = config_changes(config(), config(learning_rate=2e-3, max_steps=200))
    changes.append(Change("data", "aaaa", "bbbb", DATA))
    hint = refusal_hint(changes)
    assert "--allow-change data --allow-change learning_rate --allow-change max_steps" in hint
    assert "allow_change=['data', 'learning_rate', 'max_steps']" in hint
    assert "restore the original values" in hint


def test_refusal_hint_leaves_out_allowed_changes():
    changes = config_changes(config(), config(learning_rate=2e-3, max_steps=200))
    apply_allowed(changes, {"train.max_steps"})
    hint = refusal_hint(changes)
    assert "--allow-change learning_rate (" in hint and "max_steps" not in hint


def test_refusal_hint_for_never_fields_offers_no_flag():
    hint = refusal_hint(config_changes(config(), config(seed=8, learning_rate=2e-3)))
    assert "NEVER cannot change" in hint and "--allow-change" not in hint


def test_the_hints_names_allow_exactly_the_refused_changes():
    """What the hint tells the user to pass is accepted by allow_keys and clears every refusal."""
    new = config(learning_rate=2e-3, max_steps=200, per_device_train_batch_size=2, fp16=True, eval_steps=5)
    new["data"]["source"] = "other.txt"
    changes = config_changes(config(), new, old_world=1, new_world=2)
    eval_cadence_with_dropout(changes, set())
    assert sum(c.refused for c in changes) == 7
    flags = refusal_hint(changes).split("allow_change=")[1].split(")")[0]
    allowed = allow_keys(eval(flags), {c.key for c in changes})
    apply_allowed(changes, allowed)
    eval_cadence_with_dropout(changes, allowed)
    assert [c.key for c in changes if c.refused] == []
