"""Credentials never reach a file gptresume writes.

The config is copied into `config.yaml`, into every checkpoint's `manifest.json` and, with `checkpoint.remote`, into
the bucket; `history.jsonl` records the command line. So a secret given as an fsspec option (s3fs's usual
`client_kwargs: {aws_secret_access_key: ...}`, `key`/`secret`/`token`, gcsfs `token`, adlfs `account_key`,
`sas_token`, `connection_string`, `credential`, ...) would be written in clear in all of them. Two layers:

1. **Refused on input** (`secret_problems`): every key of `checkpoint.remote_options` / `remote_options=`, at any
   depth (dicts inside dicts and lists), is checked against the names credentials go by, and every string value
   against the shapes keys have (an AWS access key id, a PEM private key, a connection string or SAS query with its
   key, a JWT, a long random-looking token). A hit is exit 2 naming the key path; credentials come from the
   environment or the provider's own files (~/.aws/credentials and `profile:`, GOOGLE_APPLICATION_CREDENTIALS,
   AZURE_STORAGE_*, ...), which fsspec's back-ends read by themselves.
2. **Redacted on output** (`redact`, `redact_argv`): what is written (config.yaml, manifests, history.jsonl and so
   the bucket's copies) goes through the same detector, so a secret that slipped past the check (an `Options`
   built by hand, a name not on the list with a key-shaped value) is written as `<redacted>`.

The value shapes are deliberately narrow where a legitimate option could look alike: a URL (`endpoint_url`), a
path, a region, a profile name, a UUID-style KMS key id or an ARN has a `:`, `.`, a lower-case-only alphabet or is
short, and none of them is flagged. Pure functions: no imports beyond the standard library.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"

# Option names (lower case, `_` and `-` removed) that hold a credential: s3fs (key, secret, token, and boto's names
# inside client_kwargs / config_kwargs), gcsfs (token), adlfs (account_key, sas_token, connection_string, credential,
# client_secret), HTTP headers (authorization), and the generic ones.
SECRET_NAMES = frozenset({
    "key", "secret", "token", "password", "passwd", "passphrase", "credential", "credentials", "auth",
    "authorization", "sig", "signature", "accountkey", "sastoken", "connectionstring", "clientsecret",
    "sessiontoken", "securitytoken", "accesstoken", "refreshtoken", "idtoken", "apikey", "privatekey",
    "privatekeyid", "secretkey", "accesskey", "accesskeyid", "secretaccesskey", "awsaccesskeyid",
    "awssecretaccesskey", "awssessiontoken", "awssecuritytoken", "ssecustomerkey", "customerkey", "sharedkey",
    "accountsharedkey", "masterkey", "encryptionkey", "signingkey", "hubtoken", "bearer", "cookie",
})
# Words that mark a credential wherever they appear in a name (`my_db_password`, `x-amz-security-token`).
SECRET_WORDS = ("secret", "password", "passwd", "passphrase", "credential", "privatekey", "accesskey", "accountkey",
                "sastoken", "apikey", "customerkey", "sharedkey")
# Names that end like a credential (`hub_token`, `account_key`) but are identifiers: a token id, a key id (KMS),
# a key name.
NOT_SECRET_SUFFIXES = ("id", "ids", "name", "names", "type", "length", "file", "path", "env", "url")
# gcsfs `token=` also takes the name of an authentication method: no secret in these.
TOKEN_METHODS = frozenset({"anon", "google_default", "cache", "cloud", "browser"})

_AWS_KEY_ID = re.compile(r"^(AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA|ABIA|ACCA)[A-Z0-9]{16}$")
_JWT = re.compile(r"^eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")
_GOOGLE_API_KEY = re.compile(r"^AIza[0-9A-Za-z_-]{35}$")
_EMBEDDED = re.compile(r"(accountkey|sharedaccesskey|sharedaccesssignature|password|pwd)\s*=\s*[^;&\s]+|"
                       r"[?&]sig=[^&\s]{8,}|-----BEGIN [A-Z ]*PRIVATE KEY-----", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://[^/@:\s]*:[^/@\s]+@")
_TOKEN_ALPHABET = re.compile(r"^[A-Za-z0-9+/=_\-]+$")
MIN_TOKEN_LENGTH = 32  # an AWS secret key is 40 characters, an Azure account key 88; a word or a name is shorter


def _normalised(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", str(name)).lower()


def is_secret_name(name: Any) -> bool:
    """Does an option called `name` hold a credential?"""
    n = _normalised(name)
    if n in SECRET_NAMES or any(word in n for word in SECRET_WORDS):
        return True
    if n.endswith(("token", "key")):  # `hub_token`, `ssh_key`, but not `bos_token_id`, `kms_key_id`
        return True
    return False


def why_secret_value(value: Any) -> str | None:
    """What makes `value` look like a credential (None when it does not)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _AWS_KEY_ID.match(text):
        return "an AWS access key id"
    if _GOOGLE_API_KEY.match(text):
        return "a Google API key"
    if _JWT.match(text):
        return "a signed token (JWT)"
    if _URL_PASSWORD.match(text):
        return "a URL with a password"
    if _EMBEDDED.search(text):
        return "a connection string, signed URL or private key"
    if (len(text) >= MIN_TOKEN_LENGTH and _TOKEN_ALPHABET.match(text) and re.search(r"[A-Z]", text)
            and re.search(r"[a-z]", text) and re.search(r"[0-9]", text)):
        return "a long random-looking token (a secret key?)"
    return None


