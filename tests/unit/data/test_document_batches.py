"""Packing a corpus whose every file is one document (text_unit: document, the fine-tune preset's): batches hold
about BATCH_TEXT_BYTES of text rather than a thousand whole files (memory, workers, progress), and the token
stream, hence the blocks and the data fingerprint, is the same whatever the batch size."""

from conftest import corpus_texts
from gptresume.config import DataConfig
from gptresume.data import sources
from gptresume.data.packing import prepare_data
from gptresume.data.sources import documents_per_batch, text_batches
from gptresume.modeling import train_tokenizer


def test_documents_per_batch():
    assert documents_per_batch(1 << 30, 16, 1000) == 1  # 64 MB files: one per batch
    assert documents_per_batch(1 << 30, 4096, 1000) == 64  # 256 KB files
    assert documents_per_batch(10 << 20, 100_000, 1000) == 1000  # small files: the usual 1,000


def test_large_documents_come_in_small_batches_and_pack_the_same(tmp_path, monkeypatch):
    docs = corpus_texts(24)
    for i, d in enumerate(docs):
        (tmp_path / f"doc-{i:02d}.txt").write_text(d)
    cfg = DataConfig(source=str(tmp_path / "*.txt"), text_unit="document", block_size=32, validation_fraction=0.1)
    tokenizer = train_tokenizer(docs, 400)
    whole = prepare_data(cfg, tokenizer, tmp_path / "a")
    monkeypatch.setattr(sources, "BATCH_TEXT_BYTES", 20_000)  # a few documents per batch
    batches, _ = text_batches(cfg, 1000)
    sizes = [len(b) for b in batches]
    assert len(sizes) > 3 and sum(sizes) == len(docs)
    small = prepare_data(cfg, tokenizer, tmp_path / "b")
    assert small.fingerprint == whole.fingerprint and small.num_tokens == whole.num_tokens
    whole.discard()
    small.discard()
