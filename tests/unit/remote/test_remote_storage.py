"""gptresume/remote/ in-process: URL rules, the upload ledger and retention's guard, one checkpoint up and down
(file:// and a real S3-compatible server on 127.0.0.1), remote retention, the uploader's retries, the storage
probe, and the committed-stop exit code."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from conftest import fake_checkpoint
from gptresume.checkpoint import apply_retention, list_checkpoints, write_manifest
from gptresume.errors import STOP_EXIT_CODE_ENV, UsageError, resolve_stop_exit_code
from gptresume.remote.fetch import fetch_newest_valid
from gptresume.remote.ledger import Ledger
from gptresume.remote.probe import check_remote
from gptresume.remote.rollback import after_rollback
from gptresume.remote.transfer import (
    delete_remote_checkpoint,
    download_checkpoint,
    remote_checkpoints,
    remote_retention,
    upload_checkpoint,
    verify_uploaded,
)
from gptresume.remote.uploader import Uploader
from gptresume.remote.url import Remote, output_dir_url_problem, remote_problems, scheme


pytestmark = pytest.mark.usefixtures("no_fsync")  # tests/conftest.py


def make_checkpoint(run_dir: Path, step: int) -> Path:
    return fake_checkpoint(run_dir, step, {"model.safetensors": bytes([step % 256]) * 1000, "sub/shard.bin": b"s" * 10,
                                           "trainer_state.json": json.dumps({"global_step": step, "log_history": []})})


@pytest.fixture
def remote(tmp_path):
    return Remote(f"file://{tmp_path}/bucket/run", {"auto_mkdir": True})


# ---------------------------------------------------------------- URLs and config


def test_scheme_and_output_dir_url_refusal():
    assert scheme("s3://b/x") == "s3" and scheme("runs/demo") is None and scheme("C:\\runs") is None
    why = output_dir_url_problem("s3://my-bucket/run1")
    assert "train.output_dir: s3://my-bucket/run1 is a URL" in why and "checkpoint.remote: s3://my-bucket/run1" in why
    assert output_dir_url_problem("runs/demo") is None


def test_remote_problems_name_the_field():
    assert remote_problems("s3://bucket/run", {"endpoint_url": "http://x"}, 2) == []
    assert "is not a URL" in remote_problems("bucket/run", None, None)[0]
    assert "names no bucket" in remote_problems("s3://", None, None)[0]
    (secret,) = remote_problems("s3://b/r", {"secret": "x", "endpoint_url": "y"}, None)
    assert secret.startswith("checkpoint.remote_options.secret: 'secret' is a credential; credentials do not belong "
                             "in the config")
    assert "remote_keep_last" in remote_problems("s3://b/r", None, 0)[0]
    assert "without checkpoint.remote" in remote_problems(None, {"endpoint_url": "y"}, None)[0]


def test_config_refuses_a_url_as_output_dir():
    from gptresume.config.load import check_without_transformers
    from gptresume.errors import ConfigError

    raw = {"model": {"from_scratch": {}, "tokenizer": {"train_vocab_size": 400}}, "train": {"output_dir": "s3://b/run"}}
    with pytest.raises(ConfigError, match="use|checkpoint.remote: s3://b/run"):
        check_without_transformers(raw)


def test_stop_exit_code(monkeypatch):
    monkeypatch.delenv(STOP_EXIT_CODE_ENV, raising=False)
    assert resolve_stop_exit_code(None) == 75
    assert resolve_stop_exit_code(143) == 143
    monkeypatch.setenv(STOP_EXIT_CODE_ENV, "175")
    assert resolve_stop_exit_code(None) == 175
    for bad in (0, 1, 2, 256, -1):
        with pytest.raises(UsageError):
            resolve_stop_exit_code(bad, "--stop-exit-code")
    monkeypatch.setenv(STOP_EXIT_CODE_ENV, "x")
    with pytest.raises(UsageError, match=STOP_EXIT_CODE_ENV):
        resolve_stop_exit_code(None)
    from gptresume.training.outcome import Outcome

    assert Outcome("stopped", 8, None, stop_code=143).exit_code == 143
    assert Outcome("complete", 8, None, stop_code=143).exit_code == 0


# ---------------------------------------------------------------- ledger and local retention


def test_local_retention_keeps_a_checkpoint_until_its_upload_is_verified(tmp_path, remote):
    run = tmp_path / "run"
    for step in (10, 20, 30):
        make_checkpoint(run, step)
    ledger = Ledger(run, remote.url)
    assert apply_retention(run, 1, run / "checkpoint-30", may_delete=ledger.may_delete) == []
    ledger.record(run / "checkpoint-10")
    assert apply_retention(run, 1, run / "checkpoint-30", may_delete=ledger.may_delete) == [run / "checkpoint-10"]
    assert Ledger(run, remote.url).is_verified(run / "checkpoint-20") is False  # read back from disk
    assert "checkpoint-10" in Ledger(run, remote.url).names()
    assert Ledger(run, "s3://another/url").names() == []  # a ledger is for one remote


def test_ledger_knows_the_commit_not_just_the_name(tmp_path, remote):
    run = tmp_path / "run"
    ckpt = make_checkpoint(run, 10)
    ledger = Ledger(run, remote.url)
    ledger.record(ckpt)
    shutil.rmtree(ckpt)
    make_checkpoint(run, 10)  # saved again (another timeline): a different manifest
    (ckpt / "model.safetensors").write_bytes(b"other")
    write_manifest(ckpt, step=10, epoch=1.0, config={}, config_fingerprint="d", data_fingerprint=None, world_size=1)
    assert not ledger.may_delete(ckpt)


# ---------------------------------------------------------------- one checkpoint up and down


def test_upload_puts_every_file_then_the_manifest_and_verifies(tmp_path, remote):
    ckpt = make_checkpoint(tmp_path / "run", 10)
    upload_checkpoint(remote, ckpt)
    assert remote_checkpoints(remote) == ["checkpoint-10"]
    assert verify_uploaded(remote, "checkpoint-10", tmp_path) == []
    assert not list((tmp_path).glob(".remote-verify-*"))  # scratch copy removed
    got = download_checkpoint(remote, "checkpoint-10", tmp_path / "down" / "checkpoint-10")
    assert got.valid and (tmp_path / "down" / "checkpoint-10" / "sub" / "shard.bin").read_bytes() == b"s" * 10


def test_a_corrupted_or_unfinished_remote_checkpoint_is_skipped_by_name(tmp_path, remote, caplog):
    run = tmp_path / "run"
    for step in (10, 20, 30):
        upload_checkpoint(remote, make_checkpoint(run, step))
    shutil.rmtree(run)
    root = Path(remote.root)
    (root / "checkpoint-30" / "sub" / "shard.bin").write_bytes(b"x" * 10)  # same size, other bytes
    (root / "checkpoint-20" / "manifest.json").unlink()  # an upload cut short before its manifest
    run.mkdir()
    with caplog.at_level(logging.WARNING):
        path, skipped = fetch_newest_valid(remote, run)
    assert path == run / "checkpoint-10" and list_checkpoints(run) == [path]
    assert skipped[0].startswith(f"skipping remote {remote.url}/checkpoint-30: sub/shard.bin: wrong")
    assert skipped[1] == f"skipping remote {remote.url}/checkpoint-20: no manifest.json (the upload never finished)"
    assert Ledger(run, remote.url).is_verified(path)
    assert not list(run.glob(".remote-fetch*"))
    assert verify_uploaded(remote, "checkpoint-30", tmp_path)[0].startswith("sub/shard.bin: wrong")


def test_remote_retention_deletes_only_below_the_newest_verified(tmp_path, remote):
    run = tmp_path / "run"
    for step in (10, 20, 30, 40):
        upload_checkpoint(remote, make_checkpoint(run, step))
    (Path(remote.root) / "checkpoint-5").mkdir()  # a partial upload (no manifest), older than everything
    # checkpoint-30's upload was just verified (40 is ahead of it): keep_last 2 keeps 20 and 30, and everything
    # newer; the partial upload goes
    assert remote_retention(remote, 2, "checkpoint-30") == ["checkpoint-10", "checkpoint-5"]
    assert remote_checkpoints(remote) == ["checkpoint-20", "checkpoint-30", "checkpoint-40"]
    assert remote_retention(remote, 3, "checkpoint-30") == []  # fewer than kept
    assert remote_retention(remote, None, "checkpoint-20") == []
    assert delete_remote_checkpoint(remote, "checkpoint-20")
    assert remote_checkpoints(remote) == ["checkpoint-30", "checkpoint-40"]


def test_set_aside_copies_are_deleted_only_while_they_are_that_commit(tmp_path, remote):
    """A rollback (remote/rollback.py): the remote copies of what it set aside go, the ledger stops counting them,
    history.jsonl is uploaded and comes back to a wiped run directory with the newest checkpoint."""
    from gptresume.health.rollback import set_aside_after

    run = tmp_path / "run"
    ledger = Ledger(run, remote.url)
    for step in (10, 20, 30):
        ckpt = make_checkpoint(run, step)
        upload_checkpoint(remote, ckpt)
        ledger.record(ckpt)
    (run / "history.jsonl").write_text('{"event": "rollback", "to_step": 10, "skip_samples": 8}\n')
    newer = make_checkpoint(tmp_path / "other", 30)  # checkpoint-30 saved again since, in another timeline
    (newer / "model.safetensors").write_bytes(b"other")
    write_manifest(newer, step=30, epoch=1.0, config={}, config_fingerprint="d", data_fingerprint=None, world_size=1)
    upload_checkpoint(remote, newer)
    moved = set_aside_after(run, 10)
    assert after_rollback(remote, run, moved) == ["checkpoint-20"]  # the newer commit named checkpoint-30 stays
    assert remote_checkpoints(remote) == ["checkpoint-10", "checkpoint-30"]
    again = Ledger(run, remote.url)
    assert again.names() == ["checkpoint-10"] and again.set_aside == {}
    assert (Path(remote.root) / "history.jsonl").read_text() == (run / "history.jsonl").read_text()

    shutil.rmtree(run)
    run.mkdir()
    (Path(remote.root) / "checkpoint-30" / "manifest.json").unlink()
    path, _ = fetch_newest_valid(remote, run)
    assert path == run / "checkpoint-10" and '"skip_samples": 8' in (run / "history.jsonl").read_text()



def test_a_set_aside_copy_the_storage_kept_is_deleted_after_the_next_upload(tmp_path, remote, caplog):
    from gptresume.health.rollback import set_aside_after

    run = tmp_path / "run"
    ledger = Ledger(run, remote.url)
    for step in (10, 20):
        ckpt = make_checkpoint(run, step)
        upload_checkpoint(remote, ckpt)
        ledger.record(ckpt)
    bucket = tmp_path / "bucket"
    bucket.rename(tmp_path / "away")
    bucket.write_text("a file where the remote directory should be")  # the storage unreachable at the rollback
    with caplog.at_level(logging.WARNING):
        assert after_rollback(remote, run, set_aside_after(run, 10)) == []
    assert "Set-aside checkpoints still there: checkpoint-20" in caplog.text
    assert Ledger(run, remote.url).set_aside.keys() == {"checkpoint-20"}  # kept for the retry
    bucket.unlink()
    (tmp_path / "away").rename(bucket)
    (run / "history.jsonl").write_text('{"event": "rollback"}\n')
    uploader = Uploader(remote, run).start()
    try:
        uploader.submit(make_checkpoint(run, 15))
        assert uploader.drain(30)
    finally:
        uploader.close()
    assert remote_checkpoints(remote) == ["checkpoint-10", "checkpoint-15"]
    assert Ledger(run, remote.url).set_aside == {}
    assert (bucket / "run" / "history.jsonl").read_text() == '{"event": "rollback"}\n'


def test_uploader_retries_until_the_remote_works(tmp_path, caplog):
    run = tmp_path / "run"
    make_checkpoint(run, 10)  # committed before the uploader started: queued by start()
    blocker = tmp_path / "bucket"
    blocker.write_text("a file where the remote directory should be")
    remote = Remote(f"file://{blocker}/run", {"auto_mkdir": True})
    uploader = Uploader(remote, run, keep_last=1, backoff=(0.05, 0.1)).start()
    try:
        with caplog.at_level(logging.WARNING):
            assert not uploader.drain(0.5)  # failing: retried, reported, still pending
        assert "Upload of checkpoint-10 to" in caplog.text and "retrying" in caplog.text
        assert uploader.failures >= 2 and not uploader.may_delete(run / "checkpoint-10")
        blocker.unlink()  # the remote comes back
        uploader.submit(make_checkpoint(run, 20))
        assert uploader.drain(30)
    finally:
        uploader.close()
    assert uploader.may_delete(run / "checkpoint-10") and uploader.may_delete(run / "checkpoint-20")
    assert remote_checkpoints(remote) == ["checkpoint-20"]  # remote_keep_last 1, after 20 was verified
    assert [h["name"] for h in uploader.history] == ["checkpoint-10", "checkpoint-20"]


# ---------------------------------------------------------------- a real S3-compatible server


def test_probe_and_round_trip_through_s3(tmp_path, s3):
    remote = Remote("s3://unit-bucket/run", {"endpoint_url": s3.endpoint})
    check_remote(remote)
    assert s3.fs().find("unit-bucket") == []  # the probe object is gone
    upload_checkpoint(remote, make_checkpoint(tmp_path / "run", 10))
    assert verify_uploaded(remote, "checkpoint-10", tmp_path) == []
    with pytest.raises(UsageError, match="could not write a probe object to s3://no-such-bucket/run: "):
        check_remote(Remote("s3://no-such-bucket/run", {"endpoint_url": s3.endpoint}))
