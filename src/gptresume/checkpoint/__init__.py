"""Checkpoints: file names, the manifest that commits them, verification, discovery and retention over one storage
interface (storage.py: the run directory or a bucket), and the background writer. Nothing in this package imports
`transformers.Trainer`: the tools read runs through it too.

The names below are re-exported for convenience; each lives in the module named in its import.
"""

from gptresume.checkpoint.files import (  # noqa: F401
    CHECKPOINT_PREFIX,
    CHECKPOINT_RE,
    MANIFEST_NAME,
    OPTIMIZER_NAME,
    RESUME_STATE_NAME,
    RNG_STATE_PATTERN,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
    TRAINING_ARGS_NAME,
    list_checkpoints,
)
from gptresume.checkpoint.manifest import (  # noqa: F401
    MANIFEST_FORMAT,
    file_digest,
    CheckpointInfo,
    checkpoint_names,
    describe_skip,
    library_versions,
    missing_state,
    newest_valid,
    newest_valid_in,
    quick_faults,
    read_manifest,
    read_resume_state,
    read_trainer_state,
    verify_checkpoint,
    write_manifest,
)
from gptresume.checkpoint.retention import (  # noqa: F401
    Listed,
    apply_retention,
    best_eval_step,
    clear_the_way,
    protect,
    protected,
    read_protected,
    retain,
    set_aside,
    to_delete,
)
from gptresume.checkpoint.storage import CheckpointStorage, FsspecStorage, LocalStorage  # noqa: F401
from gptresume.durable import DIGESTS, atomic_write_text, fsync_dir, hash_file  # noqa: F401
