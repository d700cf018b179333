"""Issue 26's defaults with real processes: a corpus whose held-out fraction exceeds data.validation_max_blocks.

- A run stopped under the config shape main records (no validation_max_blocks / eval_batches: no cap, every
  validation block evaluated) and resumed under the new code with the user's YAML unchanged resumes without a
  change, on the same split and data fingerprint, bitwise exact against an uninterrupted run, with the same eval
  losses.
- A new run with the same YAML records the new defaults, holds out only validation_max_blocks blocks, and evaluates
  data.eval_batches batches per evaluation (its progress shows them).
"""

import json

import pytest

from conftest import assert_bitwise_equal, final_weights, read_metrics, run_cli, train_losses, write_config
from gptresume.config.schema import DEFAULT_EVAL_BATCHES, DEFAULT_VALIDATION_MAX_BLOCKS

pytestmark = pytest.mark.slow

EVAL_BATCH = 32  # larger than Transformers' 8: the legacy runs evaluate every validation block, in fewer batches
LEGACY = {"validation_max_blocks": None, "eval_batches": None}  # what a config from before issue 26 resolves to


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """All of CPython's bundled docs (~465 KB) in blocks of 32: about 10,000 blocks, so a held-out 45% (4,600)
    exceeds the default cap of 2,000."""
    from conftest import corpus_texts

    tmp = tmp_path_factory.mktemp("defaults")
    (tmp / "corpus.txt").write_text("\n\n".join(corpus_texts(200)))
    return tmp


def config(tmp, name, **data):
    return write_config(tmp, name, data={"validation_fraction": 0.45, "text_unit": "document", **data},
                        train={"max_steps": 8, "save_steps": 4, "eval_steps": 4, "per_device_train_batch_size": 8,
                               "per_device_eval_batch_size": EVAL_BATCH},
                        model={"tokenizer": {"train_vocab_size": 300}})


def train(tmp, yaml_path, run, *args):
    result = run_cli(tmp, "train", yaml_path, "--set", f"train.output_dir={tmp / run}", *args, timeout=600)
    return result, result.stdout + result.stderr


def split_sizes(run_dir):
    """(training, validation) blocks of the run's data cache."""
    from gptresume.data.packing import open_cache

    (meta,) = (run_dir / "data-cache").glob("*/meta.json")
    data = open_cache(meta.parent, 32)
    return len(data.train), len(data.validation)


def test_a_run_from_before_the_defaults_resumes_exactly_and_a_new_run_uses_them(corpus):
    old_yaml = config(corpus, "old.yaml", **LEGACY)  # today's config shape: main's split and evaluation
    new_yaml = config(corpus, "new.yaml")  # the same YAML without the keys: what the user's file says

    reference, out = train(corpus, old_yaml, "reference")
    assert reference.returncode == 0, out
    stopped, out = train(corpus, old_yaml, "stopped", "--stop-at-step", "4")
    assert stopped.returncode == 75, out
    manifest = json.loads((corpus / "stopped" / "checkpoint-4" / "manifest.json").read_text())
    assert not {"validation_max_blocks", "eval_batches"} & set(manifest["config"]["data"])  # main's shape
    n_train, n_val = split_sizes(corpus / "stopped")
    assert n_val > DEFAULT_VALIDATION_MAX_BLOCKS, "the cap must bind on this corpus, or the test proves nothing"

    resumed, out = train(corpus, new_yaml, "stopped")
    assert resumed.returncode == 0, out
    assert "Config changes" not in out and "REFUSED" not in out, out
    history = [json.loads(x) for x in (corpus / "stopped" / "history.jsonl").read_text().splitlines()]
    resume = [h for h in history if h["event"] == "resume"][-1]
    assert resume["changes"] == [] and resume["data_fingerprint"] == manifest["data_fingerprint"]
    assert split_sizes(corpus / "stopped") == (n_train, n_val)  # the same cached split, not a capped one
    assert train_losses(corpus / "stopped") == train_losses(corpus / "reference")
    assert_bitwise_equal(final_weights(corpus / "stopped"), final_weights(corpus / "reference"))
    evals = [(r["step"], r["eval_loss"]) for r in read_metrics(corpus / "stopped") if "eval_loss" in r]
    assert evals == [(r["step"], r["eval_loss"]) for r in read_metrics(corpus / "reference") if "eval_loss" in r]
    assert [s for s, _ in evals] == [4, 8]  # the whole split each time, before and after the resume
    final_manifest = json.loads((corpus / "stopped" / "checkpoint-8" / "manifest.json").read_text())
    assert final_manifest["config"] == manifest["config"]  # still the config it started with

    fresh, out = train(corpus, new_yaml, "fresh", "--stop-at-step", "4")  # its first evaluation and save
    assert fresh.returncode == 75, out
    recorded = json.loads((corpus / "fresh" / "checkpoint-4" / "manifest.json").read_text())["config"]["data"]
    assert recorded["validation_max_blocks"] == DEFAULT_VALIDATION_MAX_BLOCKS
    assert recorded["eval_batches"] == DEFAULT_EVAL_BATCHES
    f_train, f_val = split_sizes(corpus / "fresh")
    assert f_val == DEFAULT_VALIDATION_MAX_BLOCKS and f_train == n_train + n_val - DEFAULT_VALIDATION_MAX_BLOCKS
    per_eval = DEFAULT_EVAL_BATCHES * EVAL_BATCH
    assert f"evaluation: {DEFAULT_EVAL_BATCHES} batches ({per_eval:,} blocks" in out, out


def test_dry_run_prints_the_cost_plan_and_calibrates_outside_the_run(tmp_path, capsys, monkeypatch):
    """The plan's checkpoint size against the checkpoint the run then commits; a resumed run's rate from its
    metrics; `--calibrate` times steps, an eval batch and a save elsewhere: the run directory stays byte-identical."""
    import re

    from conftest import snapshot
    from gptresume.cli import main

    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    config = write_config(tmp_path, train={"max_steps": 8})
    assert main(["train", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cost plan:" in out and "training:   8 steps, 1,024 tokens" in out, out  # 8 x batch 4 x 32 tokens
    assert "saves of" in out and "(estimated)" in out and "--calibrate" in out
    estimate = re.search(r"saves of ([\d.]+) (KB|MB)", out)
    run = tmp_path / "run"
    first = run_cli(tmp_path, "train", config, "--stop-at-step", "4")
    assert first.returncode == 75, first.stderr
    committed = sum(p.stat().st_size for p in (run / "checkpoint-4").rglob("*") if p.is_file())
    estimated = float(estimate.group(1)) * (1e3 if estimate.group(2) == "KB" else 1e6)
    assert abs(estimated - committed) / committed < 0.05, (estimated, committed)

    before = snapshot(run)
    assert main(["train", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "training:   4 steps" in out and "as committed before" in out, out
    assert "rates from the run's metrics.jsonl" in out and "wall time:  about" in out
    assert main(["train", str(config), "--dry-run", "--calibrate"]) == 0
    out = capsys.readouterr().out
    assert "rates from calibration (--calibrate: 3 steps, one evaluation batch, one save)" in out, out
    assert snapshot(run) == before
    assert main(["train", str(config), "--calibrate"]) == 2  # only with --dry-run
    assert "--calibrate goes with --dry-run" in capsys.readouterr().err
