"""One retention policy and one discovery for the run directory and the bucket, against a real S3-compatible server
on 127.0.0.1 (moto, through s3fs): the same decisions for the same listing (random listings materialized on disk
and in the bucket), remote_keep_last with keep_best and protected checkpoints through the uploader, the newest valid
remote checkpoint never deleted while discovery skips newer damaged ones, and the books that carry the protection
to a wiped disk."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from conftest import fake_checkpoint
from gptresume.checkpoint import protect
from gptresume.checkpoint.retention import Listed, retain, survey, to_delete
from gptresume.checkpoint.storage import FsspecStorage, LocalStorage
from gptresume.remote.fetch import fetch_newest_valid
from gptresume.remote.transfer import remote_checkpoints, remote_retention, upload_checkpoint
from gptresume.remote.uploader import Uploader
from gptresume.remote.url import Remote

pytestmark = pytest.mark.usefixtures("no_fsync")  # tests/conftest.py

BUCKET = "retention-bucket"


@pytest.fixture(scope="module")
def server(s3):
    """tests/conftest.py's S3 server, with this module's bucket."""
    s3.create_bucket(BUCKET)
    return s3


def state(step: int, evals: dict[int, float] | None = None) -> str:
    history = [{"step": 1, "loss": 3.0}, *({"step": s, "eval_loss": v} for s, v in sorted((evals or {}).items()))]
    return json.dumps({"global_step": step, "log_history": history})


def make_checkpoint(run: Path, step: int, commit: bool = True, evals=None) -> Path:
    return fake_checkpoint(run, step, {"model.safetensors": bytes([step % 256]) * 200, "sub/rng_state_1.pth": b"r" * 7,
                                       "trainer_state.json": state(step, evals)}, commit=commit)


def bucket_of(server, prefix: str) -> Remote:
    """s3://BUCKET/PREFIX on `server`."""
    return Remote(f"s3://{BUCKET}/{prefix}", {"endpoint_url": server.endpoint})


# ---------------------------------------------------------------- the same decisions, on disk and in the bucket


def materialize(rng: random.Random, run: Path) -> tuple[list[Listed], str, dict]:
    """A random run directory: committed, damaged, uncommitted and set-aside checkpoints, a protected.json, and
    evaluations in the newest's trainer state. Returns the listing it is meant to be, the newest name, the policy."""
    steps = sorted(rng.sample(range(1, 40), rng.randint(2, 7)))
    newest = rng.choice(steps)
    listing = []
    for step in steps:
        kind = "valid" if step == newest else rng.choice(["valid", "valid", "valid", "damaged", "uncommitted"])
        evals = {s: rng.uniform(1, 3) for s in steps} if step == newest else None
        ckpt = make_checkpoint(run, step, commit=kind != "uncommitted", evals=evals)
        damage = rng.choice(["a file missing", "a file truncated", "a torn manifest"])
        if kind == "damaged" and damage == "a file missing":
            (ckpt / "sub" / "rng_state_1.pth").unlink()
        elif kind == "damaged" and damage == "a file truncated":
            (ckpt / "model.safetensors").write_bytes(b"short")
        elif kind == "damaged":
            (ckpt / "manifest.json").write_text("{torn")
        listing.append(Listed(ckpt.name, step, kind != "uncommitted", kind == "valid"))
    for step in rng.sample(range(1, 40), rng.randint(0, 2)):
        name = f"checkpoint-{step}.replaced-20250101-000000-{step}"
        (run / name).mkdir()
        (run / name / "model.safetensors").write_bytes(b"old")
        listing.append(Listed(name, step, set_aside=True))
    names = [e.name for e in listing if not e.set_aside]
    protected = set(rng.sample(names, rng.randint(0, 2)))
    if protected:
        (run / "protected.json").write_text(json.dumps({n: "test" for n in protected}))
    policy = {"keep_last": rng.choice([None, 1, 1, 2, 3]), "keep_best": rng.random() < 0.5}
    best = min((v, s) for s, v in evals_of(run / newest_name(newest)).items())[1]
    expected = to_delete(listing, newest_name(newest), policy["keep_last"], best if policy["keep_best"] else None,
                         protected)
    return listing, newest_name(newest), {**policy, "expected": expected}


def newest_name(step: int) -> str:
    return f"checkpoint-{step}"


