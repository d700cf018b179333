"""Packing asks the tokenizer's Rust backend for ids directly (data/tokens.py `ids_encoder`): the ids must be the
ones `tokenizer(docs, add_special_tokens=False)` gives, or the transformers call is kept."""

import numpy as np
import pytest

from conftest import corpus_texts
from gptresume.data.tokens import encode_batch, ids_encoder, tokenize_to_file
from gptresume.modeling import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(corpus_texts(), 400)


def reference(tokenizer, docs):
    """The encoding packing made before the fast path (and still makes when the paths differ)."""
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    return np.array([t for x in ids for t in x + [tokenizer.eos_token_id]], dtype=np.int32)


def test_fast_path_is_taken_and_gives_the_same_ids(tokenizer):
    docs = corpus_texts(40) + ["", "  ", "<|endoftext|> inside a document", "é ü 中文"]
    encode = ids_encoder(tokenizer, docs)
    assert encode.__name__ == "fast"
    assert np.array_equal(encode_batch(encode, docs, tokenizer.eos_token_id), reference(tokenizer, docs))


def test_a_backend_that_disagrees_keeps_the_transformers_call(tokenizer, tmp_path):
    class Disagreeing:  # the backend's fast call drops each document's last token
        def __init__(self, real):
            self.real = real

        def encode_batch_fast(self, docs, add_special_tokens):
            out = self.real.encode_batch_fast(docs, add_special_tokens=add_special_tokens)
            return [type("E", (), {"ids": e.ids[:-1]})() for e in out]

    class Wrapped:
        eos_token_id = tokenizer.eos_token_id
        backend_tokenizer = Disagreeing(tokenizer.backend_tokenizer)

        def __call__(self, docs, **kw):
            return tokenizer(docs, **kw)

    docs = corpus_texts(30)
    encode = ids_encoder(Wrapped(), docs)
    assert encode.__name__ == "full"
    out = tmp_path / "tokens.bin"
    n = tokenize_to_file([docs[:10], docs[10:]], 0, Wrapped(), out, num_proc=1)
    assert np.array_equal(np.fromfile(out, dtype=np.int32), reference(tokenizer, docs)) and n == out.stat().st_size // 4


def test_workers_write_the_same_stream(tokenizer, tmp_path):
    docs = corpus_texts(60)
    batches = [docs[i:i + 7] for i in range(0, len(docs), 7)]
    one, two = tmp_path / "one.bin", tmp_path / "two.bin"
    assert tokenize_to_file(batches, 0, tokenizer, one, num_proc=1) == tokenize_to_file(batches, 0, tokenizer, two,
                                                                                            num_proc=2)
    assert one.read_bytes() == two.read_bytes()
    assert np.array_equal(np.fromfile(one, dtype=np.int32), reference(tokenizer, docs))
    assert tokenize_to_file([], 0, tokenizer, tmp_path / "none.bin", num_proc=1) == 0
