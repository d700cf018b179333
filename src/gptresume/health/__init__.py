"""Run health: decisions about a run's wellbeing that need no Trainer, so each is a pure, unit-tested rule.

- detect.py    non-finite values and loss spikes in the per-step training loss (what triggers a stop or rollback)
- decide.py    after an event: roll back (to which checkpoint, skipping what) or stop (naming the newest good one)
- rollback.py  which checkpoint a rollback resumes from, what it sets aside and skips, how it is recorded
- interval.py  Young's and Daly's optimum checkpoint interval, and the interruption rate from a run's history
- goodput.py   the share of wall time that survived into committed checkpoints, from history.jsonl/metrics.jsonl
- faults.py    the test-only fault hook (GPTRESUME_TEST_FAULT) that poisons the loss at a chosen step

The Trainer side (the callbacks and the per-step observation) is training/health.py, and training/session.py performs
a decision (set aside, protect, history.jsonl, the remote copy); nothing here imports torch.
"""
