"""`gptresume.train(trainer)` held to the CLI's bar on every re-run of an unmodified script: the change table shows the
values both sides really train with (a checkpoint at TrainingArguments' default is not `None`; an older record of
only the non-default fields resumes without a change), `TrainingArguments(resume_from_checkpoint=PATH)` adopts a
read-only foreign checkpoint without writing it, and the console of a resumed run_clm-style script holds none of
the Transformers noise gptresume makes irrelevant while the script's own warnings still show."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import assert_bitwise_equal, byte_snapshot, run_script

pytestmark = pytest.mark.slow


def tiny_trainer(out: Path, **arguments):
    """A script's Trainer: a 1-layer GPT-2, random token blocks, its own collator; `arguments` override the
    TrainingArguments (learning_rate is left at Transformers' default unless given)."""
    import datasets
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    blocks = torch.randint(0, 64, (48, 16), generator=torch.Generator().manual_seed(3)).tolist()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=64))
    args = TrainingArguments(**{"output_dir": str(out), "max_steps": 6, "per_device_train_batch_size": 4,
                                "save_steps": 3, "logging_steps": 1, "seed": 5, "report_to": "none", "use_cpu": True,
                                "disable_tqdm": True, "dataloader_pin_memory": False, **arguments})

    def collate(rows):
        ids = torch.tensor([r["input_ids"] for r in rows])
        return {"input_ids": ids, "labels": ids.clone()}

    return Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict({"input_ids": blocks}),
                   data_collator=collate)


def refusal(capsys, trainer, **kwargs) -> str:
    """The message of a refused `gptresume.train`: raised (ResumeRefused), or printed before exit 2."""
    import gptresume

    try:
        gptresume.train(trainer, exit_on_stop=False, **kwargs)
    except gptresume.ResumeRefused as e:
        return str(e)
    except SystemExit as e:  # the default: the message on stderr, after whatever Transformers warned before it
        assert e.code == 2
        err = capsys.readouterr().err
        return err[err.index("error: "):]
    raise AssertionError("the resume was not refused")


def table_row(text: str, key: str) -> list[str]:
    return next(line.split() for line in text.splitlines() if line.strip().startswith(key + " "))


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines() if line.strip()]


def test_the_change_table_shows_the_values_both_sides_train_with(tmp_path, capsys):
    import gptresume

    out = tmp_path / "run"
    stopped = gptresume.train(tiny_trainer(out), stop_at_step=3, exit_on_stop=False)  # at the default, 5e-05
    assert stopped.status == "stopped"
    manifest = json.loads((out / "checkpoint-3" / "manifest.json").read_text())
    assert manifest["config"]["train"]["learning_rate"] == 5e-05  # recorded although it is the default
    text = refusal(capsys, tiny_trainer(out, learning_rate=1e-4))
    assert table_row(text, "train.learning_rate")[:5] == ["train.learning_rate", "5e-05", "0.0001", "optimizer",
                                                          "REFUSED"]
    assert "None" not in text
    # a checkpoint of an earlier gptresume recorded only the fields that differ from their defaults: same run
    manifest["config"]["train"] = {k: v for k, v in manifest["config"]["train"].items()
                                   if k in ("max_steps", "per_device_train_batch_size", "save_steps", "logging_steps",
                                            "seed", "use_cpu", "disable_tqdm", "dataloader_pin_memory",
                                            "report_to", "accelerator_config", "activation_checkpointing",
                                            "gradient_checkpointing", "debug")
                                   and v != {"per_device_train_batch_size": 8, "seed": 42}.get(k)}
    (out / "checkpoint-3" / "manifest.json").write_text(json.dumps(manifest))
    text = refusal(capsys, tiny_trainer(out, learning_rate=1e-4))
    assert table_row(text, "train.learning_rate")[:4] == ["train.learning_rate", "5e-05", "(default)", "0.0001"]
    resumed = gptresume.train(tiny_trainer(out), exit_on_stop=False)
    assert (resumed.status, resumed.step) == ("complete", 6)
    assert [e["changes"] for e in history(out) if e["event"] == "resume"] == [[]]


