"""The CLI as users run it: help text, bad input (exit 2, one message, no traceback, RUN_DIR untouched), modes."""

import pytest

from conftest import ROOT, assert_refused, run_cli, snapshot, write_config


def test_help_texts_show_examples(tmp_path):
    top = run_cli(tmp_path, "--help")
    assert top.returncode == 0 and "train" in top.stdout and "verify" in top.stdout
    train = run_cli(tmp_path, "train", "--help")
    assert train.returncode == 0
    for text in ("--resume", "auto|never|must|PATH", "--set", "examples:", "75"):
        assert text in train.stdout
    assert "examples:" in run_cli(tmp_path, "verify", "--help").stdout


def test_console_script_is_installed(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("gptresume", path=str(Path(sys.executable).parent))
    assert exe, "console script gptresume not installed next to the interpreter"
    assert subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.startswith("gptresume ")


def test_missing_config_file(tmp_path):
    assert_refused(run_cli(tmp_path, "train", "nope.yaml"), "'nope.yaml' not found")


@pytest.mark.parametrize("override, fragment", [
    ("train.learnin_rate=1", "did you mean 'learning_rate'"),
    ("data.block_size=wide", "data.block_size: expected int, got 'wide'"),
    ("data.source=missing/*.txt", "no file matches 'missing/*.txt'"),
    ("model.from_scratch=null", "set exactly one of name_or_path"),
])
def test_bad_input_changes_nothing(tmp_path, override, fragment):
    config = write_config(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoint-3").mkdir(parents=True)  # something there already: it must stay exactly as it is
    (run_dir / "checkpoint-3" / "marker").write_text("x")
    before = snapshot(run_dir)
    assert_refused(run_cli(tmp_path, "train", config, "--set", override), fragment)
    assert snapshot(run_dir) == before


def test_bad_data_and_model_paths(tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("only a few words")
    assert_refused(run_cli(tmp_path, "train", config, "--set", f"data.source={tmp_path / 'empty.txt'}"),
                   "holds no documents")
    assert_refused(run_cli(tmp_path, "train", config, "--set", f"data.source={tmp_path / 'short.txt'}"),
                   "fewer than one block")
    result = run_cli(tmp_path, "train", config, "--set", "model.from_scratch=null",
                     "--set", "model.tokenizer.train_vocab_size=null", "--set", "model.name_or_path=./no/such/model")
    assert_refused(result, "model.name_or_path: directory './no/such/model' does not exist")
    assert not (tmp_path / "run").exists()


def test_resume_modes_refuse_cleanly(tmp_path):
    config = write_config(tmp_path)
    assert_refused(run_cli(tmp_path, "train", config, "--resume", "must"), "--resume must: no valid checkpoint")
    assert_refused(run_cli(tmp_path, "train", config, "--resume", str(tmp_path / "nowhere")), "no such directory")
    assert_refused(run_cli(tmp_path, "train", config, "--overwrite"), "--overwrite only goes with --resume never")
    assert not (tmp_path / "run").exists()


def test_verify_bad_paths(tmp_path):
    assert_refused(run_cli(tmp_path, "verify", tmp_path / "none"), "not a directory")
    assert_refused(run_cli(tmp_path, "verify", tmp_path), "holds no checkpoint")


def test_makefile_and_ci_use_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()
