"""The config: schema (dataclasses), loading (YAML, `--set`), type checks. Names re-exported from their modules."""

from gptresume.config.load import (  # noqa: F401
    apply_override,
    check_without_transformers,
    config_from_dict,
    dump_config,
    load_config,
    read_config,
)
from gptresume.config.schema import (  # noqa: F401
    BUILTIN_CORPORA,
    BUILTIN_PREFIX,
    FORBIDDEN_TRAIN_KEYS,
    HUB_PREFIX,
    SECTIONS,
    TEXT_UNITS,
    TRAIN_DEFAULTS,
    CheckpointConfig,
    Config,
    DataConfig,
    ModelConfig,
    TokenizerConfig,
    fingerprint_of,
)
from gptresume.config.types import check_type  # noqa: F401
