"""RUN_DIR/remote-uploads.json: which committed local checkpoints have a verified copy at the remote URL.

Local retention asks it before deleting (`may_delete`): a checkpoint stays on the local disk until its upload is
verified. A checkpoint is identified by its name and the sha256 of its manifest's bytes, so a checkpoint that was
set aside and saved again under the same name is not mistaken for the uploaded one. Kept across restarts: a start
uploads the committed checkpoints the ledger does not list (a process killed before its uploads finished).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

from gptresume.checkpoint.files import CHECKPOINT_RE, MANIFEST_NAME
from gptresume.durable import atomic_write_text
from gptresume.rundir import REMOTE_LEDGER_NAME


def manifest_bytes_id(data: bytes) -> str:
    """Which commit a manifest.json's bytes are (local or remote copy alike)."""
    return hashlib.sha256(data).hexdigest()


def manifest_id(ckpt: Path) -> str | None:
    """`manifest_bytes_id` of the checkpoint's manifest.json (None without one): which commit of this name it is."""
    try:
        return manifest_bytes_id((Path(ckpt) / MANIFEST_NAME).read_bytes())
    except OSError:
        return None


class Ledger:
    def __init__(self, run_dir: Path, url: str):
        self.path = Path(run_dir) / REMOTE_LEDGER_NAME
        self.url = url
        self._lock = threading.Lock()
        self.verified: dict[str, dict] = {}
        self.set_aside: dict[str, str] = {}
        """Remote copies to delete (name -> manifest sha256): checkpoints a rollback set aside locally."""
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            saved = {}
        if isinstance(saved, dict) and saved.get("url") == url and isinstance(saved.get("verified"), dict):
            self.verified = {k: v for k, v in saved["verified"].items()
                             if CHECKPOINT_RE.match(k) and isinstance(v, dict)}
            aside = saved.get("set_aside")
            if isinstance(aside, dict):
                self.set_aside = {k: v for k, v in aside.items() if CHECKPOINT_RE.match(k) and isinstance(v, str)}

    def is_verified(self, ckpt: Path) -> bool:
        with self._lock:
            entry = self.verified.get(Path(ckpt).name)
        return entry is not None and entry.get("manifest_sha256") == manifest_id(ckpt)

    def may_delete(self, ckpt: Path) -> bool:
        """Local retention's guard: True when the remote holds a verified copy of this very commit."""
        return self.is_verified(ckpt)

    def record(self, ckpt: Path) -> None:
        with self._lock:
            self.verified[Path(ckpt).name] = {"manifest_sha256": manifest_id(ckpt),
                                               "verified": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            self._save()

    def removed_remotely(self, names) -> None:
        """Remote retention deleted these remote copies. The entries stay: a local copy of a checkpoint whose
        upload was verified may still be deleted (remote retention never removes the newest verified upload nor
        anything newer, so the newest state is safe either way)."""
        with self._lock:
            for n in names:
                if n in self.verified:
                    self.verified[n]["removed_remotely"] = True
            self._save()

    def rolled_back(self, moved: dict[str, str | None]) -> None:
        """A rollback set these checkpoints aside locally (name -> sha256 of their manifest): they no longer count
        as verified copies (remote retention must not keep them as the newest), and their remote copies, verified
        or not (an upload the rollback cut short may have reached its manifest), are to be deleted
        (`transfer.delete_set_aside`), so a resume from the bucket cannot pick one."""
        with self._lock:
            for name, sha in moved.items():
                self.verified.pop(name, None)
                if sha:
                    self.set_aside[name] = sha
            self._save()

    def deleted_set_aside(self, name: str) -> None:
        with self._lock:
            self.set_aside.pop(name, None)
            self._save()

    def names(self) -> list[str]:
        """Checkpoints with a verified copy still on the remote, as far as this run knows (remote retention reads
        the bucket itself: transfer.remote_retention)."""
        with self._lock:
            return [n for n, e in self.verified.items() if not e.get("removed_remotely")]

    def _save(self) -> None:
        if self.path.parent.is_dir():
            atomic_write_text(self.path, json.dumps({"url": self.url, "verified": self.verified,
                                                     **({"set_aside": self.set_aside} if self.set_aside else {})},
                                                    indent=1, sort_keys=True))
