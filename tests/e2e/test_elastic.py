"""Elastic resume: a checkpoint written by 2 processes resumes on 1 (and one written by 1 on 2) with the same
global batch (per device x accumulation x processes). The sample order is global, so every optimizer step sees
the same samples as the run it continues, and the losses match it. Sample ids are logged per rank through
GPTRESUME_SAMPLE_LOG; dropout is off (dropout masks are drawn per rank and cannot carry over). The sample ledger
(checkpoint.ledger) records each step's block indices across the change: they are the blocks logged, and
`gptresume ledger` proves the completed epochs exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ddp_env, launcher, read_metrics, run_cli, split_ids, train_losses, write_config

pytestmark = pytest.mark.slow

MAX_STEPS = 12
NO_DROPOUT = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 32,
              "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
ONE = ["--set", "train.per_device_train_batch_size=4", "--set", "train.gradient_accumulation_steps=2"]


def elastic_config(tmp):
    # drop_last: with several processes accelerate pads an epoch's last partial global batch with samples
    # from the epoch's start; dropping it makes every step a full, identical global batch on any process count
    return write_config(tmp, "elastic.yaml", corpus_chars=3600, model={"from_scratch": NO_DROPOUT},
                        train={"max_steps": MAX_STEPS, "save_steps": 3, "eval_steps": 100,
                               "per_device_train_batch_size": 4, "dataloader_drop_last": True},
                        checkpoint={"keep_last": 2, "ledger": True})


def train(tmp, config, processes: int, log: str, *args, code=0):
    """`gptresume train` on 1 process (4 per device x accumulation 2) or 2 (4 per device each): global batch 8."""
    import subprocess

    env = {"GPTRESUME_SAMPLE_LOG": str(tmp / log)}
    if processes == 1:
        result = run_cli(tmp, "train", config, *ONE, *args, env=env)
    else:
        result = subprocess.run([*launcher("gptresume.launch"), "-m", "gptresume", "train", str(config),
                                 *map(str, args)], cwd=tmp, env={**ddp_env(tmp), **env}, capture_output=True,
                                text=True, timeout=300)
    assert result.returncode == code, result.stdout + result.stderr
    return result


def samples_per_step(tmp, log: str, processes: int, steps: int, validation: set) -> list[list[str]]:
    """Sorted sample ids of each optimizer step: rank r's micro-batch k, or one process's batches 2k, 2k+1."""
    ranks = [[b for b in map(json.loads, Path(f"{tmp / log}.rank{r}").read_text().splitlines())
              if not set(b) <= validation] for r in range(processes)]
    if processes == 2:
        return [sorted(ranks[0][k] + ranks[1][k]) for k in range(steps)]
    return [sorted(ranks[0][2 * k] + ranks[0][2 * k + 1]) for k in range(steps)]


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)], ids=["2-to-1", "1-to-2"])
def test_elastic_resume_keeps_samples_per_step_and_losses(tmp_path, before, after):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "elastic"
    ref_dir.mkdir(), run_dir.mkdir()
    train(ref_dir, elastic_config(ref_dir), before, "s")
    config = elastic_config(run_dir)
    train(run_dir, config, before, "a", "--stop-at-step", 4, code=75)  # mid-epoch: an epoch is 5 steps
    result = train(run_dir, config, after, "b")
    assert "world_size" in result.stderr and "same global batch (8): same samples per step" in result.stderr
    if after == 2:
        assert "Rank 1 has no RNG state" in result.stdout + result.stderr
    train_ids, val = split_ids(run_dir / "run")
    expected = samples_per_step(ref_dir, "s", before, MAX_STEPS, val)
    got = samples_per_step(run_dir, "a", before, 4, val) + samples_per_step(run_dir, "b", after, MAX_STEPS - 4, val)
    from gptresume.ledger.books import lineage

    ledger = {int(s.steps[i]): s.step_ids(i).tolist() for s in lineage(run_dir / "run")[0] for i in range(len(s.steps))}
    for step, (g, e) in enumerate(zip(got, expected), 1):
        print(f"step {step:2d}: {' '.join(g)}")  # shown with -s: the samples of each step
        assert g == e, f"step {step}: different samples"
        assert sorted(train_ids[i] for i in ledger[step]) == g, f"step {step}: the ledger names other blocks"
    ref_losses, losses = train_losses(ref_dir / "run"), train_losses(run_dir / "run")
    assert sorted(losses) == list(range(1, MAX_STEPS + 1))
    for step in ref_losses:
        assert losses[step] == pytest.approx(ref_losses[step], rel=1e-5), step
    history = [json.loads(line) for line in (run_dir / "run" / "history.jsonl").read_text().splitlines()]
    resume = [h for h in history if h["event"] == "resume"][-1]
    assert {"key": "world_size", "old": before, "new": after}.items() <= resume["changes"][-1].items()
    assert [r["step"] for r in read_metrics(run_dir / "run") if "loss" in r] == list(range(1, MAX_STEPS + 1))
    verify = run_cli(run_dir, "verify", run_dir / "run")  # every kept checkpoint, written after the resume
    assert verify.returncode == 0, verify.stdout + verify.stderr
    kept = sorted((run_dir / "run").glob("checkpoint-*"))
    lines = verify.stdout.splitlines()
    assert len(kept) == len(lines) == 2 and all(line.startswith("ok ") for line in lines), verify.stdout
    assert f"checkpoint-{MAX_STEPS}  (step {MAX_STEPS}," in verify.stdout
    checked = run_cli(run_dir, "ledger", run_dir / "run")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "blocks trained once" in checked.stdout and "dropped: listed, never trained" in checked.stdout, (
        checked.stdout)  # dataloader_drop_last: each epoch's tail
