"""The script path held to the CLI's bar (issues 25 and 28): bad arguments to `gptresume.train` end as the CLI ends
(exit 2, one message naming the argument and the fix, no traceback, nothing written; `raise_errors=True` raises
instead), `save_total_limit=0` keeps its Transformers meaning, and a run_clm.py-shaped script (its own tokenization,
`group_texts`, the README's one line, the full epilogue) killed during its epilogue exits 0 on its re-run with every
result file and the weights of an uninterrupted run, while a changed learning rate in the unmodified script ends
with the table and exit 2. The script sees gptresume's lines although it configures no logging."""

from __future__ import annotations

import json
import signal

import pytest

from conftest import assert_bitwise_equal, run_script, snapshot, start_command

pytestmark = pytest.mark.slow


def tiny_trainer(out, **args):
    import datasets
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    blocks = torch.randint(0, 64, (32, 16), generator=torch.Generator().manual_seed(3)).tolist()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=64))
    settings = dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=4, save_steps=2, logging_steps=1,
                    seed=5, report_to="none", use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False)
    return Trainer(model=model, args=TrainingArguments(**{**settings, **args}),
                   train_dataset=datasets.Dataset.from_dict({"input_ids": blocks}),
                   data_collator=lambda rows: {"input_ids": torch.tensor([r["input_ids"] for r in rows]),
                                               "labels": torch.tensor([r["input_ids"] for r in rows])})


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run directory with a committed checkpoint (stopped at step 2), in this process."""
    import gptresume

    run = tmp_path_factory.mktemp("args") / "run"
    outcome = gptresume.train(tiny_trainer(run), stop_at_step=2, exit_on_stop=False)
    assert (outcome.status, outcome.step) == ("stopped", 2)
    return run


# (what is passed: keywords, or a replacement for the trainer; the argument named; a fragment of the fix)
CASES = {
    "not a Trainer": ({"trainer": "model"}, "gptresume.train(trainer): expects a transformers.Trainer",
                      "got GPT2LMHeadModel"),
    "None": ({"trainer": None}, "gptresume.train(trainer)", "got NoneType"),
    "keep_last=0": ({"keep_last": 0}, "keep_last=0", "at least 1, or None"),
    "keep_last<0": ({"keep_last": -2}, "keep_last=-2", "at least 1"),
    "keep_last str": ({"keep_last": "3"}, "keep_last='3'", "expected int or None"),
    "allow_change str": ({"allow_change": "learning_rate"}, "allow_change='learning_rate'",
                         "allow_change=['learning_rate']"),
    "allow_change typo": ({"allow_change": ["learnig_rate"]}, "allow_change=['learnig_rate']",
                          "no such config field"),
    "allow_change never": ({"allow_change": ["seed"]}, "allow_change=['seed']", "can never change"),
    "unknown keyword": ({"keep_lst": 2}, "unknown keyword 'keep_lst'", "did you mean 'keep_last'"),
    "stop_at_step=0": ({"stop_at_step": 0}, "stop_at_step=0", "at least 1"),
    "stop_exit_code=1": ({"stop_exit_code": 1}, "stop_exit_code=1", "needs its own code"),
    "resume empty": ({"resume": ""}, "resume=''", "'auto', 'never', 'must'"),
    "overwrite": ({"overwrite": True}, "overwrite=True", "resume='never'"),
    "remote": ({"remote": "bucket/run"}, "remote='bucket/run'", "fsspec URL"),
    "save_strategy no": ({"args": {"save_strategy": "no"}}, "save_strategy='no'", "every_minutes="),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_arguments_end_like_the_cli_and_write_nothing(case, stopped_run, tmp_path, capsys):
    import gptresume

    passed, named, fix = CASES[case]
    new = tmp_path / "new"
    before = {d: snapshot(d) for d in (stopped_run, new)}
    for run in (stopped_run, new):
        trainer = tiny_trainer(run, **passed.get("args", {}))
        if "trainer" in passed:
            trainer = trainer.model if passed["trainer"] == "model" else passed["trainer"]
        keywords = {k: v for k, v in passed.items() if k not in ("trainer", "args")}
        capsys.readouterr()
        with pytest.raises(SystemExit) as ended:  # the default: the CLI's ending
            gptresume.train(trainer, **keywords)
        err = capsys.readouterr().err
        assert ended.value.code == 2 and err.startswith("error: ") and "Traceback" not in err
        assert named in err and fix in err, err
        with pytest.raises(gptresume.UsageError) as raised:  # for notebooks and libraries
            gptresume.train(trainer, raise_errors=True, **keywords)
        assert named in str(raised.value) and raised.value.exit_code == 2
    # nothing written: the stopped run's files (names, sizes, mtimes) and the new run's (Trainer creates the dir)
    assert snapshot(stopped_run) == before[stopped_run] and snapshot(new) == before[new] == {}


@pytest.mark.parametrize("limit, kept", [(0, [1, 2, 3, 4]), (None, [1, 2, 3, 4]), (2, [3, 4])])
def test_save_total_limit_keeps_its_transformers_meaning(tmp_path, limit, kept):
    """0 or None: no limit (Transformers' `rotate_checkpoints` deletes nothing then); a positive limit keeps the
    newest ones, deleted only after a newer one committed."""
    import gptresume
    from gptresume.checkpoint import verify_checkpoint

    outcome = gptresume.train(tiny_trainer(tmp_path / "run", save_steps=1, save_total_limit=limit))
    assert (outcome.status, outcome.step) == ("complete", 4)
    found = sorted(p for p in (tmp_path / "run").glob("checkpoint-*"))
    assert sorted(int(p.name.split("-")[1]) for p in found) == kept
    assert all(verify_checkpoint(p).valid for p in found)


# ---------------------------------------------------------------- a run_clm.py-shaped script

RUN_CLM = r'''
"""transformers/examples/pytorch/language-modeling/run_clm.py, in small: its own tokenization of a text,
group_texts, the one line gptresume's README changes, and the whole epilogue. No try/except, no logging setup."""
import math
import os
import signal
import sys
from itertools import chain

import datasets
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, default_data_collator

import gptresume

output_dir = sys.argv[1]
block_size = 32
from pydoc_data.topics import topics

raw_datasets = datasets.Dataset.from_dict({"text": [topics[k] for k in sorted(topics)[:10]]}).train_test_split(
    test_size=0.2, seed=0)


def tokenize_function(examples):  # a byte-level "tokenizer": nothing to download
    ids = [list(text.encode("utf-8")) for text in examples["text"]]
    return {"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]}


tokenized_datasets = raw_datasets.map(tokenize_function, batched=True, remove_columns=["text"])


def group_texts(examples):
    concatenated_examples = {k: list(chain(*examples[k])) for k in examples.keys()}
    total_length = len(concatenated_examples[list(examples.keys())[0]])
    total_length = (total_length // block_size) * block_size
    result = {k: [t[i: i + block_size] for i in range(0, total_length, block_size)]
              for k, t in concatenated_examples.items()}
    result["labels"] = result["input_ids"].copy()
    return result


lm_datasets = tokenized_datasets.map(group_texts, batched=True)
train_dataset, eval_dataset = lm_datasets["train"], lm_datasets["test"]

torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=block_size, vocab_size=256))
training_args = TrainingArguments(output_dir=output_dir, max_steps=12, per_device_train_batch_size=4,
                                  learning_rate=float(os.environ.get("LR", "3e-3")), logging_steps=2, save_steps=4,
                                  save_total_limit=2, seed=42, report_to="none", use_cpu=True,
                                  dataloader_pin_memory=False)
trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                  data_collator=default_data_collator)

