"""The bench's measurements, one module per section; each `measure(runner, plan, ...)` returns the section's entry
of results.json and renders nothing (bench/render.py does). Listed in the order `make bench` runs them: goodput
sizes its run from the throughput section's rate, when that ran first."""

SECTIONS = ("peak", "throughput", "checkpoint", "resume", "goodput", "packing", "remote")
