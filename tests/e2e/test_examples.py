"""Every shipped script runs as its docstring says (the shipped YAML configs are validated in
tests/unit/config/test_config.py::test_shipped_examples_validate)."""

from __future__ import annotations

import signal

import pytest

from conftest import ROOT, run_script, start_command, wait_for_step

pytestmark = pytest.mark.slow


def test_my_trainer_script_stops_and_resumes(tmp_path):
    """examples/my_trainer_script.py: SIGTERM -> 75 with a committed checkpoint; a changed learning rate is refused
    with exit 2 and the flag to accept it; the same command again resumes and completes, and once more returns the
    finished run's result."""
    out = tmp_path / "run"
    script, args = ROOT / "examples" / "my_trainer_script.py", [out, "--max-steps", "30"]
    proc = start_command(tmp_path, args, script=script, stream=True)
    assert wait_for_step(out, 10, proc), proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, output
    refused = run_script(tmp_path, script, *args, "--lr", "5e-4")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "train.learning_rate" in refused.stderr and "Traceback" not in refused.stderr
    done = run_script(tmp_path, script, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "complete at step 30" in done.stdout
    assert (out / "checkpoint-30" / "manifest.json").is_file()
    again = run_script(tmp_path, script, *args)  # a re-run of the finished run: its recorded result, exit 0
    assert again.returncode == 0 and "already complete at step 30; training loss" in again.stdout, again.stderr
