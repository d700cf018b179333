"""checkpoint.remote against a real S3-compatible server (moto's standalone server on 127.0.0.1, through s3fs):
upload and verification, a resume from the bucket after the local run directory is gone (bitwise equal to an
uninterrupted run, skipping a corrupted and an unfinished remote checkpoint by name), the same after a rollback
(the set-aside checkpoint gone from the bucket, the rollback's data skip carried by the uploaded history.jsonl), an
outage of the server during an upload, retention in the bucket keeping the best checkpoint (keep_best) and the one
a health stop protected (after the disk is lost, too), and a wrong bucket or endpoint refused before anything is
written."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import (
    assert_bitwise_equal,
    assert_refused,
    final_weights,
    run_cli,
    start_cli,
    train_losses,
    write_config,
)
from s3server import CREDENTIALS, S3Server, serving

pytestmark = pytest.mark.slow

BUCKET = "ckpts"


@pytest.fixture(scope="module")
def s3():
    """The server: 127.0.0.1 only, stopped by the fixture."""
    yield from serving(BUCKET)


def env_for(server: S3Server, **more) -> dict:
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": server.endpoint, **more}


def remote_section(server, prefix, **checkpoint) -> dict:
    return {"keep_last": 1, "remote": f"s3://{BUCKET}/{prefix}", "remote_options": {"endpoint_url": server.endpoint},
            **checkpoint}


def config_with_remote(tmp_path, server, prefix, name="remote.yaml", **checkpoint):
    return write_config(tmp_path, name, checkpoint=remote_section(server, prefix, **checkpoint))


def remote_names(server, prefix) -> list[str]:
    fs = server.fs()
    return sorted(p.split(f"{BUCKET}/{prefix}/", 1)[1] for p in fs.find(f"{BUCKET}/{prefix}"))


def test_upload_verify_and_resume_from_the_bucket_bitwise(tmp_path, s3):
    reference = run_cli(tmp_path, "train",
                        write_config(tmp_path, "ref.yaml", train={"output_dir": str(tmp_path / "ref")}))
    assert reference.returncode == 0, reference.stdout + reference.stderr
    config = config_with_remote(tmp_path, s3, "run1")
    env = env_for(s3)

    # a committed stop reported with the code a Kubeflow ExitCode policy restarts
    first = run_cli(tmp_path, "train", config, "--stop-at-step", "8", "--stop-exit-code", "143", env=env)
    assert first.returncode == 143, first.stdout + first.stderr
    # every committed checkpoint uploaded, manifest included, and verified (the ledger records it)
    files = remote_names(s3, "run1")
    manifest = json.loads((tmp_path / "run" / "checkpoint-8" / "manifest.json").read_text())
    assert set(files) == {f"checkpoint-{step}/{rel}" for step in (4, 8) for rel in [*manifest["files"], "manifest.json"]
                          } | {"history.jsonl"}  # the run's events, uploaded after each verified checkpoint
    ledger = json.loads((tmp_path / "run" / "remote-uploads.json").read_text())
    assert set(ledger["verified"]) == {"checkpoint-4", "checkpoint-8"}
    assert "verified" in first.stderr
    # keep_last 1: checkpoint-4 went locally only once its upload was verified; the bucket keeps both
    assert not (tmp_path / "run" / "checkpoint-4").exists()
    checked = run_cli(tmp_path, "verify", f"s3://{BUCKET}/run1", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"ok       s3://{BUCKET}/run1/checkpoint-8" in checked.stdout

    # the machine is gone; the newest remote checkpoint is damaged, a newer one never finished uploading
    shutil.rmtree(tmp_path / "run")
    fs = s3.fs()
    fs.pipe_file(f"{BUCKET}/run1/checkpoint-8/model.safetensors", b"not the weights")
    fs.pipe_file(f"{BUCKET}/run1/checkpoint-12/model.safetensors", b"half an upload")
    second = run_cli(tmp_path, "train", config, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    out = second.stdout + second.stderr
    assert f"skipping remote s3://{BUCKET}/run1/checkpoint-12: no manifest.json" in out
    assert f"skipping remote s3://{BUCKET}/run1/checkpoint-8: model.safetensors: wrong size" in out
    assert f"Downloaded s3://{BUCKET}/run1/checkpoint-4 (verified)" in out
    assert "Resuming from" in out and "checkpoint-4" in out

    ref_losses, losses = train_losses(tmp_path / "ref"), train_losses(tmp_path / "run")
    assert all(losses[s] == ref_losses[s] for s in range(5, 13)), (losses, ref_losses)
    assert_bitwise_equal(final_weights(tmp_path / "ref"), final_weights(tmp_path / "run"))
    status = run_cli(tmp_path, "status", f"s3://{BUCKET}/run1", env=env)
    assert status.returncode == 0, status.stderr
    assert "checkpoint-12" in status.stdout and f"Run s3://{BUCKET}/run1" in status.stdout


def test_server_down_during_an_upload(tmp_path, s3):
    # one attempt per request inside s3fs/botocore, so the outage reaches gptresume's own retries at once
    config = config_with_remote(tmp_path, s3, "run2", remote_wait_seconds=300,
                                remote_options={"endpoint_url": s3.endpoint,
                                                "config_kwargs": {"retries": {"max_attempts": 1}}})
    proc = start_cli(tmp_path, "train", config, env=env_for(s3, GPTRESUME_TEST_UPLOAD_DELAY="4:2"))
    lines = []

    def read_until(fragment, also=lambda: True):
        for line in proc.stdout:
            lines.append(line)
            if fragment in line and also():
                return
        raise AssertionError("".join(lines))

    try:
        read_until("the upload of checkpoint-4 sleeps")
        s3.stop()  # mid-upload: the first file of checkpoint-4 is there, the rest and its manifest are not
        # the failure is reported and retried; training goes on and commits checkpoint-8 meanwhile
        read_until("failed (attempt", lambda: (tmp_path / "run" / "checkpoint-8" / "manifest.json").is_file())
        inspector = S3Server().start()  # the same in-process storage, seen through another port
        try:
            held = inspector.fs().find(f"{BUCKET}/run2")
        finally:
            inspector.stop()
        assert any("checkpoint-4/" in p for p in held), held  # the upload had started...
        assert not any(p.endswith("manifest.json") for p in held), held  # ...and committed nothing
        assert (tmp_path / "run" / "checkpoint-4" / "manifest.json").is_file()  # kept locally: not verified yet
    finally:
        s3.start()  # the server is back, on the same port
    rest = proc.stdout.read()
    out = "".join(lines) + rest
    assert proc.wait(timeout=300) == 0, out
    assert "Upload of checkpoint-4 to s3://" in out and "Training goes on" in out
    files = remote_names(s3, "run2")
    for step in (4, 8, 12):
        assert f"checkpoint-{step}/manifest.json" in files, files
    ledger = json.loads((tmp_path / "run" / "remote-uploads.json").read_text())
    assert set(ledger["verified"]) == {"checkpoint-4", "checkpoint-8", "checkpoint-12"}
    assert not (tmp_path / "run" / "checkpoint-4").exists()  # verified, then removed by keep_last 1
    checked = run_cli(tmp_path, "verify", f"s3://{BUCKET}/run2", env=env_for(s3))
    assert checked.returncode == 0 and checked.stdout.count("ok ") == 3, checked.stdout + checked.stderr


def test_a_rollback_reaches_the_bucket(tmp_path, s3):
    """health.on_nan: rollback sets checkpoint-6 aside (the NaN is at step 8, rollback_steps 4 -> checkpoint-3) and
    the run stops right there. Its remote copy must go, and history.jsonl (the rollback's data skip) must be in
    the bucket: the disk is then lost, and a start from the bucket must continue as the run that kept its disk."""
    sections = {"train": {"max_steps": 12, "save_steps": 3},
                "health": {"on_nan": "rollback", "rollback_steps": 4, "skip_batches": 2}}
    fault = {"GPTRESUME_TEST_FAULT": "nan@8"}
    reference = run_cli(tmp_path, "train", write_config(tmp_path, "ref.yaml", train={
        **sections["train"], "output_dir": str(tmp_path / "ref")}, health=sections["health"]), env=fault)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    config = write_config(tmp_path, "remote.yaml", checkpoint={
        "keep_last": 2, "remote": f"s3://{BUCKET}/run3", "remote_options": {"endpoint_url": s3.endpoint}}, **sections)
    env = env_for(s3)

    stopped = run_cli(tmp_path, "train", config, "--stop-at-step", "8", env={**env, **fault})
    out = stopped.stdout + stopped.stderr
    assert stopped.returncode == 75, out
    assert "Rollback 1 of at most 3" in out
    assert f"Removed from s3://{BUCKET}/run3 (set aside by the rollback): checkpoint-6" in out
    remote = {p.split("/", 1)[0] for p in remote_names(s3, "run3")}
    assert remote == {"checkpoint-3", "history.jsonl", "protected.json"}, remote  # the rollback's target protected
    assert json.loads((tmp_path / "run" / "remote-uploads.json").read_text())["verified"].keys() == {"checkpoint-3"}

    shutil.rmtree(tmp_path / "run")  # the machine is gone
    resumed = run_cli(tmp_path, "train", config, env=env)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out
    assert f"Downloaded s3://{BUCKET}/run3/checkpoint-3 (verified)" in out and "history.jsonl" in out, out
    ref_losses, losses = train_losses(tmp_path / "ref"), train_losses(tmp_path / "run")
    assert all(losses[s] == ref_losses[s] for s in range(4, 13)), (losses, ref_losses)
    assert_bitwise_equal(final_weights(tmp_path / "ref"), final_weights(tmp_path / "run"))


def remote_checkpoint_steps(server, prefix) -> list[int]:
    return sorted({int(p.split("/", 1)[0].split("-")[1]) for p in remote_names(server, prefix)
                   if p.startswith("checkpoint-")})


def test_remote_keep_last_keeps_the_best_checkpoint_in_the_bucket(tmp_path, s3):
    """keep_best with remote_keep_last 1: the bucket keeps the lowest eval loss checkpoint, as the disk does."""
    config = write_config(tmp_path, "best.yaml", corpus_chars=3600,
                          checkpoint=remote_section(s3, "best", keep_best=True, remote_keep_last=1),
                          train={"max_steps": 16, "save_steps": 2, "eval_steps": 2, "learning_rate": 0.05,
                                 "warmup_steps": 0, "lr_scheduler_type": "constant"})
    result = run_cli(tmp_path, "train", config, env=env_for(s3))
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "run"
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "eval_loss" in x]
    best = min(evals, key=lambda r: r["eval_loss"])["step"]
    assert best != 16, "this setting must put the best eval loss before the end, or the test proves nothing"
    assert sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*")) == sorted({best, 16})
    assert remote_checkpoint_steps(s3, "best") == sorted({best, 16})


def test_a_health_stop_protects_its_checkpoint_in_the_bucket(tmp_path, s3):
    """A NaN at step 9 stops the run (health.on_nan: stop) and protects checkpoint-6 in the run directory and in
    the bucket. The disk is lost; the start on a fresh one downloads checkpoint-6 and protected.json and finishes;
    with keep_last 1 and remote_keep_last 1, checkpoint-6 is still in the bucket (and on the new disk)."""
    config = write_config(tmp_path, "health.yaml", checkpoint=remote_section(s3, "health", remote_keep_last=1),
                          train={"max_steps": 12, "save_steps": 3})
    env = env_for(s3)
    stopped = run_cli(tmp_path, "train", config, env={**env, "GPTRESUME_TEST_FAULT": "nan@9"})
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "checkpoint-6" in stopped.stderr and "protected from retention" in stopped.stderr, stopped.stderr
    assert remote_checkpoint_steps(s3, "health") == [6]
    protected = json.loads(s3.fs().cat_file(f"{BUCKET}/health/protected.json"))
    assert protected.keys() == {"checkpoint-6"}

    shutil.rmtree(tmp_path / "run")  # the machine is gone
    resumed = run_cli(tmp_path, "train", config, env=env)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out
    assert f"Downloaded s3://{BUCKET}/health/checkpoint-6 (verified)" in out
    assert f"Downloaded s3://{BUCKET}/health/protected.json" in out
    assert remote_checkpoint_steps(s3, "health") == [6, 12]  # 9 went; the protected 6 stays
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-6"]


@pytest.mark.parametrize("where", ["bucket", "endpoint"])
def test_wrong_bucket_or_endpoint_is_refused_before_anything_is_written(tmp_path, s3, where):
    if where == "bucket":
        url, endpoint = "s3://no-such-bucket/run", s3.endpoint
    else:
        url, endpoint = f"s3://{BUCKET}/run", "http://127.0.0.1:9"  # nothing listens on the discard port
    config = write_config(tmp_path, checkpoint={"remote": url, "remote_options": {
        "endpoint_url": endpoint, "config_kwargs": {"retries": {"max_attempts": 1}}}})
    result = run_cli(tmp_path, "train", config, env=CREDENTIALS)
    assert_refused(result, f"checkpoint.remote: could not write a probe object to {url}",
                   "The specified bucket does not exist" if where == "bucket"
                   else "Could not connect to the endpoint URL")
    assert not (tmp_path / "run").exists()


def test_nested_options_work_and_no_credential_is_written_anywhere(tmp_path, s3):
    """s3fs's nested options (client_kwargs, config_kwargs) reach the client, the credentials come from the
    environment, and no file written locally or in the bucket (config.yaml, history.jsonl, every manifest, the
    uploaded copies) holds them or anything shaped like a key."""
    from gptresume.credentials import secret_paths, why_secret_value

    key_id, secret = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documentation pair
    config = write_config(tmp_path, train={"max_steps": 4, "save_steps": 2}, checkpoint={
        "keep_last": 2, "remote": f"s3://{BUCKET}/nested", "remote_options": {
            "endpoint_url": s3.endpoint, "client_kwargs": {"region_name": "us-east-1"},
            "config_kwargs": {"retries": {"max_attempts": 2}, "connect_timeout": 5}}})
    env = {**CREDENTIALS, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    result = run_cli(tmp_path, "train", config, "--set",
                     "checkpoint.remote_options.client_kwargs.region_name=us-east-1", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "run"
    written = {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl",
                                                                                              ".yaml")}
    fs = s3.fs()
    written.update({p: fs.cat(p) for p in fs.find(f"{BUCKET}/nested") if p.endswith((".json", ".jsonl"))})
    assert any(name.endswith("history.jsonl") and "/nested/" in name for name in written)
    assert sum(name.endswith("manifest.json") for name in written) == 4  # two checkpoints, here and there
    for name, data in written.items():
        assert key_id.encode() not in data and secret.encode() not in data, name
    for name in [n for n in written if n.endswith("manifest.json")] + [str(run / "config.yaml")]:
        recorded = json.loads(written[name]) if name.endswith(".json") else __import__("yaml").safe_load(written[name])
        options = (recorded.get("config", recorded))["checkpoint"]["remote_options"]
        assert options["client_kwargs"] == {"region_name": "us-east-1"}, name  # recorded as given: not a secret
        assert secret_paths(options, "o") == [], name
    for line in (run / "history.jsonl").read_text().splitlines():
        assert not [a for a in json.loads(line).get("argv", []) if why_secret_value(a)]
