"""The bench's measurements, one module per section; each `measure(runner, plan, ...)` returns the section's entry
of results.json and renders nothing (bench/render.py does). Listed in the order `make bench` runs them: goodput
sizes its run from the throughput section's rate, when that ran first; interval (checkpoint.every: auto against
fixed save_steps, issue 16) lives in goodput.py beside it; defaults (the GPT-2 fine-tune preset on 1 GB of text,
issue 26) is last: it is the longest."""

SECTIONS = ("peak", "throughput", "step_cost", "checkpoint", "checkpoint_ddp", "verify", "resume", "streaming_resume",
            "goodput", "packing", "interval", "remote", "ledger", "multinode", "defaults")