def _allowed(name: Any, value: Any) -> bool:
    """A secret-named option whose value carries no secret: a switch (`anon: true`), a gcsfs method name, a null,
    or an identifier-like name (`kms_key_id`)."""
    n = _normalised(name)
    if n.endswith(NOT_SECRET_SUFFIXES) and not any(word in n for word in ("secret", "password", "accesskeyid")):
        return True
    if value is None or isinstance(value, bool):
        return True
    return n == "token" and isinstance(value, str) and value in TOKEN_METHODS


def secret_paths(obj: Any, prefix: str) -> list[tuple[str, str]]:
    """(dotted key path, why) of every credential in `obj` (dicts and lists at any depth)."""
    out: list[tuple[str, str]] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            path = f"{prefix}.{key}"
            if is_secret_name(key) and not _allowed(key, value):
                out.append((path, f"{key!r} is a credential"))
                continue
            out.extend(secret_paths(value, path))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            out.extend(secret_paths(value, f"{prefix}[{i}]"))
    else:
        why = why_secret_value(obj)
        if why:
            out.append((prefix, f"the value looks like {why}"))
    return out


CREDENTIALS_FIX = ("credentials do not belong in the config (it is copied into config.yaml, history.jsonl, every "
                   "manifest and the bucket); take them from the environment or the provider's files instead: "
                   "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or ~/.aws/credentials (select one "
                   "with `profile:`), GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_KEY / "
                   "AZURE_STORAGE_CONNECTION_STRING / AZURE_STORAGE_SAS_TOKEN")


def secret_problems(obj: Any, prefix: str) -> list[str]:
    """One problem per credential found in `obj`, each naming its key path, with the fix."""
    return [f"{path}: {why}; {CREDENTIALS_FIX}" for path, why in secret_paths(obj, prefix)]


def url_secret_problem(url: Any, field: str) -> str | None:
    """A password in a URL's user part (`s3://KEY:SECRET@bucket/...`, `ftp://user:pass@host/`)."""
    if not isinstance(url, str) or "://" not in url:
        return None
    authority = url.split("://", 1)[1].split("/", 1)[0]
    user, at, _ = authority.rpartition("@")
    if at and ":" in user:
        return f"{field}: the URL holds a password ({url.split('://', 1)[0]}://USER:...@); {CREDENTIALS_FIX}"
    return None


def redact(obj: Any, within_options: bool = False) -> Any:
    """`obj` with every credential replaced by `<redacted>`: secret-named keys everywhere they are known to hold one
    (`remote_options` at any depth, `hub_token`), secret-shaped values inside `remote_options`, and a password in
    a URL. The input is not changed."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            options = within_options or key == "remote_options"
            if (options and is_secret_name(key) and not _allowed(key, value)) or (
                    _normalised(key) in ("hubtoken", "pushtohubtoken") and value):
                out[key] = REDACTED
            else:
                out[key] = redact(value, options)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, within_options) for v in obj)
    if isinstance(obj, str):
        if within_options and why_secret_value(obj):
            return REDACTED
        return _redact_url_password(obj)
    return obj


def _redact_url_password(text: str) -> str:
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]+://[^/@:\s]*):[^/@\s]*@", rf"\1:{REDACTED}@", text)


def redact_argv(argv: list[str]) -> list[str]:
    """A command line as history.jsonl records it: a `--set KEY=VALUE` whose value holds a credential by the rules
    of `redact` (KEY reaching into remote_options, or naming hub_token) has VALUE redacted; any other argument that
    looks like a key, and a password in a URL, too."""
    import yaml

    out = []
    for arg in map(str, argv):
        key, sep, text = arg.partition("=")
        if not sep or key.startswith("-"):
            out.append(REDACTED if why_secret_value(arg) else _redact_url_password(arg))
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        names = key.split(".")
        nested: Any = value
        for name in reversed(names):
            nested = {name: nested}
        cleaned = redact(nested)
        if cleaned == nested:
            out.append(arg)
            continue
        for name in names:
            cleaned = cleaned[name]
        partly = isinstance(cleaned, str) and cleaned != REDACTED  # a URL with its password taken out
        out.append(f"{key}={cleaned if partly else REDACTED}")
    return out
