"""Checkpoints that outlive the machine: a copy of every committed checkpoint in object storage (any fsspec URL,
`checkpoint.remote`), and a resume from it when the local disk is gone.

One job per module, none importing torch or transformers (fsspec and its backends are imported on first use).
The bucket is a `checkpoint.storage.FsspecStorage` (`Remote.storage`): discovery and retention are the run
directory's own functions (checkpoint/manifest.py `newest_valid_in`, checkpoint/retention.py `retain`) applied to
it, so the bucket keeps what the disk keeps.

  url.py        what a remote URL is; the `checkpoint.remote*` and `train.output_dir` checks; opening the fs
  probe.py      the storage check before training: write, read back and delete a probe object
  transfer.py   one checkpoint up (files first, manifest last, then verified) or down (verified), listing,
                deleting, remote retention (the local policy on the bucket)
  books.py      history.jsonl and protected.json in the bucket: uploaded with every verified checkpoint, at a
                rollback and a health stop; downloaded with a fetched checkpoint
  ledger.py     RUN_DIR/remote-uploads.json: which local checkpoints have a verified remote copy (the guard of
                local retention), kept across restarts
  uploader.py   the background thread: uploads in commit order, retries with backoff, reports, never stops training
  fetch.py      a start without a usable local checkpoint: the newest valid remote one, downloaded and verified
  view.py       read-only local copies of a remote run or checkpoint for `status`, `verify`, `export`, `eval`
"""