train_result = gptresume.train(trainer).train_output
trainer.save_model()
print("EPILOGUE: model saved", flush=True)
if os.environ.get("PAUSE_IN_EPILOGUE"):  # the test kills the script here, half-way through its epilogue
    signal.pause()

metrics = train_result.metrics
metrics["train_samples"] = len(train_dataset)
trainer.log_metrics("train", metrics)
trainer.save_metrics("train", metrics)
trainer.save_state()

metrics = trainer.evaluate()
metrics["eval_samples"] = len(eval_dataset)
try:
    perplexity = math.exp(metrics["eval_loss"])
except OverflowError:
    perplexity = float("inf")
metrics["perplexity"] = perplexity
trainer.log_metrics("eval", metrics)
trainer.save_metrics("eval", metrics)
'''

RESULT_FILES = ("all_results.json", "train_results.json", "eval_results.json", "trainer_state.json",
                "model.safetensors")


def test_a_run_clm_script_killed_in_its_epilogue_exits_0_on_its_rerun(tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "run_clm.py"
    script.write_text(RUN_CLM)
    reference = tmp_path / "reference"
    first = run_script(tmp_path, script, reference)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Starting a new run in" in first.stderr and "checkpoint-4 committed" in first.stderr
    assert "Training complete at step 12" in first.stderr  # gptresume's lines, with no logging configured

    out = tmp_path / "killed"
    proc = start_command(tmp_path, [out], script=script, env={"PAUSE_IN_EPILOGUE": "1"}, stream=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "EPILOGUE: model saved" in line:
            break
    assert (out / "model.safetensors").is_file() and not (out / "all_results.json").exists(), "".join(seen)
    proc.send_signal(signal.SIGKILL)  # mid-epilogue: the model saved, no metrics, no evaluation yet
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    rerun = run_script(tmp_path, script, out)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "Traceback" not in rerun.stderr and "Run complete:" in rerun.stderr and "reached step 12" in rerun.stderr
    for name in RESULT_FILES:
        assert (out / name).is_file(), name
    assert_bitwise_equal(load_file(str(reference / "model.safetensors")), load_file(str(out / "model.safetensors")))
    ref_train, train = (json.loads((d / "train_results.json").read_text()) for d in (reference, out))
    assert train["train_loss"] == ref_train["train_loss"] and train.keys() == ref_train.keys()
    ref_eval, ev = (json.loads((d / "eval_results.json").read_text()) for d in (reference, out))
    assert ev["eval_loss"] == ref_eval["eval_loss"] and ev["perplexity"] == ref_eval["perplexity"]
    ref_state, state = (json.loads((d / "trainer_state.json").read_text()) for d in (reference, out))
    assert state["global_step"] == ref_state["global_step"] == 12
    assert state["log_history"][-1].keys() == ref_state["log_history"][-1].keys()  # the end-of-training entry too

    again = run_script(tmp_path, script, out)  # every re-run, not just the first
    assert again.returncode == 0, again.stdout + again.stderr

    changed = run_script(tmp_path, script, out, env={"LR": "1e-3"})  # the unmodified script, another rate
    assert changed.returncode == 2, changed.stdout + changed.stderr
    assert "Traceback" not in changed.stderr and changed.stderr.count("error: ") == 1
    row = next(line for line in changed.stderr.splitlines() if "train.learning_rate" in line)
    assert "0.003" in row and "0.001" in row and "REFUSED" in row, changed.stderr
    assert "allow_change=['learning_rate']" in changed.stderr
