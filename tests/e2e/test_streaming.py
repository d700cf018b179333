"""A streaming run (data.streaming: true) stopped and resumed in a new process is exact: the same per-step losses
and bitwise-identical weights as an uninterrupted one, with the position restored from the checkpoint (no batch
replayed), across the source's end; a resume on another global batch is refused with the reason."""

import json

import pytest

from conftest import assert_bitwise_equal, final_weights, read_metrics, run_cli, train_losses, write_config
from gptresume.checkpoint import verify_checkpoint

pytestmark = pytest.mark.slow

MAX_STEPS = 14


@pytest.fixture(scope="module")
def streaming(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("streaming")
    config = write_config(tmp, corpus_chars=2500, data={"streaming": True, "validation_fraction": 0,
                                                        "shuffle_buffer": 8},
                          train={"max_steps": MAX_STEPS, "save_steps": 4, "gradient_accumulation_steps": 2,
                                 "per_device_train_batch_size": 2})
    ref = run_cli(tmp, "train", config, "--set", f"train.output_dir={tmp / 'ref'}")
    assert ref.returncode == 0, ref.stdout + ref.stderr
    return tmp, config


def test_a_stopped_streaming_run_resumes_exactly(streaming):
    tmp, config = streaming
    run = tmp / "stopped"
    stopped = run_cli(tmp, "train", config, "--set", f"train.output_dir={run}", "--stop-at-step", "9")
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    assert verify_checkpoint(run / "checkpoint-9").valid
    manifest = json.loads((run / "checkpoint-9" / "manifest.json").read_text())
    assert "data_state.json" in json.dumps(manifest["files"])  # the position is committed with the checkpoint
    state = json.loads((run / "checkpoint-9" / "data_state.json").read_text())
    assert state["yielded"] == 9 * 4 and state["epoch"] >= 1  # 36 blocks trained, past the source's end
    assert not (run / "data-cache").exists() or not list((run / "data-cache").glob("*/meta.json"))

    resumed = run_cli(tmp, "train", config, "--set", f"train.output_dir={run}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "checkpoint-9" in resumed.stdout
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == list(range(1, MAX_STEPS + 1))
    assert train_losses(run) == train_losses(tmp / "ref")
    assert_bitwise_equal(final_weights(run), final_weights(tmp / "ref"))


def test_a_streaming_resume_on_another_global_batch_is_refused(streaming):
    tmp, config = streaming
    before = sorted(p.name for p in (tmp / "ref").iterdir())
    refused = run_cli(tmp, "train", config, "--set", f"train.output_dir={tmp / 'ref'}", "--set",
                      f"train.max_steps={MAX_STEPS + 4}", "--allow-change", "max_steps", "--set",
                      "train.per_device_train_batch_size=1", "--allow-change", "batch")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "streaming run" in refused.stderr and "not a sample count" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(p.name for p in (tmp / "ref").iterdir()) == before