def test_adopting_a_read_only_foreign_checkpoint_leaves_it_byte_identical(tmp_path):
    """`TrainingArguments(resume_from_checkpoint=PATH)` on another run's checkpoint (a plain Trainer's, read-only):
    the adopting run commits a copy in its own output_dir, trains on exactly, and PATH is never written."""
    import gptresume

    plain = tmp_path / "plain"
    tiny_trainer(plain).train()  # plain Trainer: checkpoint-3 and checkpoint-6, no manifests
    subprocess.run(["chmod", "-R", "a-w", str(plain)], check=True)
    before = byte_snapshot(plain)
    out = tmp_path / "run"
    outcome = gptresume.train(tiny_trainer(out, resume_from_checkpoint=str(plain / "checkpoint-3")))
    assert (outcome.status, outcome.step, outcome.resumed_from) == ("complete", 6, out / "checkpoint-3")
    assert byte_snapshot(plain) == before  # names, sizes, mtimes, modes and sha256
    assert json.loads((out / "checkpoint-3" / "manifest.json").read_text())["adopted"] is True
    from safetensors.torch import load_file

    assert_bitwise_equal(load_file(str(out / "checkpoint-6" / "model.safetensors")),
                         load_file(str(plain / "checkpoint-6" / "model.safetensors")))
    again = gptresume.train(tiny_trainer(out, resume_from_checkpoint=str(plain / "checkpoint-3")))
    assert again.status == "already complete" and byte_snapshot(plain) == before


# A run_clm-style script: its own tokenizer and tokenization, group_texts, processing_class (Trainer aligns the
# model config with the tokenizer's special tokens), and its own warnings, one of them from a callback while
# gptresume.train runs. argv: OUTPUT_DIR [JSON options: stop_at_step, logging_steps].
CLM_SCRIPT = r'''
import json, logging, sys, warnings

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, Trainer, TrainerCallback,
                          TrainingArguments, default_data_collator)

import gptresume

out = sys.argv[1]
opts = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
from pydoc_data.topics import topics

text = "\n\n".join(topics[k] for k in sorted(topics)[:6])
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()), length=1)
tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                    pad_token="<|endoftext|>")
raw = Dataset.from_dict({"text": text.split("\n\n")})
tokenized = raw.map(lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"])


def group_texts(examples):
    concatenated = {k: sum(examples[k], []) for k in examples}
    total = len(concatenated["input_ids"]) // 32 * 32
    result = {k: [t[i:i + 32] for i in range(0, total, 32)] for k, t in concatenated.items()}
    result["labels"] = result["input_ids"].copy()
    return result


train_dataset = tokenized.map(group_texts, batched=True)
log = logging.getLogger("my_script")


class Talk(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 6:
            warnings.warn("MY WARNINGS.WARN DURING TRAINING")
            log.warning("MY LOGGER.WARNING DURING TRAINING")
            logging.getLogger("transformers.trainer").warning("MY MESSAGE ON TRANSFORMERS' LOGGER")


torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=len(tokenizer)))
args = TrainingArguments(output_dir=out, max_steps=8, save_steps=2, per_device_train_batch_size=4,
                         logging_steps=opts.get("logging_steps", 1), seed=7, report_to="none", use_cpu=True,
                         dataloader_pin_memory=False)
trainer = Trainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                  data_collator=default_data_collator, callbacks=[Talk()])
train_result = gptresume.train(trainer, stop_at_step=opts.get("stop_at_step")).train_output
log.warning("MY LOGGER.WARNING AFTER TRAINING")
'''

NOISE = ("Writing model shards", "missing keys in the checkpoint", "do not match the ones in the `trainer_state.json`",
         "PAD/BOS/EOS")


def test_a_resumed_scripts_console_has_no_transformers_noise_and_all_of_its_own(tmp_path):
    script = tmp_path / "run_clm.py"
    script.write_text(CLM_SCRIPT)
    out = tmp_path / "clm"
    first = run_script(tmp_path, script, out, json.dumps({"stop_at_step": 4}))
    assert first.returncode == 75, first.stdout + first.stderr
    # a resume that changes the logging cadence (applied by gptresume, while trainer_state.json says otherwise),
    # loads gptresume's checkpoint (tied lm_head) and aligns the special tokens again, saving on the way
    resumed = run_script(tmp_path, script, out, json.dumps({"logging_steps": 2}))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (out / "checkpoint-8" / "manifest.json").is_file()
    for own in ("MY WARNINGS.WARN DURING TRAINING", "MY LOGGER.WARNING DURING TRAINING",
                "MY MESSAGE ON TRANSFORMERS' LOGGER", "MY LOGGER.WARNING AFTER TRAINING"):
        assert own in resumed.stderr, own
    complete = run_script(tmp_path, script, out, json.dumps({"logging_steps": 2}))  # loads the final checkpoint
    assert complete.returncode == 0, complete.stdout + complete.stderr
    assert [noise for noise in NOISE if noise in resumed.stderr + complete.stderr] == []
