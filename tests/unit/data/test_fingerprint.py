"""data/fingerprint.py: equal content gives an equal fingerprint however the dataset was built (select, indices
mappings, formats); any change of content or order gives another; streaming datasets are refused."""

from __future__ import annotations

import datasets
import pytest
import torch

from gptresume.data import fingerprint
from gptresume.data.fingerprint import dataset_fingerprint
from gptresume.errors import UsageError

IDS = [[5, 6, 7, 8], [9, 10, 11], [12], [13, 14], [15, 16, 17, 18, 19], [20, 21]]
TEXTS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]


def blocks(ids=IDS, **columns) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"input_ids": ids, **columns})


def fp(ds) -> str:
    return dataset_fingerprint(ds)


def test_equal_content_equal_fingerprint():
    a, b = fp(blocks()), fp(blocks())
    assert a == b and len(a) == 16 and int(a, 16) >= 0


def test_select_of_everything_is_the_same_dataset():
    ds = blocks()
    assert fp(ds.select(range(len(ds)))) == fp(ds)


def test_a_selected_part_equals_a_dataset_built_from_that_part():
    assert fp(blocks().select(range(1, 4))) == fp(blocks(IDS[1:4]))
    assert fp(blocks().select([4, 0, 2])) == fp(blocks([IDS[4], IDS[0], IDS[2]]))


def test_a_shuffled_dataset_differs():
    ds = blocks()
    assert fp(ds.shuffle(seed=1)) != fp(ds)


def test_an_indices_mapping_across_arrow_batches_equals_its_flattened_copy(monkeypatch):
    monkeypatch.setattr(fingerprint, "ARROW_BATCH_ROWS", 4)  # several batches, each a slice of the table
    ds = blocks([[i, i + 1] * (i % 3 + 1) for i in range(11)], text=[f"t{i}" * (i % 4) for i in range(11)])
    shuffled = ds.shuffle(seed=3)
    assert fp(shuffled) == fp(shuffled.flatten_indices())
    assert fp(shuffled) != fp(ds)


def test_one_changed_token_differs():
    changed = [list(row) for row in IDS]
    changed[4][2] += 1
    assert fp(blocks(changed)) != fp(blocks())


def test_the_same_tokens_in_other_rows_differ():
    assert fp(blocks([[1, 2], [3]])) != fp(blocks([[1], [2, 3]]))


@pytest.mark.parametrize("other", [
    ["alpha", "beta", "gamma", "delta", "epsilon", "eta"],  # one text changed
    ["alph", "abeta", "gamma", "delta", "epsilon", "zeta"],  # the same characters, split elsewhere
    ["alpha", "beta", "gamma", "delta", "epsilon", None],  # a missing value
])
def test_a_changed_string_column_differs(other):
    assert fp(blocks(text=other)) != fp(blocks(text=TEXTS))
    assert fp(blocks(text=list(TEXTS))) == fp(blocks(text=TEXTS))


def test_column_names_and_extra_columns_count():
    assert fp(datasets.Dataset.from_dict({"labels": IDS})) != fp(blocks())
    assert fp(blocks(attention_mask=[[1] * len(r) for r in IDS])) != fp(blocks())


def test_the_output_format_does_not_matter():
    ds = blocks(text=TEXTS)
    assert fp(ds.with_format("torch")) == fp(ds) == fp(ds.with_format("numpy"))


class TorchBlocks(torch.utils.data.Dataset):
    def __init__(self, rows, dtype=torch.long):
        self.rows = [torch.tensor(r, dtype=dtype) for r in rows]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def test_a_torch_map_style_dataset():
    rows = [[1, 2, 3], [4, 5, 6]]
    assert fp(TorchBlocks(rows)) == fp(TorchBlocks([list(r) for r in rows]))
    assert fp(TorchBlocks(rows)) != fp(TorchBlocks([[1, 2, 3], [4, 5, 7]]))
    assert fp(TorchBlocks(rows)) != fp(TorchBlocks(rows[::-1]))
    assert fp(TorchBlocks(rows)) != fp(TorchBlocks(rows, dtype=torch.int32))  # same values, other dtype
    assert fp(TorchBlocks(rows)) != fp(TorchBlocks([[1, 2, 3, 4, 5, 6]]))


def test_a_plain_list_of_rows():
    assert fp([{"input_ids": [1, 2]}, {"input_ids": [3]}]) == fp([{"input_ids": [1, 2]}, {"input_ids": [3]}])
    assert fp([{"input_ids": [1, 2]}]) != fp([{"input_ids": [1, 3]}])


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield {"input_ids": torch.tensor([1, 2])}


@pytest.mark.parametrize("make", [lambda: blocks().to_iterable_dataset(), Stream], ids=["datasets", "torch"])
def test_an_iterable_dataset_is_refused(make):
    with pytest.raises(UsageError, match="IterableDataset \\(streaming\\).*Materialize it"):
        fp(make())


def test_a_dataset_without_indexing_is_refused():
    with pytest.raises(UsageError, match="\\(set\\) has no __len__/__getitem__"):
        fp({1, 2, 3})
