"""The CLI registry (every module in gptresume/cli/ is a registered command with examples in its --help) and
imports only where needed: --help, status, verify, diff, every config error found without Transformers (a misspelt
key in any section included) and a `train` refused because its run is busy finish without importing torch,
transformers or datasets.

The import checks run `cli.main` in a child interpreter (one per command, about 0.3 s each) and read its
`sys.modules` at the end.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import gptresume.cli as cli
from gptresume.checkpoint import manifest as manifest_module
from gptresume.rundir import LOCK_NAME, run_lock

HEAVY = ("torch", "transformers", "datasets")

# Run cli.main(ARGS) and report the exit code and which heavy modules were imported (last line of stdout).
CHILD = f"""\
import json, sys
from gptresume.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def run_main(cwd: Path, *args) -> tuple[int, list[str], subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.stdout.strip(), proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["code"], result["heavy"], proc, elapsed


# ---------------------------------------------------------------- the registry


def test_every_module_in_cli_is_a_registered_command():
    modules = {m.name for m in pkgutil.iter_modules(cli.__path__)}
    registered = [cli.command_name(m) for m in cli.COMMANDS]
    assert sorted(registered) == sorted(modules)
    assert len(set(registered)) == len(registered)
    for module in cli.COMMANDS:
        assert callable(module.add_parser) and callable(module.run), module.__name__


@pytest.mark.parametrize("command", [cli.command_name(m) for m in cli.COMMANDS])
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"gptresume {command} " in text
    assert "-v, --verbose" in text


def test_verbose_before_or_after_the_command():
    parser = cli.build_parser()
    assert parser.parse_args(["-v", "status", "runs/x"]).verbose is True
    assert parser.parse_args(["status", "runs/x", "-v"]).verbose is True
    assert parser.parse_args(["verify", "--verbose", "runs/x"]).verbose is True
    assert parser.parse_args(["status", "runs/x"]).verbose is False
    assert parser.parse_args(["train", "c.yaml", "--set", "a.b=1"]).func is cli.train.run


# ---------------------------------------------------------------- no torch/transformers where they are not needed


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    """A run directory with two committed checkpoints whose configs differ in the learning rate (tiny fake files;
    the manifests are written by gptresume itself, without the library versions, which would import torch)."""
    monkeypatch.setattr(manifest_module, "library_versions", lambda: {"gptresume": "test"})
    run = tmp_path / "run"
    for step, lr in ((10, 1e-3), (20, 2e-3)):
        ckpt = run / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        state = {"global_step": step, "epoch": step / 100,
                 "log_history": [{"step": step, "loss": 3.0, "learning_rate": lr}]}
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
        (ckpt / "model.safetensors").write_bytes(b"x" * 100)
        config = {"model": {"from_scratch": {"n_layer": 2}}, "data": {"block_size": 32},
                  "train": {"output_dir": str(run), "learning_rate": lr}, "checkpoint": {"keep_last": 3}}
        manifest_module.write_manifest(ckpt, step=step, epoch=step / 100, config=config, config_fingerprint=str(lr),
                                       data_fingerprint="d", world_size=1)
    return run


def test_help_imports_nothing_heavy(tmp_path):
    code, heavy, proc, _ = run_main(tmp_path, "--help")
    assert code == 0 and "status" in proc.stdout
    assert heavy == []


def test_status_imports_nothing_heavy(run_dir):
    code, heavy, proc, _ = run_main(run_dir.parent, "status", run_dir)
    assert code == 0, proc.stderr
    assert "checkpoint-20" in proc.stdout
    assert heavy == []


def test_verify_imports_nothing_heavy(run_dir):
    code, heavy, proc, _ = run_main(run_dir.parent, "verify", run_dir)
    assert code == 0, proc.stderr
    assert proc.stdout.count("ok ") == 2
    assert heavy == []


def test_diff_of_two_checkpoints_imports_nothing_heavy(run_dir):
    code, heavy, proc, _ = run_main(run_dir.parent, "diff", run_dir / "checkpoint-10", run_dir / "checkpoint-20")
    assert code == 0, proc.stderr
    assert "learning_rate" in proc.stdout
    assert heavy == []


VALID = {"model": {"from_scratch": {"n_layer": 2}, "tokenizer": {"train_vocab_size": 400}},
         "data": {"block_size": 32}, "train": {"output_dir": "run", "max_steps": 5}}


def _with(section: str, values: dict) -> dict:
    raw = json.loads(json.dumps(VALID))
    raw.setdefault(section, {}).update(values)
    return raw


@pytest.mark.parametrize("text, extra, fragment", [
    (None, (), "'missing.yaml' not found"),
    ("model: {from_scratch: {n_layer: 2}\n", (), "not valid YAML"),
    (yaml.safe_dump(_with("data", {"blok_size": 64})), (), "data: unknown key 'blok_size'; did you mean 'block_size'?"),
    (yaml.safe_dump({**VALID, "checkpoints": {}}), (), "did you mean 'checkpoint'?"),
    (yaml.safe_dump(_with("checkpoint", {"keep_last": "three"})), (), "checkpoint.keep_last: expected int"),
    (yaml.safe_dump(_with("model", {"resize_embeddings": "yes"})), (), "model.resize_embeddings: expected bool"),
    (yaml.safe_dump(_with("train", {"save_total_limit": 2})), (), "use checkpoint.keep_last instead"),
    (yaml.safe_dump(VALID), ("--set", "learning_rate=1"), "expected section.key=value"),
    (yaml.safe_dump(VALID), ("--set", "data.block_size=1"), "data.block_size: must be at least 2"),
    # the checked-in TrainingArguments and GPT2Config field lists (config/hf_fields.py): no transformers for a typo
    (yaml.safe_dump(_with("train", {"learnin_rate": 1e-3})), (), "train: unknown key 'learnin_rate'; did you mean "
                                                                 "'learning_rate'?"),
    (yaml.safe_dump(VALID), ("--set", "model.from_scratch.n_layr=2"), "model.from_scratch: unknown key 'n_layr'; "
                                                                      "did you mean 'n_layer'?"),
    (yaml.safe_dump(VALID), ("--set", "model.from_scratch.vocab_size=9"), "vocab_size: set from the tokenizer"),
], ids=["missing-file", "bad-yaml", "data-key", "top-level-key", "checkpoint-type", "model-type", "train-refused",
        "set-syntax", "data-value", "train-key", "from-scratch-key", "from-scratch-vocab"])
def test_config_errors_import_nothing_heavy(tmp_path, text, extra, fragment):
    path = tmp_path / ("missing.yaml" if text is None else "config.yaml")
    if text is not None:
        path.write_text(text)
    code, heavy, proc, _ = run_main(tmp_path, "train", path.name, *extra)
    assert code == 2
    assert fragment in proc.stderr and "Traceback" not in proc.stderr
    assert heavy == []
    assert not (tmp_path / "run").exists()


def test_train_on_a_busy_run_is_refused_at_once(tmp_path, capsys):
    run = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_with("train", {"output_dir": str(run)})))
    with run_lock(run):  # another gptresume process training this run
        assert (run / LOCK_NAME).is_file()
        code, heavy, proc, elapsed = run_main(tmp_path, "train", config)
    with capsys.disabled():
        print(f"\n  busy run refused in {elapsed:.2f} s (child interpreter included)")
    assert code == 2
    assert "in use by another gptresume process" in proc.stderr and "Traceback" not in proc.stderr
    assert heavy == []
    assert elapsed < 5


def test_diff_with_a_bad_config_imports_nothing_heavy(run_dir):
    """`diff` reads a YAML config through load_config: its errors are found without transformers too."""
    config = run_dir.parent / "config.yaml"
    config.write_text(yaml.safe_dump(_with("data", {"blok_size": 64})))
    code, heavy, proc, _ = run_main(run_dir.parent, "diff", run_dir, config)
    assert code == 2
    assert "did you mean 'block_size'?" in proc.stderr and "Traceback" not in proc.stderr
    assert heavy == []
