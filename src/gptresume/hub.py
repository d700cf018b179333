"""The Hugging Face hub without a network: found out once, said once, and the local cache used at once.

Without a network, `from_pretrained("gpt2")` retries every request with back-off (huggingface_hub 2.4: five
retries per file, each logged), so the README's fine-tune command took 88 s and printed 44 retry lines before it
loaded the cached model or failed. Before anything is loaded from the hub, `use_cache_if_offline` tries one TCP
connection to the hub's host (3 s at most); when that fails it switches this process to the libraries' own
offline mode (what `HF_HUB_OFFLINE=1` does: huggingface_hub, Transformers and datasets read the cache only) and
logs one line saying so. `HF_HUB_OFFLINE=1` set by the user skips the probe. A model or dataset missing from
the cache is then refused with one message (`not_cached_message`) instead of a retry storm.
"""

from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlparse

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
_verdict: str | None = None  # why this process reads the cache only ("" when the hub is reachable), once decided


def offline_reason() -> str | None:
    """Why the hub is not used in this process (HF_HUB_OFFLINE set, or no connection), or None."""
    if _verdict:  # found here (it set HF_HUB_OFFLINE itself)
        return _verdict
    return "HF_HUB_OFFLINE is set" if _env_offline() else None


def use_cache_if_offline(names: list[str]) -> str | None:
    """Before loading `names` (hub ids) from the hub: when the hub cannot be reached, turn on the libraries'
    offline mode for this process and say so once. Returns the reason the cache alone is used, or None."""
    global _verdict
    if not names:
        return offline_reason()
    if _verdict is None and _env_offline():
        log.debug("HF_HUB_OFFLINE is set: %s from the local Hugging Face cache only", ", ".join(names))
        return offline_reason()
    if _verdict is None:
        host, port = hub_address()
        via = proxy_address()  # behind a proxy the hub is reached through it: the proxy is what must answer
        target = via or (host, port)
        what = f"the proxy {via[0]}:{via[1]} to the hub ({host})" if via else f"the hub ({host})"
        try:
            socket.create_connection(target, timeout=PROBE_TIMEOUT_S).close()
            _verdict = ""
        except OSError as e:
            _verdict = f"{what} cannot be reached ({e.strerror or e})"
            _go_offline()
            log.info("No connection to %s: loading %s from the local Hugging Face cache only, as with "
                     "HF_HUB_OFFLINE=1 (set it to skip this check)", what, ", ".join(repr(n) for n in names))
    return offline_reason()


def not_cached_message(field: str, name: str, reason: str) -> str:
    """The one message for a hub id that is needed but not in the cache while offline."""
    from huggingface_hub import constants

    return (f"{field}: {name!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {reason}; "
            "run once with a network to download it (or set HF_HOME to a cache that has it), or give a directory "
            "written by save_pretrained")


def hub_address() -> tuple[str, int]:
    """Host and port of the hub endpoint (HF_ENDPOINT, default https://huggingface.co)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def proxy_address() -> tuple[str, int] | None:
    """Host and port of the HTTPS proxy the hub's requests go through (HTTPS_PROXY / ALL_PROXY), or None."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        value = os.environ.get(name, "").strip()
        if value:
            url = urlparse(value if "://" in value else "http://" + value)
            if url.hostname:
                return url.hostname, url.port or (443 if url.scheme == "https" else 80)
    return None


def _env_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _go_offline() -> None:
    """What HF_HUB_OFFLINE=1 does, for this process and its children (the libraries read the flag at import,
    so their already-imported constants are set as well)."""
    import sys

    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
