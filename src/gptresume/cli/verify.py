"""`gptresume verify PATH`: re-hash a checkpoint's files (or every checkpoint of a run) against its manifest, with
the digest the manifest records (xxh3-128 in format 2, sha256 in format 1)."""

from __future__ import annotations

from gptresume.errors import EXIT_USAGE, UsageError

EXAMPLES = """\
examples:
  gptresume verify runs/demo                   # every checkpoint of a run
  gptresume verify runs/demo/checkpoint-60     # one checkpoint
  gptresume verify s3://bucket/runs/demo       # a remote copy (checkpoint.remote): downloaded, re-hashed

exit code 0 when every checkpoint checked is valid, 2 otherwise (each fault names the file)."""


def add_parser(subparsers):
    p = subparsers.add_parser("verify", help="check checkpoints against their manifests",
                              description="Re-hash every file of a checkpoint (or of every checkpoint in a run) and "
                                          "compare with its manifest.", epilog=EXAMPLES)
    p.add_argument("path", metavar="PATH", help="a run directory or a checkpoint-N directory, local or a URL")
    return p


def run(args) -> int:
    from gptresume.remote.view import readable

    with readable(args.path, "verify") as local:
        return _verify(local, args.path)


def _verify(local: str, shown: str) -> int:
    """Verify the local directory `local`; messages name `shown` (the URL, for a remote copy)."""
    from pathlib import Path

    from gptresume.checkpoint import CHECKPOINT_RE, MANIFEST_NAME, list_checkpoints, verify_checkpoint
    from gptresume.checkpoint.manifest import verifying

    path = Path(local)

    def label(p: Path) -> str:
        if local == shown:
            return str(p)
        return shown if p == path else f"{shown.rstrip('/')}/{p.relative_to(path).as_posix()}"

    if not path.is_dir():
        raise UsageError(f"verify: {path if local == shown else shown} is not a directory; "
                         "give a run directory or a checkpoint-N directory")
    single = CHECKPOINT_RE.match(path.name) or (path / MANIFEST_NAME).is_file()
    targets = [path] if single else list_checkpoints(path)
    if not targets:
        raise UsageError(f"verify: {path if local == shown else shown} holds no checkpoint-N directory")
    bad = 0
    for ckpt in targets:
        progress = verifying(ckpt, label(ckpt))
        info = verify_checkpoint(ckpt, on_bytes=lambda n, p=progress: p.update(p.done + n))
        progress.close()
        if info.valid:
            n = len(info.manifest["files"])
            size = sum(f["bytes"] for f in info.manifest["files"].values())
            digest = info.manifest.get("digest", "sha256")
            print(f"ok       {label(ckpt)}  (step {info.step}, {n} files, {size / 1e6:.1f} MB, {digest})")
        else:
            bad += 1
            print(f"INVALID  {label(ckpt)}: " + "; ".join(info.faults))
    return 0 if bad == 0 else EXIT_USAGE

