"""Resume policy: which checkpoint to continue from, what changed since it was written (and what each change
means), the re-planned schedule, the data position and the per-rank RNG mapping. Pure rules, no Trainer."""
