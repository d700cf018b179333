"""`gptresume resume RUN_DIR` (cli/resume.py): registered, its refusals (exit 2, one message naming what to do) for a
directory that is not a CLI run, a script's run and a recorded config that points elsewhere. Resuming itself, exactly
and with no change reported, is tested with real processes in tests/e2e/test_resume_policy.py."""

from __future__ import annotations

import yaml

from conftest import fake_checkpoint
from gptresume.cli import main


def resume(capsys, *args) -> tuple[int, str]:
    code = main(["resume", *map(str, args)])
    return code, capsys.readouterr().err


def test_a_missing_or_foreign_directory_is_refused(tmp_path, capsys):
    code, err = resume(capsys, tmp_path / "nope")
    assert code == 2 and "no such directory" in err
    code, err = resume(capsys, tmp_path)
    assert code == 2 and "holds no config.yaml: not a run started with `gptresume train`" in err


def test_a_script_run_is_resumed_by_its_script(tmp_path, capsys):
    fake_checkpoint(tmp_path / "run", 4, {"model.safetensors": b"x"})
    code, err = resume(capsys, tmp_path / "run")
    assert code == 2 and "a Python script trained it" in err and "Run that script again to resume" in err
    assert "Traceback" not in err


def test_a_recorded_output_dir_elsewhere_is_refused_with_the_fix(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"output_dir": "runs/demo"}}))
    before = sorted(p.name for p in run.iterdir())
    monkeypatch.chdir(tmp_path)  # where runs/demo is not this run
    code, err = resume(capsys, run)
    assert code == 2 and "train.output_dir is 'runs/demo', which from here is not" in err
    assert f"--set train.output_dir={run}" in err
    assert sorted(p.name for p in run.iterdir()) == before


def test_the_train_options_that_make_sense_are_accepted():
    from gptresume.cli import build_parser

    args = build_parser().parse_args(["resume", "runs/x", "--set", "train.max_steps=9", "--allow-change",
                                      "max_steps", "--stop-at-step", "3", "--stop-exit-code", "143", "--dry-run"])
    assert (args.run_dir, args.overrides, args.allow_change, args.stop_at_step, args.stop_exit_code,
            args.dry_run) == ("runs/x", ["train.max_steps=9"], ["max_steps"], 3, 143, True)
    assert not hasattr(args, "config") and not hasattr(args, "adopt")  # the recorded config, the run's own checkpoints
