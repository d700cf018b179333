"""Options declared once (gptresume/options.py): the YAML `checkpoint:` section, the `gptresume train` flags and the
keywords of `gptresume.train` all read the one dataclass, and the README's table is generated from it."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from conftest import ROOT
from gptresume.cli import build_parser
from gptresume.config.schema import OPTIONAL_CHECKPOINT_FIELDS, CheckpointConfig, HealthConfig
from gptresume.errors import UsageError
from gptresume.options import FLAG_FIELDS, OPTION_FIELDS, Options, option_docs, options_table

TABLE = re.compile(r"<!-- options: .*? -->\n(.*?)\n<!-- /options -->", re.S)


def test_the_readme_table_is_the_generated_one():
    found = TABLE.search((ROOT / "README.md").read_text())
    assert found, "README.md lacks the options table markers"
    assert found.group(1) == options_table(), "regenerate it: python -m gptresume.options"


def test_every_field_has_a_docstring_and_the_yaml_section_is_the_inherited_part():
    docs = option_docs()
    assert set(docs) == set(OPTION_FIELDS) and all(len(d) > 20 for d in docs.values())
    inherited = [f.name for f in dataclasses.fields(CheckpointConfig)]
    assert list(OPTION_FIELDS)[:len(inherited)] == inherited  # same names, same order, same defaults
    for f in dataclasses.fields(CheckpointConfig):
        assert OPTION_FIELDS[f.name].default == f.default
    # a field added to the checkpoint section is recorded by existing runs' configs only when set: no default twice
    assert OPTIONAL_CHECKPOINT_FIELDS["remote_wait_seconds"] == CheckpointConfig().remote_wait_seconds
    assert inspect.getsource(inspect.getmodule(Options)).count("120.0") == 0


def test_the_cli_flags_are_the_flag_fields_with_their_docstrings_as_help():
    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    flags = {a.dest: a for a in train._actions if a.dest in OPTION_FIELDS}
    assert set(flags) == set(FLAG_FIELDS) >= {"resume", "allow_change", "allow_partial", "overwrite", "adopt",
                                              "stop_at_step", "stop_exit_code"}
    for name, action in flags.items():
        assert action.option_strings == [OPTION_FIELDS[name].metadata["flag"]]
        assert action.help.replace("%%", "%") == option_docs()[name]
    args = parser.parse_args(["train", "c.yaml", "--allow-change", "lr", "--allow-change", "max_steps",
                              "--stop-at-step", "5", "--adopt"])
    assert (args.allow_change, args.stop_at_step, args.adopt, args.resume) == (["lr", "max_steps"], 5, True, "auto")
    assert parser.parse_args(["train", "c.yaml"]).allow_change == []  # not shared between parses


def test_the_yaml_sections_become_options():
    options = Options.of(CheckpointConfig(keep_last=5, remote_wait_seconds=3.0), HealthConfig(on_nan="rollback"),
                         resume="must", stop_at_step=4)
    assert (options.keep_last, options.remote_wait_seconds, options.health.on_nan) == (5, 3.0, "rollback")
    assert (options.resume, options.stop_at_step, options.problems()) == ("must", 4, [])
    assert options.keeps_best({"load_best_model_at_end": True}) and not options.keeps_best({})
    assert Options(every="auto").saves_by_clock and not Options().saves_by_clock


def test_the_api_keywords_are_the_fields():
    # every keyword gptresume.train took before Options existed still works
    for name in ("allow_change", "allow_partial", "keep_last", "keep_best", "every_minutes", "async_save",
                 "stop_at_step", "stop_exit_code", "remote", "remote_options", "remote_keep_last",
                 "remote_wait_seconds"):
        assert name in OPTION_FIELDS
    options = Options.from_keywords({"allow_change": ("learning_rate",), "keep_last": 2, "every_minutes": 1,
                                     "health": {"on_nan": "rollback"}}, defaults={"keep_last": None})
    assert (options.allow_change, options.keep_last, options.health.on_nan) == (["learning_rate"], 2, "rollback")
    assert Options.from_keywords({}, defaults={"keep_last": None}).keep_last is None


@pytest.mark.parametrize("keywords, message", [
    ({"keep_lst": 2}, "gptresume.train(): unknown keyword 'keep_lst'; did you mean 'keep_last'?"),
    ({"keep_last": 0}, "gptresume.train(keep_last=0): must be at least 1, or None to keep every checkpoint"),
    ({"keep_last": "3"}, "gptresume.train(keep_last='3'): expected int or None"),
    ({"keep_last": True}, "gptresume.train(keep_last=True): expected int or None"),
    ({"allow_change": "learning_rate"}, "allow_change=['learning_rate'] (a string would be read character"),
    ({"allow_change": ["learnig_rate"]}, "gptresume.train(allow_change=['learnig_rate']): no such config field"),
    ({"allow_change": ["n_layer"]}, "gptresume.train(allow_change=['n_layer']): no such config field"),
    ({"allow_change": ["model.n_layer"]}, "model.n_layer can never change on resume"),
    ({"stop_at_step": 0}, "gptresume.train(stop_at_step=0): must be at least 1"),
    ({"stop_exit_code": 2}, "gptresume.train(stop_exit_code=2): 2 already means bad input"),
    ({"remote_wait_seconds": -1}, "gptresume.train(remote_wait_seconds=-1): must be zero or more"),
    ({"remote_options": {"endpoint_url": "x"}},
     "gptresume.train(remote_options={'endpoint_url': 'x'}): set without remote="),
    ({"overwrite": True}, "gptresume.train(overwrite=True) only goes with resume='never'"),
    ({"health": {"on_nan": "panic"}}, "gptresume.train(health=...): on_nan: 'panic' is not one of stop, rollback"),
    ({"health": 3}, "gptresume.train(health=3): give a gptresume.config.schema.HealthConfig"),
])
def test_bad_keywords_are_named_with_the_fix(keywords, message):
    with pytest.raises(UsageError) as refused:
        Options.from_keywords(keywords)
    assert message in str(refused.value)


def test_the_cli_names_its_flags_and_yaml_keys():
    problems = Options(keep_last=0, stop_at_step=0, overwrite=True, allow_change=["learnig_rate"]).problems()
    assert problems == ["checkpoint.keep_last: must be at least 1, or null to keep every checkpoint",
                        "--overwrite only goes with --resume never (it deletes the run's checkpoints)",
                        "--stop-at-step: must be at least 1",
                        "--allow-change learnig_rate: no such config field; give a field such as learning_rate, "
                        "train.max_steps or data.source, or a class: optimizer, schedule, batch, data"]
