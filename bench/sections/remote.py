"""Remote: what uploading every checkpoint to object storage costs training (checkpoint.remote).

The demo model trains with a checkpoint every N steps, once with the local run directory only and once with
checkpoint.remote pointing at an S3-compatible server on 127.0.0.1 (moto's standalone server, started in this
bench process, through s3fs), the two alternating; steady-state tokens/s over the same steps (warm-up skipped),
uploads (and their read-back verification) running in the background during the measured window."""

from __future__ import annotations

import os
import shutil
from unittest import mock

from common import Plan, Runner, median, ratio, rotated
from sections.throughput import throughput_of
from workloads import fresh_run_dir

BUCKET = "gptresume-bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}

METHOD = [
    "The demo model in fp32 (bf16 autocast is many times slower on a CPU without native bf16). "
    "Tokens/s from the first step end after the warm-up to the last, as in the throughput section; a checkpoint "
    "every `save_every` steps in both modes, so the difference is the upload: every file, the manifest, then a "
    "read-back of the remote copy verified against the manifest, in gptresume's uploader thread.",
    "The server (moto, Python) runs in the bench's own process on the same cores: its CPU time is part of the cost.",
]


def _server():
    import logging
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket=BUCKET)
    return server, endpoint


def measure(r: Runner, plan: Plan, configs: dict, tpls: dict) -> dict:
    warm, steps = plan.demo_warmup, 8 * plan.demo_steps
    every = 2 * plan.demo_steps
    total = warm + steps
    credentials = mock.patch.dict(os.environ, CREDENTIALS)  # the workers inherit them (bench/common.py env())
    credentials.start()
    server, endpoint = _server()
    runs = {"local only": [], "checkpoint.remote": []}
    uploads = []
    try:
        for rep in range(plan.reps):
            for mode in rotated(list(runs), rep):
                run = fresh_run_dir(r, tpls["demo"], "demo")
                sets = ["--set", f"train.max_steps={total}", "--set", 'train.eval_strategy="no"',
                        "--set", "train.bf16=false",  # fp32: the same in both modes, and fast on CPUs without bf16
                        "--set", f"train.save_steps={every}", "--set", "checkpoint.keep_last=2"]
                if mode == "checkpoint.remote":
                    sets += ["--set", f"checkpoint.remote=s3://{BUCKET}/run-{r.n}",
                             "--set", f"checkpoint.remote_options={{endpoint_url: '{endpoint}'}}"]
                res = r.worker("train", "--peer", "gptresume", "--config", str(configs["demo"]), "--output-dir",
                               str(run), "--exit-at-step", str(total), *sets)
                tps = throughput_of(res, warm)
                runs[mode].append(tps)
                if mode == "checkpoint.remote":
                    ledger = run / "remote-uploads.json"
                    uploads.append(len(__import__("json").loads(ledger.read_text())["verified"])
                                   if ledger.is_file() else 0)
                r.log(f"  demo {mode}: {tps:,.0f} tokens/s (load {res['load']:.1f})")
                shutil.rmtree(run, ignore_errors=True)
    finally:
        server.stop()
        credentials.stop()  # the environment as it was
    local, remote = median(runs["local only"]), median(runs["checkpoint.remote"])
    return {"save_every": every, "warmup_steps": warm, "measured_steps": steps, "runs": runs,
            "tokens_per_s": {"local only": local, "checkpoint.remote": remote}, "ratio": ratio(remote, local),
            "verified_uploads_per_run": uploads, "method": METHOD}
