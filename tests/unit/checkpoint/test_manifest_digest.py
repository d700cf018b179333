"""Manifest formats and digests: format 2 records xxh3-128, format 1 (sha256, what earlier versions wrote) keeps
verifying, and verification hashes with whatever each file entry records."""

import hashlib
import json

import pytest
import xxhash

from conftest import fake_checkpoint
from gptresume.checkpoint import MANIFEST_NAME, newest_valid, read_manifest, verify_checkpoint
from gptresume.durable import DIGESTS, HASH_CHUNK, hash_file


def make_checkpoint(run_dir, step, digest=None):
    files = {"model.safetensors": bytes(range(256)) * 40, "optimizer.pt": b"o" * 5000,
             "trainer_state.json": json.dumps({"global_step": step, "max_steps": 100})}
    return fake_checkpoint(run_dir, step, files, epoch=0.1, config={"train": {}}, data_fingerprint="d",
                           **({"digest": digest} if digest else {}))


def manifest_of(ckpt):
    return json.loads((ckpt / MANIFEST_NAME).read_text())


def flip_byte(p):
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("size", [0, 1, HASH_CHUNK - 1, HASH_CHUNK, 2 * HASH_CHUNK + 17])
def test_hash_file_streams_every_byte_into_each_digest(tmp_path, size):
    data = bytes((i * 7 + 3) % 251 for i in range(size))
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    assert hash_file(p, digest="sha256") == (size, hashlib.sha256(data).hexdigest())
    assert hash_file(p, digest="xxh3_128") == (size, xxhash.xxh3_128(data).hexdigest())
    assert hash_file(p, fsync=True) == hash_file(p, digest="sha256")  # the default is unchanged


def test_new_manifests_are_format_2_with_xxh3_128(tmp_path):
    m = manifest_of(make_checkpoint(tmp_path, 10))
    assert m["format"] == 2 and m["digest"] == "xxh3_128"
    data = (tmp_path / "checkpoint-10" / "optimizer.pt").read_bytes()
    assert m["files"]["optimizer.pt"] == {"bytes": 5000, "xxh3_128": xxhash.xxh3_128(data).hexdigest()}


@pytest.mark.parametrize("digest", sorted(DIGESTS))
def test_each_format_verifies_and_catches_a_flipped_byte_with_its_own_digest(tmp_path, digest):
    older = make_checkpoint(tmp_path, 5, digest)
    ckpt = make_checkpoint(tmp_path, 10, digest)
    assert verify_checkpoint(ckpt).valid
    flip_byte(ckpt / "model.safetensors")
    assert verify_checkpoint(ckpt, hash_files=False).valid  # same size: only the digest sees it
    assert verify_checkpoint(ckpt).faults == [f"model.safetensors: wrong {digest} (contents changed since the "
                                              "checkpoint was committed)"]
    info, skipped = newest_valid(tmp_path)
    assert info.path == older and [s.path for s in skipped] == [ckpt]


def test_a_format_1_manifest_as_earlier_versions_wrote_it_keeps_verifying(tmp_path):
    ckpt = make_checkpoint(tmp_path, 10, "sha256")
    m = manifest_of(ckpt)
    assert m["format"] == 1 and "digest" not in m  # byte for byte the shape earlier versions wrote
    assert set(m["files"]["optimizer.pt"]) == {"bytes", "sha256"}
    info = verify_checkpoint(ckpt)
    assert info.valid and info.manifest["format"] == 1


def edit(ckpt, change):
    m = manifest_of(ckpt)
    change(m)
    (ckpt / MANIFEST_NAME).write_text(json.dumps(m))


def _xxh3_in_format_1(m):
    m["format"] = 1
    m.pop("digest")


def _unknown_digest(m):
    m["digest"] = "md5"


def _short_xxh3(m):
    m["files"]["optimizer.pt"]["xxh3_128"] = "ab"


def _no_digest(m):
    m["files"]["optimizer.pt"] = {"bytes": 5000}


def _an_unlisted_digest(m):
    m["files"]["optimizer.pt"]["md5"] = "0" * 32
    del m["files"]["optimizer.pt"]["xxh3_128"]


@pytest.mark.parametrize("change, fragment", [
    (_xxh3_in_format_1, '"sha256": 64 lowercase hex digits'),
    (_unknown_digest, "'digest' must be one of xxh3_128, sha256"),
    (_short_xxh3, '"xxh3_128": 32 lowercase hex digits'),
    (_no_digest, "files: optimizer.pt: must be"),
    (_an_unlisted_digest, "files: optimizer.pt: must be"),
], ids=["xxh3 in format 1", "unknown digest", "short xxh3", "no digest", "an unlisted digest"])
def test_a_manifest_whose_digests_do_not_fit_its_format_is_malformed(tmp_path, change, fragment):
    ckpt = make_checkpoint(tmp_path, 10)
    edit(ckpt, change)
    manifest, fault = read_manifest(ckpt)
    assert manifest is None and fragment in fault, fault
    assert not verify_checkpoint(ckpt).valid


def test_verification_follows_each_entry_not_the_version_of_gptresume(tmp_path):
    """A format 2 manifest may hold sha256 entries (a tool that re-hashed one file): each is checked with its own."""
    ckpt = make_checkpoint(tmp_path, 10)
    data = (ckpt / "optimizer.pt").read_bytes()
    edit(ckpt, lambda m: m["files"].__setitem__("optimizer.pt", {"bytes": 5000,
                                                                 "sha256": hashlib.sha256(data).hexdigest()}))
    assert verify_checkpoint(ckpt).valid
    (ckpt / "optimizer.pt").write_bytes(b"p" * 5000)
    assert verify_checkpoint(ckpt).faults[0].startswith("optimizer.pt: wrong sha256")
