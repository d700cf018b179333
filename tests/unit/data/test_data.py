"""Sources, packing and the tokenization cache."""

import json
import os

import numpy as np
import pytest

from conftest import corpus_texts
from gptresume.config import DataConfig
from gptresume.data import PackedBlockCollator, load_texts, pack, prepare_data, save_to_cache, split_blocks
from gptresume.errors import UsageError
from gptresume.modeling import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(corpus_texts(), 400)


def test_packing_concatenates_documents_with_eos_and_cuts_exact_blocks(tokenizer):
    import datasets

    docs = ["alpha beta gamma", "delta", "epsilon zeta eta theta iota"]
    blocks, n_tokens = pack(datasets.Dataset.from_dict({"text": docs}), tokenizer, block_size=4)
    stream = []
    for d in docs:
        stream += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert n_tokens == len(stream)
    assert len(blocks) == len(stream) // 4
    got = [row["input_ids"] for row in blocks]
    assert all(len(b) == 4 for b in got)  # fixed length: no padding anywhere
    assert sum(got, []) == stream[: len(got) * 4]  # the stream in order, tail dropped
    assert sum(b.count(tokenizer.eos_token_id) for b in got) >= 2  # EOS separators are kept


def test_collator_trains_on_eos_tokens(tokenizer):
    eos = tokenizer.eos_token_id
    batch = PackedBlockCollator()([{"input_ids": [5, eos, 7]}, {"input_ids": [eos, 8, 9]}])
    # EOS is trained on (not masked); only the first position, which the model never predicts, is -100
    assert batch["labels"].tolist() == [[-100, eos, 7], [-100, 8, 9]]
    assert batch["input_ids"].tolist() == [[5, eos, 7], [eos, 8, 9]]


def test_loss_with_trainers_item_count_is_the_mean_per_predicted_token():
    """Trainer divides the summed loss by num_items_in_batch = labels != -100 (GPT-2, transformers 5.24)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=50)).eval()
    ids = torch.randint(0, 50, (3, 8))
    batch = PackedBlockCollator()([{"input_ids": row} for row in ids.tolist()])
    with torch.no_grad():
        loss = model(**batch, num_items_in_batch=batch["labels"].ne(-100).sum()).loss
        logits = model(input_ids=ids).logits
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(per_token.item(), rel=1e-6)
    assert batch["input_ids"].dtype.is_floating_point is False and "attention_mask" not in batch


def test_validation_split_is_fixed_and_disjoint(tokenizer):
    import datasets

    blocks = datasets.Dataset.from_dict({"input_ids": [[i, i] for i in range(100)]})
    train, val = split_blocks(blocks, 0.1)
    train2, val2 = split_blocks(blocks, 0.1)
    assert len(val) == 10 and len(train) == 90
    assert val["input_ids"] == val2["input_ids"] and train["input_ids"] == train2["input_ids"]
    assert not {r[0] for r in train["input_ids"]} & {r[0] for r in val["input_ids"]}
    assert [r[0] for r in train["input_ids"]] == sorted(r[0] for r in train["input_ids"])  # stream order kept


def test_builtin_corpus_needs_no_download():
    texts = load_texts(DataConfig(source="builtin:python-docs"))
    assert len(texts) > 50 and "for" in texts[0]["text"] + texts[1]["text"] + texts[2]["text"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_structured_files_with_text_column(tmp_path, fmt):
    import pandas as pd

    df = pd.DataFrame({"id": [1, 2, 3], "body": ["first doc", "second doc", "third doc"]})
    path = tmp_path / f"d.{fmt}"
    {"jsonl": lambda: df.to_json(path, orient="records", lines=True), "csv": lambda: df.to_csv(path, index=False),
     "parquet": lambda: df.to_parquet(path)}[fmt]()
    texts = load_texts(DataConfig(source=str(path), text_column="body"))
    assert texts["text"] == ["first doc", "second doc", "third doc"]
    with pytest.raises(UsageError, match="no column 'text'.*body"):
        load_texts(DataConfig(source=str(path)))


def test_txt_globs_and_text_units(tmp_path):
    (tmp_path / "a.txt").write_text("para one\nline two\n\npara three\n")
    (tmp_path / "b.txt").write_text("other file\n")
    assert len(load_texts(DataConfig(source=str(tmp_path / "*.txt")))) == 2  # a document per file
    assert len(load_texts(DataConfig(source=str(tmp_path / "*.txt"), text_unit="paragraph"))) == 3


def test_missing_empty_and_too_short_data(tmp_path, tokenizer):
    with pytest.raises(UsageError, match="no file matches"):
        load_texts(DataConfig(source=str(tmp_path / "missing*.txt")))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UsageError):
        load_texts(DataConfig(source=str(tmp_path / "empty.jsonl")))
    (tmp_path / "short.txt").write_text("just a few words")
    with pytest.raises(UsageError, match="fewer than one block"):
        prepare_data(DataConfig(source=str(tmp_path / "short.txt"), block_size=64), tokenizer, tmp_path / "run")


def test_cache_makes_resume_skip_tokenization(tmp_path, tokenizer):
    (tmp_path / "c.txt").write_text("\n\n".join(corpus_texts(4)))
    cfg = DataConfig(source=str(tmp_path / "c.txt"), block_size=16, validation_fraction=0.1)
    run = tmp_path / "run"
    refused = prepare_data(cfg, tokenizer, run)
    assert [p.name for p in (run / "data-cache").iterdir()] == [refused.staging.name]  # staged, not yet kept
    refused.discard()
    assert not run.exists()  # a refused run: RUN_DIR as it was
    first = prepare_data(cfg, tokenizer, run)
    save_to_cache(first, cfg, tokenizer, run)
    assert first.staging is None and len(first.train) == len(refused.train)

    class NoTokenizing:  # same vocabulary, but calling it fails: proves the cache is used
        backend_tokenizer = tokenizer.backend_tokenizer

        def __call__(self, *a, **k):
            raise AssertionError("re-tokenized on resume")

    again = prepare_data(cfg, NoTokenizing(), run)
    assert again.fingerprint == first.fingerprint
    assert np.array_equal(again.train.array(), first.train.array())

    # The stat cache: same path, size, mtime_ns and inode -> the recorded hash, the file is not read. An edit that
    # keeps all four (same length, mtime set back) is not seen: the documented limit.
    st = (tmp_path / "c.txt").stat()
    text = (tmp_path / "c.txt").read_text()
    with open(tmp_path / "c.txt", "r+") as f:
        f.write(text[:10].upper())
    os.utime(tmp_path / "c.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert prepare_data(cfg, NoTokenizing(), run).fingerprint == first.fingerprint
    (tmp_path / "c.txt").write_text("\n\n".join(corpus_texts(5)))  # changed data: new key, new fingerprint
    changed = prepare_data(cfg, tokenizer, run)
    assert changed.fingerprint != first.fingerprint
    meta = json.loads((run / "data-cache" / first.key / "meta.json").read_text())
    assert meta["fingerprint"] == first.fingerprint
