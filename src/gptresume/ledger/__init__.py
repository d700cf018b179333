"""The sample ledger (`checkpoint.ledger: true`, `gptresume.train(..., ledger=True)`): which samples each optimizer
step trained, committed with every checkpoint and kept in RUN_DIR/ledger/, and the check that proves (or refutes)
that every sample of each completed epoch was trained exactly once across stops, kills, rollbacks, batch re-splits
and elastic changes.

- segment.py    the file format: one segment per commit (the steps since the previous commit), int64 sample ids in
                compressed arrays, read without pickle
- packed.py     map-style data: the block indices the sampler yields, attributed to steps by count
- recording.py  the training side: the callback, the commit hook, what a resume does to the books
- books.py      RUN_DIR/ledger/: a segment per committed checkpoint, trimmed to the resumed one
- check.py      the verdict (pure): duplicates, missing samples, skipped ones
"""
