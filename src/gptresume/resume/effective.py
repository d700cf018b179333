"""The `train` settings of two configs as the values their runs used, so a resume compares (and the change table
shows) real values, never a field's absence.

What a config's `train` section holds depends on who wrote it:
  - a script's checkpoint (`gptresume.train`) records every TrainingArguments field, defaults included
    (training/script.py `training_args_record`); checkpoints written before that recorded only the fields that
    differed from their declared defaults;
  - the CLI's config records the keys given in the YAML or defaulted by gptresume (config/schema.py TRAIN_DEFAULTS);
    Transformers' own defaults apply to the rest.
So a field absent from a record is the default TrainingArguments declared in the Transformers release that wrote it
(the manifest's `versions`; the checked-in tables of config/hf_fields.py), and a field one of the two releases does
not have at all is taken at the other release's default (a field a newer release adds behaves, at its default, as
the older release did). Filled in this way, an older record and a newer one of the same run compare equal, and
`learning_rate  5e-05 (default) -> 0.0001` shows what the checkpoint really trained with.
"""

from __future__ import annotations

from gptresume.config.hf_fields import ENVIRONMENT_FIELDS, declared_defaults, installed_transformers


def effective_train(old: dict, new: dict, old_version: str | None = None, new_version: str | None = None
                    ) -> tuple[dict, dict, set[str], set[str]]:
    """(old, new, old_defaulted, new_defaulted): both `train` sections with every TrainingArguments field (but the
    environment's, config/hf_fields.py ENVIRONMENT_FIELDS), and the names each side took from a default.
    `old_version` / `new_version`: the Transformers release that wrote each (None: the installed one)."""
    installed = installed_transformers()
    old_defaults = _compared(declared_defaults(old_version or installed))
    new_defaults = _compared(declared_defaults(new_version or installed))
    a = {**old_defaults, **old}
    b = {**new_defaults, **new}
    for key in set(a) - set(b):  # a field the new release does not have: as if at its old default
        b[key] = old_defaults.get(key, a[key])
    for key in set(b) - set(a):  # a field the old release did not have: it behaved as the new default does
        a[key] = new_defaults.get(key, b[key])
    return a, b, set(a) - set(old), set(b) - set(new)


def _compared(defaults: dict) -> dict:
    return {k: v for k, v in defaults.items() if k not in ENVIRONMENT_FIELDS}


def writer_version(manifest: dict | None) -> str | None:
    """The Transformers release a manifest says wrote its checkpoint (None: not recorded)."""
    versions = (manifest or {}).get("versions")
    version = versions.get("transformers") if isinstance(versions, dict) else None
    return version if isinstance(version, str) else None
