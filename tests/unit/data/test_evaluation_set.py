"""data/evaluation.py: what each evaluation reads, data.eval_batches global batches of blocks evenly spaced
through the validation split (the same blocks every time; the whole split for null)."""

import numpy as np
import pytest

from gptresume.data.blocks import BlockDataset, Split
from gptresume.data.evaluation import evaluation_blocks, evaluation_set, spaced_positions


@pytest.fixture
def split_file(tmp_path):
    tokens = np.arange(100 * 4, dtype=np.int32)  # block b holds 4b .. 4b+3
    path = tmp_path / "tokens.bin"
    tokens.tofile(path)
    return path


def test_blocks_per_evaluation():
    assert evaluation_blocks(20, 8) == 160
    assert evaluation_blocks(20, 16) == 320  # 2 processes of 8: every process evaluates 20 batches
    assert evaluation_blocks(None, 8) is None


def test_spaced_positions_cover_the_split_evenly():
    assert spaced_positions(10, 20).tolist() == list(range(10))
    assert spaced_positions(100, 5).tolist() == [0, 24, 49, 74, 99]
    assert spaced_positions(7, 1).tolist() == [0]
    p = spaced_positions(94_112, 160)
    assert len(set(p.tolist())) == 160 and p[0] == 0 and p[-1] == 94_111 and (np.diff(p) > 0).all()


def test_a_memory_mapped_split_is_subset_without_reading(split_file):
    val_idx = np.arange(3, 100, 3)  # 33 validation blocks
    validation = BlockDataset(Split(split_file, "int32", 4, 100, val_idx))
    evaluated = evaluation_set(validation, 2, 4)  # 2 batches of 4: 8 blocks
    assert len(evaluated) == 8
    numbers = [evaluated.block_number(i) for i in range(8)]
    assert numbers == [int(val_idx[i]) for i in spaced_positions(33, 8)]
    assert numbers[0] == 3 and numbers[-1] == 99  # from the first to the last block of the split
    assert np.array_equal(evaluated[1]["input_ids"], np.arange(4 * numbers[1], 4 * numbers[1] + 4))
    again = evaluation_set(validation, 2, 4)
    assert [again.block_number(i) for i in range(8)] == numbers  # the same blocks every evaluation
    whole_file = BlockDataset(Split(split_file, "int32", 4, 100))
    assert [evaluation_set(whole_file, 1, 3).block_number(i) for i in range(3)] == [0, 49, 99]
    assert evaluation_set(validation, None, 4) is validation and evaluation_set(validation, 50, 4) is validation
    assert evaluation_set(None, 2, 4) is None


def test_other_kinds_of_split():
    import datasets

    rows = [{"input_ids": np.full(4, i)} for i in range(10)]
    assert [int(r["input_ids"][0]) for r in evaluation_set(rows, 1, 3)] == [0, 4, 9]
    ds = datasets.Dataset.from_dict({"input_ids": [[i] * 4 for i in range(10)]})
    assert [r["input_ids"][0] for r in evaluation_set(ds, 1, 3)] == [0, 4, 9]
