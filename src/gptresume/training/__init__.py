"""Training with `transformers.Trainer`: the run's phases (run.py), every private Trainer behaviour relied on
(trainer.py), the callbacks that commit, log and stop, and the multi-process helpers."""
