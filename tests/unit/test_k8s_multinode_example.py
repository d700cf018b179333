"""examples/k8s-multinode.yaml: an indexed Job whose pods are the nodes of one run without a shared file system.
Checked: the node rank is the completion index, node 0's address is pod 0's DNS name through the headless
Service, the launcher keeps the workers' exit code, the podFailurePolicy ignores exactly the stop's code and fails
on bad input, and the gptresume command line is a valid config with shared_filesystem false and a bucket."""

from __future__ import annotations

from pathlib import Path

import yaml

from gptresume.config.load import check_without_transformers, read_config
from gptresume.errors import EXIT_STOPPED, EXIT_USAGE

ROOT = Path(__file__).resolve().parents[2]


def option(argv: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    return value


def test_indexed_job_runs_one_node_per_pod_and_commits_through_the_bucket():
    docs = list(yaml.safe_load_all((ROOT / "examples" / "k8s-multinode.yaml").read_text()))
    (service,) = [d for d in docs if d["kind"] == "Service"]
    (job,) = [d for d in docs if d["kind"] == "Job"]
    name, spec = job["metadata"]["name"], job["spec"]
    pod = spec["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and pod["restartPolicy"] == "Never"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {"job-name": name}
    assert pod["subdomain"] == service["metadata"]["name"]

    (container,) = pod["containers"]
    argv = container["command"] + container["args"]
    assert argv[:3] == ["python", "-m", "gptresume.launch"]  # exits with the workers' code (75), unlike torchrun
    nodes = int(option(argv, "--nnodes"))
    assert spec["completions"] == spec["parallelism"] == nodes  # every node at once, one pod each
    rank_var = option(argv, "--node_rank").removeprefix("$(").removesuffix(")")
    env = {e["name"]: e for e in container["env"]}
    assert env[rank_var]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    assert option(argv, "--master_addr") == f"{name}-0.{service['metadata']['name']}"  # pod 0 is node 0
    port = int(option(argv, "--master_port"))
    assert port in [p["port"] for p in service["spec"]["ports"]]

    by_action = {}
    for rule in spec["podFailurePolicy"]["rules"]:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == container["name"]
            by_action.setdefault(rule["action"], set()).update(rule["onExitCodes"]["values"])
    assert by_action == {"Ignore": {EXIT_STOPPED}, "FailJob": {EXIT_USAGE}}

    train = argv.index("train")
    assert argv[train - 2:train] == ["-m", "gptresume"]
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    raw = read_config(ROOT / argv[train + 1].removeprefix("/app/"), overrides)
    check_without_transformers(raw, source="examples/k8s-multinode.yaml")
    assert raw["checkpoint"]["shared_filesystem"] is False and raw["checkpoint"]["remote"].startswith("s3://")
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert any(raw["train"]["output_dir"].startswith(m + "/") for m in mounts)  # each pod's own disk
    assert raw["checkpoint"]["remote_wait_seconds"] < pod["terminationGracePeriodSeconds"]