def evals_of(ckpt: Path) -> dict[int, float]:
    history = json.loads((ckpt / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e}


def as_surveyed(e: Listed, newest: str) -> Listed:
    """What `survey` reports for `e`: validity is not checked where retention does not read it."""
    if e.set_aside or (e.committed and e.name != newest and e.step < int(newest.split("-")[1])):
        return e
    return Listed(e.name, e.step, e.committed, None)


def by_name(entry: Listed) -> str:
    return entry.name


def remaining(storage) -> list[str]:
    return sorted(n for n in storage.listdir() if n.startswith("checkpoint-"))


def test_the_same_decisions_in_the_run_directory_and_the_bucket(tmp_path, server):
    rng = random.Random(20250101)
    fs = bucket_of(server, "same").fs  # one client for every listing
    decisions = set()
    for i in range(12):
        source = tmp_path / f"source-{i}"
        listing, newest, policy = materialize(rng, source)
        local = tmp_path / f"local-{i}"
        shutil.copytree(source, local)
        fs.pipe({f"{BUCKET}/same/{i}/{p.relative_to(source).as_posix()}": p.read_bytes()
                 for p in source.rglob("*") if p.is_file()})  # one batch of PUTs
        remote = FsspecStorage(fs, f"{BUCKET}/same/{i}", f"s3://{BUCKET}/same/{i}")
        assert remaining(remote) == remaining(LocalStorage(local))  # the same listing
        if i == 0:
            for storage in (LocalStorage(local), remote):  # seen the same, valid or not
                assert sorted(survey(storage, newest), key=by_name) == sorted(
                    (as_surveyed(e, newest) for e in listing), key=by_name)
        got = {where: (retain(storage, policy["keep_last"], newest, policy["keep_best"]), remaining(storage))
               for where, storage in (("disk", LocalStorage(local)), ("bucket", remote))}
        assert got["disk"] == got["bucket"], (i, listing, policy)
        assert got["disk"][0] == policy["expected"], (i, listing, policy)
        decisions.add(bool(policy["expected"]))
    assert decisions == {True, False}  # some listings delete something, some nothing


# ---------------------------------------------------------------- remote_keep_last with keep_best and protection


def run_uploader(remote: Remote, run: Path, steps, **options) -> None:
    uploader = Uploader(remote, run, backoff=(0.05, 0.1), **options).start()
    try:
        for step in steps:
            uploader.submit(run / f"checkpoint-{step}")
            assert uploader.drain(60)
    finally:
        uploader.close()


def test_remote_keep_last_keeps_the_best_and_the_protected_checkpoints(tmp_path, server):
    remote, run = bucket_of(server, "best"), tmp_path / "run"
    evals = {10: 2.0, 20: 1.0, 30: 1.5, 40: 1.8, 50: 1.9}  # step 20 is the best
    for step in (10, 20, 30, 40, 50):
        make_checkpoint(run, step, evals={s: v for s, v in evals.items() if s <= step})
    protect(run, run / "checkpoint-10", "newest checkpoint before the nan at step 12")
    run_uploader(remote, run, (10, 20, 30, 40, 50), keep_last=1, keep_best=True)
    assert remote_checkpoints(remote) == ["checkpoint-10", "checkpoint-20", "checkpoint-50"]
    assert json.loads(remote.storage.read_text("protected.json")) == json.loads((run / "protected.json").read_text())

    # without keep_best the best goes; the protected one stays whatever the run directory says now
    (run / "protected.json").unlink()
    make_checkpoint(run, 60, evals=evals)
    run_uploader(remote, run, (60,), keep_last=1)
    assert remote_checkpoints(remote) == ["checkpoint-10", "checkpoint-60"]  # the bucket's protected.json holds


def test_a_protection_holds_in_the_bucket_even_when_its_upload_failed(tmp_path, server, monkeypatch):
    """Remote retention also keeps what the run directory's protected.json names: the books' upload can fail
    while the checkpoint's succeeded."""
    import gptresume.remote.uploader as uploader_module

    def unreachable(remote, run_dir):
        raise OSError("the books' upload failed")

    monkeypatch.setattr(uploader_module, "upload_books", unreachable)
    remote, run = bucket_of(server, "protected-local"), tmp_path / "run"
    for step in (10, 20, 30):
        make_checkpoint(run, step)
    protect(run, run / "checkpoint-10", "rollback 1 at step 25 resumed from it")
    run_uploader(remote, run, (10, 20, 30), keep_last=1)
    assert remote_checkpoints(remote) == ["checkpoint-10", "checkpoint-30"]
    assert not remote.storage.isfile("protected.json")


# ---------------------------------------------------------------- the newest valid, and discovery over the bucket


def test_the_newest_valid_remote_checkpoint_is_never_deleted_and_discovery_skips_newer_damaged_ones(tmp_path, server):
    remote, run = bucket_of(server, "newest"), tmp_path / "run"
    for step in (10, 20, 30):
        upload_checkpoint(remote, make_checkpoint(run, step))
    fs = server.fs()
    fs.pipe_file(f"{BUCKET}/newest/checkpoint-30/model.safetensors", b"torn")  # committed, damaged
    fs.pipe_file(f"{BUCKET}/newest/checkpoint-40/model.safetensors", b"half")  # an upload still under way
    protect(run, run / "checkpoint-20", "newest checkpoint before the nan at step 33")
    remote.storage.put_file(run / "protected.json", "protected.json")
    # checkpoint-20's upload is the newest verified: keep_last 1 keeps it; 30 and 40 are ahead of it, untouched
    assert remote_retention(remote, 1, "checkpoint-20") == ["checkpoint-10"]
    assert remote_checkpoints(remote) == ["checkpoint-20", "checkpoint-30", "checkpoint-40"]

    shutil.rmtree(run)  # a wiped disk: discovery over the bucket, the same function as on disk
    run.mkdir()
    path, skipped = fetch_newest_valid(remote, run)
    assert path == run / "checkpoint-20"
    assert skipped == [f"skipping remote s3://{BUCKET}/newest/checkpoint-40: no manifest.json (the upload never "
                       "finished)",
                       f"skipping remote s3://{BUCKET}/newest/checkpoint-30: model.safetensors: wrong size (4 bytes, "
                       "manifest says 200)"]
    assert json.loads((run / "protected.json").read_text()) == {
        "checkpoint-20": "newest checkpoint before the nan at step 33"}  # the protection came with it
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-20", "protected.json", "remote-uploads.json"]
