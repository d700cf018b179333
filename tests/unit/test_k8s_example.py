"""examples/k8s-job.yaml: a Job whose podFailurePolicy ignores exactly the exit code a committed stop reports,
fails at once on bad input, and whose gptresume command line is a valid config (with checkpoint.remote)."""

from __future__ import annotations

from pathlib import Path

import yaml

from gptresume.config.load import check_without_transformers, read_config
from gptresume.errors import EXIT_STOPPED, EXIT_USAGE

ROOT = Path(__file__).resolve().parents[2]


def test_k8s_job_ignores_the_stop_code_and_fails_on_bad_input():
    job = yaml.safe_load((ROOT / "examples" / "k8s-job.yaml").read_text())
    assert job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # what podFailurePolicy requires
    (container,) = pod["containers"]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    by_action = {}
    for rule in rules:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == container["name"]
            by_action.setdefault(rule["action"], set()).update(rule["onExitCodes"]["values"])
    argv = container["command"] + container["args"]
    stop_code = int(argv[argv.index("--stop-exit-code") + 1]) if "--stop-exit-code" in argv else EXIT_STOPPED
    assert by_action == {"Ignore": {stop_code}, "FailJob": {EXIT_USAGE}}
    assert pod["terminationGracePeriodSeconds"] >= 30  # one save and its upload (see the comment in the file)

    config_path = ROOT / argv[argv.index("train") + 1].removeprefix("/app/")
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    raw = read_config(config_path, overrides)
    check_without_transformers(raw, source="examples/k8s-job.yaml")
    assert raw["checkpoint"]["remote"].startswith("s3://")
    wait = raw["checkpoint"]["remote_wait_seconds"]
    assert wait < pod["terminationGracePeriodSeconds"]
