"""LoRA through peft, wandb and MLflow across a resume, a Llama-shaped model from scratch, and integrations checked
before the run directory is touched.

Each exactness cell costs two real runs: a run trained to the end (saving at step 4 and 8), then the same command
with `--resume RUN/checkpoint-4` in a new process, which trains steps 5-8 again. The first process is the
uninterrupted reference for steps 5-8: the resumed process must log the same losses and write a bitwise-identical
checkpoint-8 (the first one is set aside as `checkpoint-8.replaced-*`). For the trackers this is the case of a kill
after step 8 with checkpoint-4 the newest committed: the tracker run already holds steps 5-8.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import (
    assert_bitwise_equal,
    assert_refused,
    corpus_texts,
    make_base_model,
    run_cli,
    run_script,
    train_losses,
    write_config,
)

MAX_STEPS, RESUMED_FROM = 8, 4
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["c_attn", "c_proj"]}
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32}


def tracker_env(tmp: Path) -> dict:
    return {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp / "wandb-dir"), "WANDB_SILENT": "true",
            "MLFLOW_TRACKING_URI": f"file://{tmp / 'mlruns'}", "MLFLOW_ALLOW_FILE_STORE": "true"}


def config_with_model(tmp: Path, model: dict, **train) -> Path:
    path = write_config(tmp, train={"max_steps": MAX_STEPS, **train})
    raw = yaml.safe_load(path.read_text())
    raw["model"] = model
    path.write_text(yaml.safe_dump(raw))
    return path


def run_twice(tmp: Path, config: Path, env: dict | None = None) -> SimpleNamespace:
    """Train to the end, then train steps 5-8 again from checkpoint-4 in a new process."""
    first = run_cli(tmp, "train", config, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = tmp / "run"
    losses = train_losses(run_dir)
    second = run_cli(tmp, "train", config, "--resume", str(run_dir / f"checkpoint-{RESUMED_FROM}"), env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"Resuming from {run_dir / f'checkpoint-{RESUMED_FROM}'}" in second.stdout
    (reference,) = run_dir.glob(f"checkpoint-{MAX_STEPS}.replaced-*")
    return SimpleNamespace(tmp=tmp, dir=run_dir, config=config, first_losses=losses, losses=train_losses(run_dir),
                           reference=reference, outputs=first.stdout + first.stderr + second.stdout + second.stderr)


def safetensors_in(directory: Path) -> dict:
    from safetensors.torch import load_file

    return {name: load_file(str(p)) for p in sorted(directory.glob("*.safetensors")) for name in [p.name]}


def assert_resumed_exactly(r: SimpleNamespace) -> None:
    assert sorted(r.first_losses) == list(range(1, MAX_STEPS + 1))
    assert r.losses == r.first_losses  # steps 5-8 of the resumed process, bit for bit (floats compared exactly)
    again, reference = safetensors_in(r.dir / f"checkpoint-{MAX_STEPS}"), safetensors_in(r.reference)
    assert again and again.keys() == reference.keys()
    for name in again:
        assert_bitwise_equal(again[name], reference[name])


# ---------------------------------------------------------------- LoRA, with wandb and MLflow logging the runs


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    base = make_base_model(tmp / "base")
    config = config_with_model(tmp, {"name_or_path": str(base), "peft": LORA}, report_to=["wandb", "mlflow"])
    return run_twice(tmp, config, env=tracker_env(tmp))


@pytest.mark.slow
def test_lora_checkpoints_hold_adapters_and_resume_bitwise(lora):
    ckpt = lora.dir / f"checkpoint-{MAX_STEPS}"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(manifest["files"])  # committed, hashed
    assert not (ckpt / "model.safetensors").exists()
    assert_resumed_exactly(lora)
    (weights,) = safetensors_in(ckpt).values()
    assert weights and all("lora_" in k for k in weights)


@pytest.mark.slow
def test_lora_export_adapters_or_merged_and_the_tools_load_both(lora, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    from gptresume.cli import main

    assert main(["export", str(lora.dir / f"checkpoint-{MAX_STEPS}"), str(lora.tmp / "adapters")]) == 0
    assert main(["export", str(lora.dir), str(lora.tmp / "merged"), "--merge"]) == 0
    adapters, merged = lora.tmp / "adapters", lora.tmp / "merged"
    assert (adapters / "adapter_model.safetensors").read_bytes() == \
        (lora.dir / f"checkpoint-{MAX_STEPS}" / "adapter_model.safetensors").read_bytes()
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    # the merged weights differ from the base model's exactly where LoRA adapted it
    base = AutoModelForCausalLM.from_pretrained(str(lora.tmp / "base"))
    full = AutoModelForCausalLM.from_pretrained(str(merged))
    changed = {k for k, v in full.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert changed and all(k.endswith(("c_attn.weight", "c_proj.weight")) for k in changed), changed
    capsys.readouterr()
    texts = []
    for path in (adapters, merged, lora.dir):
        assert main(["generate", str(path), "--prompt", "The", "--max-new-tokens", "6", "--greedy"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] == texts[2]  # adapters on their base == merged model == the run's final/
    losses, sample = [], lora.tmp / "sample.txt"
    sample.write_text("\n\n".join(corpus_texts(2)))
    for path in (lora.dir / f"checkpoint-{MAX_STEPS}", merged):
        assert main(["eval", str(path), "--data", str(sample), "--block-size", "32", "--text-unit", "paragraph",
                     "--json"]) == 0
        losses.append(json.loads(capsys.readouterr().out)["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def wandb_history(wandb_dir: Path) -> list[tuple[str, list[dict]]]:
    """(run id, history rows) of each offline segment, oldest first, read from wandb's transaction log (LevelDB log
    format: 7-byte file header, 32 KiB blocks of records with a 7-byte header, a record possibly split)."""
    from wandb.proto import wandb_internal_pb2 as pb

    segments = []
    for path in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, pending, rows, run_id = path.read_bytes(), 7, b"", [], None
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            if left < 7:
                pos += left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if length == 0 and kind == 0:
                pos += left
                continue
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind not in (1, 4):
                continue
            record = pb.Record()
            record.ParseFromString(pending)
            which = record.WhichOneof("record_type")
            if which == "run":
                run_id = record.run.run_id
            elif which == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
        segments.append((run_id, rows))
    return segments


@pytest.mark.slow
def test_wandb_offline_run_continues_across_the_resume_without_duplicate_steps(lora):
    segments = wandb_history(lora.tmp / "wandb-dir")
    assert len(segments) == 2 and segments[0][0] == segments[1][0]  # one wandb run, two process segments
    assert json.loads((lora.dir / "trackers.json").read_text())["wandb"]["run_id"] == segments[0][0]
    train_steps = [row["train/global_step"] for _, rows in segments for row in rows if "train/loss" in row]
    assert train_steps == list(range(1, MAX_STEPS + 1))  # the resumed process skipped the steps the run holds
    eval_steps = [row["train/global_step"] for _, rows in segments for row in rows if "eval/loss" in row]
    assert eval_steps == [4, 8]
    logged = {row["train/global_step"]: row["train/loss"]
              for _, rows in segments for row in rows if "train/loss" in row}
    assert logged == pytest.approx(lora.losses, rel=1e-6)


@pytest.mark.slow
def test_mlflow_run_continues_across_the_resume_without_duplicate_steps(lora, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=f"file://{lora.tmp / 'mlruns'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    run_id = json.loads((lora.dir / "trackers.json").read_text())["mlflow"]["run_id"]
    assert [r.info.run_id for r in runs] == [run_id]  # one MLflow run for both processes
    assert "MLflow: continuing run" in lora.outputs
    loss = client.get_metric_history(run_id, "loss")
    assert [m.step for m in loss] == list(range(1, MAX_STEPS + 1))
    assert {m.step: m.value for m in loss} == pytest.approx(lora.losses, rel=1e-6)
    assert [m.step for m in client.get_metric_history(run_id, "eval_loss")] == [4, 8]


# ---------------------------------------------------------------- a Llama-shaped model from scratch


@pytest.mark.slow
def test_llama_shaped_model_from_scratch_resumes_bitwise(tmp_path):
    config = config_with_model(tmp_path, {"from_scratch": LLAMA, "tokenizer": {"train_vocab_size": 400},
                                          "attn_implementation": "eager"})
    r = run_twice(tmp_path, config)
    assert json.loads((r.dir / "final" / "config.json").read_text())["model_type"] == "llama"
    assert_resumed_exactly(r)


# ---------------------------------------------------------------- integrations checked first

MISSING = """\
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # as if the package were not installed: import fails, find_spec says None
from gptresume.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_missing_integration_is_refused_before_the_run_directory_is_touched(tmp_path):
    config = write_config(tmp_path, train={"report_to": ["wandb"]})
    script = tmp_path / "missing.py"
    script.write_text(MISSING)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("a file the user keeps in the run directory\n")
    before = {str(p.relative_to(tmp_path)): p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    result = run_script(tmp_path, script, "wandb", "train", str(config))
    assert_refused(result, "train.report_to: 'wandb' needs the wandb package", "gptresume[trackers]")
    peft = run_script(tmp_path, script, "peft", "train", str(config), "--set", "model.peft={r: 4}",
                      "--set", "train.report_to=none")
    assert_refused(peft, "model.peft: LoRA needs the peft package")
    after = {str(p.relative_to(tmp_path)): p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    assert after == before  # byte-identical: nothing written, in the run directory or beside it
