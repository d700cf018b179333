"""gptresume.compat: every private behaviour it lists still holds in the installed libraries, each filtered
warning is still emitted, and the checks themselves fail when something changes."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
from pathlib import Path

import pytest

from gptresume import compat
from gptresume.compat import Private


def test_every_private_behaviour_holds_in_the_installed_libraries():
    assert compat.problems() == []


@pytest.mark.parametrize("entry", compat.WARNINGS, ids=lambda e: ".".join(e.target.split(".")[-2:]))
def test_each_filtered_warning_is_still_emitted_and_still_matched(entry):
    emitter = inspect.getsource(compat._resolve(entry.target))
    assert all(fragment in emitter for fragment in entry.source), f"{entry.target} no longer emits {entry.value!r}"
    if entry.value == compat.PIN_MEMORY_WARNING_REGEX:  # a warnings.filterwarnings regex: it must match the text
        assert all(re.match(entry.value, fragment) for fragment in entry.source)
    else:  # a substring filter: it must share the emitted text's literal part
        assert any(fragment in entry.value for fragment in entry.source)


def test_every_noise_filter_is_listed_with_where_it_comes_from():
    assert {w.value for w in compat.WARNINGS} == {*compat.NOISE, compat.PIN_MEMORY_WARNING_REGEX,
                                                 *(text for _, text in compat.SCRIPT_NOISE.values())}
    assert set(compat.WARNINGS) <= set(compat.PRIVATE)


def test_the_installed_versions_are_inside_the_checked_ranges():
    assert compat.check_versions() == []


def test_a_version_outside_the_checked_range_is_named():
    inside = {name: checked for name, (checked, _, _) in compat.CHECKED.items()}
    assert compat.check_versions(inside) == []
    for version in ("5.25.0", "5.23.2", "6.0.0.dev0"):
        [message] = compat.check_versions({**inside, "transformers": version})
        assert message.startswith(f"transformers {version} is outside the range gptresume was checked against")
        assert "python -m gptresume.compat" in message
    assert compat.check_versions({**inside, "torch": "2.13.1+cu130"}) == []  # a local version label is fine


def test_warn_if_unchecked_logs_one_warning_per_library(monkeypatch, caplog):
    monkeypatch.setitem(compat.CHECKED, "torch", ("2.13.0", "0.1", "0.2"))
    with caplog.at_level(logging.WARNING, logger="gptresume.test"):
        assert len(compat.warn_if_unchecked(logging.getLogger("gptresume.test"))) == 1
    assert [r.message.split(" ")[0] for r in caplog.records] == ["torch"]


def _entry(target="json.dumps", kind="call", **fields) -> Private:
    return Private(target, kind, "gptresume/somewhere.py", "a test entry", **fields)


@pytest.mark.parametrize("entry, status", [
    (_entry("json.no_such_function"), "MISSING"),
    (_entry("no_such_module_for_compat.f"), "MISSING"),
    (_entry(kind="override", params=("obj",)), "CHANGED"),  # an override must match every parameter
    (_entry(params=("obj", "no_such_parameter")), "CHANGED"),
    (_entry("string.digits", "file name", value="0123"), "CHANGED"),
    (_entry(source=("no such fragment",)), "CHANGED"),
    (_entry(source=("return", "def dumps")), "CHANGED"),  # both present, in the other order
    (_entry(sha256="0" * 16), "CHANGED"),
])
def test_a_check_fails_naming_the_target_and_the_module_to_recheck(entry, status):
    found = compat.check(entry)
    assert found is not None and found[0] == status
    assert found[1].startswith(entry.target) and found[1].endswith("re-check gptresume/somewhere.py")


def test_a_check_passes_when_the_behaviour_holds():
    sha = hashlib.sha256(inspect.getsource(json.dumps).encode()).hexdigest()[:16]
    for entry in (_entry(params=("obj", "indent")), _entry("string.digits", "file name", value="0123456789"),
                  _entry(source=("def dumps", "return"), sha256=sha)):
        assert compat.check(entry) is None


def test_the_command_prints_every_entry_and_fails_on_a_broken_one(monkeypatch, capsys):
    assert compat.main() == 0
    out = capsys.readouterr().out
    assert all(entry.target in out for entry in compat.PRIVATE) and "MISSING" not in out
    monkeypatch.setattr(compat, "PRIVATE", (*compat.PRIVATE[:2], _entry("json.no_such_function")))
    assert compat.main() == 1
    assert "MISSING  json.no_such_function" in capsys.readouterr().out


# ---------------------------------------------------------------- the checked-in field lists (config/hf_fields.py)


def test_the_checked_in_field_lists_match_the_installed_transformers():
    """The TrainingArguments and GPT2Config fields (and declared defaults) the config check and the resume policy
    read without importing transformers are the installed release's: an upgrade that adds, removes or changes a
    field fails here, naming it."""
    from gptresume.config import hf_fields

    assert hf_fields.problems() == []


def test_every_checked_release_has_field_lists():
    from gptresume.config import hf_fields

    checked, _, _ = compat.CHECKED["transformers"]
    assert hf_fields.release(checked) in hf_fields.TRAINING_ARGUMENTS
    assert hf_fields.release(checked) in hf_fields.GPT2_CONFIG


def test_a_changed_field_list_is_named():
    from gptresume.config import hf_fields

    training, _ = hf_fields.live_tables()
    listed = {k: v for k, v in training.items() if k != "learning_rate"}
    listed["no_such_field"], listed["max_steps"] = 1, 7
    assert sorted(hf_fields.differences("TA", listed, training)) == [
        "TA.learning_rate: not in the checked-in list (a new field)",
        "TA.max_steps: default -1, the checked-in list says 7",
        "TA.no_such_field: in the checked-in list but no longer a field"]


def test_releases_are_keyed_by_major_and_minor():
    from gptresume.config.hf_fields import release

    assert [release(v) for v in ("5.24.0", "5.24.1.dev0", "5.25.0rc1", "6.0", None, "x")] == [
        "5.24", "5.24", "5.25", "6.0", None, None]


SRC = Path(compat.__file__).resolve().parent.parent


def test_every_entry_names_a_module_that_exists_and_defines_its_override():
    for entry in compat.PRIVATE:
        module = SRC / entry.used_in
        assert module.is_file(), f"{entry.target}: {entry.used_in} does not exist"
        if entry.kind == "override":
            name = entry.target.rsplit(".", 1)[1]
            assert re.search(rf"^\s+def {name}\(", module.read_text(), re.M), f"{entry.used_in} has no {name}"


def _overriding_classes():
    from transformers import Trainer
    from transformers.integrations import MLflowCallback, TensorBoardCallback, WandbCallback

    from gptresume.training.tensorboard import ResumableTensorBoardCallback
    from gptresume.training.trackers import ContinuedMLflowCallback, ContinuedWandbCallback
    from gptresume.training.trainer import ResumableTrainerMixin

    return ((ResumableTrainerMixin, Trainer, "transformers.Trainer."),
            (ResumableTensorBoardCallback, TensorBoardCallback, "transformers.integrations.TensorBoardCallback."),
            (ContinuedWandbCallback, WandbCallback, "transformers.integrations.WandbCallback."),
            (ContinuedMLflowCallback, MLflowCallback, "transformers.integrations.MLflowCallback."))


def test_every_private_method_gptresume_overrides_is_listed_under_the_module_that_overrides_it():
    listed = {(e.target, e.used_in) for e in compat.PRIVATE if e.kind == "override"}
    found = []
    for cls, base, prefix in _overriding_classes():
        module = cls.__module__.replace(".", "/") + ".py"
        for name in vars(cls):
            if name.startswith("_") and not name.startswith("__") and hasattr(base, name):
                found.append(name)
                assert (prefix + name, module) in listed, f"{module} overrides {prefix + name}: not in compat.PRIVATE"
    assert {"_get_grad_norm", "_save_checkpoint", "_init_summary_writer"} <= set(found)


def test_trainer_py_names_every_other_module_with_private_behaviour():
    """DESIGN: every private Trainer override is in training/trainer.py; the modules beside it that call or write
    into private Transformers state are named in its docstring, and each is a module compat.py lists."""
    from gptresume.training import trainer

    training = {e.used_in for e in compat.PRIVATE if e.used_in.startswith("gptresume/training/")}
    beside = trainer.__doc__.split("The other private Transformers behaviour lives beside what uses it")[1]
    named = set(re.findall(r"training/\w+\.py", beside))
    assert training - {compat.TRAINER, "gptresume/training/callbacks.py", "gptresume/training/distributed.py"} \
        == {"gptresume/" + n for n in named}
