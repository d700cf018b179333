"""Pre-tokenized sources (a flat token file, a save_to_disk directory), validation_source, max_train_tokens, and
every bad input refused before anything is written."""

import numpy as np
import pytest

from conftest import corpus_texts
from gptresume.config import DataConfig
from gptresume.data import prepare_data, save_to_cache
from gptresume.errors import UsageError
from gptresume.modeling import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(corpus_texts(), 400)


@pytest.fixture(scope="module")
def stream(tokenizer):
    """The token stream the text packing makes of the corpus (ids < 400)."""
    ids = []
    for doc in corpus_texts(6):
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return np.array(ids, dtype=np.int64)


def test_a_flat_token_file_is_cut_into_blocks_where_it_lies(tmp_path, tokenizer, stream):
    path = tmp_path / "train.bin"
    stream.astype(np.uint16).tofile(path)
    cfg = DataConfig(source=str(path), token_dtype="uint16", block_size=16, validation_fraction=0.1)
    data = prepare_data(cfg, tokenizer, tmp_path / "run")
    n = len(stream) // 16
    assert data.num_tokens == len(stream) and len(data.train) + len(data.validation) == n
    everything = np.concatenate([data.train.array(), data.validation.array()])
    assert sorted(map(tuple, everything)) == sorted(map(tuple, stream[: n * 16].reshape(n, 16)))
    save_to_cache(data, cfg, tokenizer, tmp_path / "run")
    assert not list((tmp_path / "run" / "data-cache").glob("*/*.bin"))  # used in place, never copied
    assert prepare_data(cfg, tokenizer, tmp_path / "run").fingerprint == data.fingerprint


def test_a_saved_dataset_gives_the_blocks_of_the_same_ids_as_a_token_file(tmp_path, tokenizer, stream):
    import datasets

    rows = [stream[i:i + 50].tolist() for i in range(0, len(stream), 50)]
    datasets.Dataset.from_dict({"input_ids": rows}).save_to_disk(str(tmp_path / "saved"))
    stream.astype(np.uint32).tofile(tmp_path / "same.bin")
    saved = prepare_data(DataConfig(source=str(tmp_path / "saved"), block_size=16), tokenizer, tmp_path / "r1")
    flat = prepare_data(DataConfig(source=str(tmp_path / "same.bin"), token_dtype="uint32", block_size=16),
                        tokenizer, tmp_path / "r2")
    assert saved.fingerprint == flat.fingerprint
    assert np.array_equal(saved.train.array(), flat.train.array())


@pytest.mark.parametrize("case,match", [
    ("no_dtype", "state its dtype with data.token_dtype"),
    ("odd_size", "not a multiple of 2"),
    ("beyond_vocab", "token id 399999 at position 3 is outside the tokenizer's vocabulary"),
    ("wide_as_narrow", "every other id is 0"),
    ("saved_floats", "needs an 'input_ids' column of integer token ids"),
    ("saved_beyond_vocab", "token id 500 at position 1 is outside"),
])
def test_bad_pretokenized_input_is_refused_naming_the_file_before_anything_is_written(tmp_path, tokenizer, case,
                                                                                       match):
    import datasets

    path, dtype = tmp_path / "train.bin", "uint16"
    if case == "no_dtype":
        np.arange(100, dtype=np.uint16).tofile(path)
        dtype = None
    elif case == "odd_size":
        path.write_bytes(b"\x01\x00" * 50 + b"\x01")
    elif case == "beyond_vocab":
        np.array([1, 2, 3, 399999] + [5] * 60, dtype=np.uint32).tofile(path)
        dtype = "uint32"
    elif case == "wide_as_narrow":
        np.arange(1, 200, dtype=np.uint32).tofile(path)  # written as 32-bit, read as 16-bit
    else:
        path = tmp_path / "saved"
        values = [[0.5, 1.5]] if case == "saved_floats" else [[1, 500, 3]]
        datasets.Dataset.from_dict({"input_ids": values}).save_to_disk(str(path))
        dtype = None
    cfg = DataConfig(source=str(path), token_dtype=dtype, block_size=4, validation_fraction=0)
    with pytest.raises(UsageError, match=match) as err:
        prepare_data(cfg, tokenizer, tmp_path / "run")
    assert str(path) in str(err.value)
    assert not (tmp_path / "run").exists()


def test_validation_source_and_max_train_tokens(tmp_path, tokenizer, stream):
    (tmp_path / "train.txt").write_text("\n\n".join(corpus_texts(8)))
    (tmp_path / "val.txt").write_text("\n\n".join(corpus_texts(10)[8:]))
    cfg = DataConfig(source=str(tmp_path / "train.txt"), validation_source=str(tmp_path / "val.txt"),
                     validation_fraction=0, block_size=16, text_unit="paragraph")
    data = prepare_data(cfg, tokenizer, tmp_path / "run")
    alone = prepare_data(DataConfig(source=str(tmp_path / "train.txt"), validation_fraction=0, block_size=16,
                                    text_unit="paragraph"), tokenizer, tmp_path / "r2")
    val = prepare_data(DataConfig(source=str(tmp_path / "val.txt"), validation_fraction=0, block_size=16,
                                  text_unit="paragraph"), tokenizer, tmp_path / "r3")
    assert np.array_equal(data.train.array(), alone.train.array())  # nothing held out of the training source
    assert np.array_equal(data.validation.array(), val.train.array())
    assert data.fingerprint not in (alone.fingerprint, val.fingerprint)

    capped = prepare_data(DataConfig(source=str(tmp_path / "train.txt"), validation_fraction=0, block_size=16,
                                     text_unit="paragraph", max_train_tokens=100), tokenizer, tmp_path / "r4")
    assert capped.num_tokens == 100 and np.array_equal(capped.train.array(), alone.train.array()[:6])
    stream.astype(np.uint16).tofile(tmp_path / "t.bin")
    capped_bin = prepare_data(DataConfig(source=str(tmp_path / "t.bin"), token_dtype="uint16", block_size=16,
                                         validation_fraction=0, max_train_tokens=40), tokenizer, tmp_path / "r5")
    assert capped_bin.num_tokens == 40 and len(capped_bin.train) == 2


def test_config_problems_of_the_new_fields():
    assert any("token_dtype: 'float32'" in p for p in DataConfig(token_dtype="float32").problems("data"))
    assert any("set it to 0 with validation_source" in p
               for p in DataConfig(validation_source="v.txt").problems("data"))
    assert not DataConfig(validation_source="v.txt", validation_fraction=0).problems("data")
    assert any("less than one block" in p for p in DataConfig(max_train_tokens=10).problems("data"))
    assert any("only for a hub:NAME" in p for p in DataConfig(validation_hub_split="test").problems("data"))


def test_the_new_data_fields_enter_the_resolved_config_only_when_set():
    """A run that does not use them keeps the config (and config fingerprint) its checkpoints recorded."""
    from gptresume.config import CheckpointConfig, Config, ModelConfig

    def data_of(**fields):
        return Config(ModelConfig(name_or_path="gpt2"), DataConfig(**fields), {"output_dir": "r"},
                      CheckpointConfig()).to_dict()["data"]

    before = {"source", "text_column", "text_unit", "hub_config", "hub_split", "block_size", "validation_fraction",
              "num_proc"}
    # issue 26's fields at their legacy values (what a run that predates them resolves to) are left out too; at
    # today's defaults (a new run) they are recorded
    assert set(data_of(validation_max_blocks=None, eval_batches=None)) == before
    assert set(data_of()) == before | {"validation_max_blocks", "eval_batches"}
    assert data_of(streaming=True, max_train_tokens=500)["streaming"] is True
