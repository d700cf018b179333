"""Training data: sources (built-in corpus, hub, files), packing into fixed-length blocks with a fingerprint and a
cache in the run directory, and the collator. Names re-exported from the module that defines each."""

from gptresume.data.collator import IGNORE_INDEX, SAMPLE_LOG_ENV, PackedBlockCollator, log_batch_samples, sample_id  # noqa: F401
from gptresume.data.packing import (  # noqa: F401
    CACHE_META_NAME,
    DATA_CACHE_DIR,
    SPLIT_SEED,
    PreparedData,
    cache_key,
    pack,
    prepare_data,
    save_to_cache,
    split_blocks,
    token_fingerprint,
)
from gptresume.data.sources import FILE_LOADERS, load_texts, resolve_files, source_fingerprint  # noqa: F401
