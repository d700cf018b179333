"""A plain `transformers.Trainer` script made exact and crash-safe by one line: `gptresume.train(trainer)`.

    python examples/my_trainer_script.py runs/my-script            # train (or resume) 300 steps
    python examples/my_trainer_script.py runs/my-script --lr 5e-4  # refused: the checkpoint trained with 1e-3
    python examples/my_trainer_script.py runs/my-script --lr 5e-4 --allow-change learning_rate

Stop it any way (Ctrl-C, `kill -TERM`, `kill -9`) and run the same command again: it continues from the newest
verified checkpoint with the same losses, bit for bit. Exit codes are the CLI's: 0 done, 2 refused or bad input
(nothing changed), 75 stopped after committing a checkpoint (run it again to resume).

Everything but the `gptresume.train` call is an ordinary Trainer script: its own model (a tiny GPT-2), its own
byte-level "tokenizer", its own `datasets.Dataset` and collator. Nothing is downloaded: the text is the
documentation that ships with Python. About 300 steps a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys

import datasets
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import gptresume

BLOCK = 64


def byte_blocks(block: int = BLOCK) -> datasets.Dataset:
    """The text as UTF-8 bytes (a 256-symbol vocabulary), cut into blocks of `block` tokens."""
    from pydoc_data.topics import topics

    data = "\n\n".join(topics[k] for k in sorted(topics)).encode()
    return datasets.Dataset.from_dict({"input_ids": [list(data[i:i + block])
                                                     for i in range(0, len(data) - block + 1, block)]})


def collate(rows: list[dict]) -> dict:
    ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
    return {"input_ids": ids, "labels": ids.clone()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir", help="the run directory (TrainingArguments.output_dir)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--max-steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="accept a changed field on resume (learning_rate, max_steps, ...)")
    a = p.parse_args()

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=BLOCK, vocab_size=256))
    args = TrainingArguments(output_dir=a.output_dir, max_steps=a.max_steps, per_device_train_batch_size=8,
                             learning_rate=a.lr, warmup_steps=20, lr_scheduler_type="cosine", logging_steps=10,
                             save_steps=50, save_total_limit=3, seed=42, report_to="none",
                             dataloader_pin_memory=False)
    trainer = Trainer(model=model, args=args, train_dataset=byte_blocks(), data_collator=collate)

    # Instead of trainer.train(). A refused resume or bad input prints the message and exits 2, a committed stop
    # exits 75, as the CLI does (raise_errors=True / exit_on_stop=False return control to the caller instead).
    outcome = gptresume.train(trainer, allow_change=a.allow_change)
    print(f"{outcome.status} at step {outcome.step}; training loss {outcome.train_output.training_loss:.4f}; "
          f"newest checkpoint: {outcome.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
