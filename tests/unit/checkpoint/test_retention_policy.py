"""checkpoint/retention.py `to_delete`, the one retention policy of the run directory and the bucket, as a pure
function over fake listings (no file, milliseconds; torchtitan's test_save_and_purge_keeps_last_k_checkpoints):
a run of saves with keep_last, keep_best, protected names, the guard, leftovers, damaged and set-aside
checkpoints, and the invariants over thousands of random listings."""

from __future__ import annotations

import random

import pytest

from gptresume.checkpoint.retention import Listed, to_delete


def ckpt(step: int, committed: bool = True, valid: bool = True) -> Listed:
    return Listed(f"checkpoint-{step}", step, committed, valid)


def aside(step: int, tag: str = "a") -> Listed:
    return Listed(f"checkpoint-{step}.replaced-{tag}", step, set_aside=True)


def save_and_purge(steps, keep_last, **policy) -> list[list[int]]:
    """Save each step in turn and apply retention after each commit; the steps kept after every save."""
    held: dict[str, Listed] = {}
    kept_after = []
    for step in steps:
        held[f"checkpoint-{step}"] = ckpt(step)
        for name in to_delete(held.values(), f"checkpoint-{step}", keep_last, **policy):
            del held[name]
        kept_after.append(sorted(e.step for e in held.values()))
    return kept_after


def test_save_and_purge_keeps_last_k_checkpoints():
    kept = save_and_purge(range(1, 11), keep_last=3)
    assert kept[:3] == [[1], [1, 2], [1, 2, 3]]
    assert all(k == [s - 2, s - 1, s] for s, k in zip(range(4, 11), kept[3:]))


def test_keep_last_none_keeps_every_commit():
    assert save_and_purge(range(1, 6), keep_last=None)[-1] == [1, 2, 3, 4, 5]


def test_the_best_step_and_protected_names_outlive_the_window():
    kept = save_and_purge(range(1, 9), keep_last=1, best_step=3, protected={"checkpoint-5"})
    assert kept[-1] == [3, 5, 8]


def test_a_guard_that_refuses_keeps_the_checkpoint_until_it_agrees():
    allowed = set()
    listing = [ckpt(10), ckpt(20), ckpt(30)]
    assert to_delete(listing, "checkpoint-30", 1, may_delete=allowed.__contains__) == []
    allowed.add("checkpoint-10")  # its upload was verified since
    assert to_delete(listing, "checkpoint-30", 1, may_delete=allowed.__contains__) == ["checkpoint-10"]


def test_leftovers_damaged_and_set_aside_checkpoints():
    listing = [ckpt(5, committed=False), ckpt(10), ckpt(15, valid=False), ckpt(20), ckpt(25, valid=False),
               ckpt(30), ckpt(35, committed=False), aside(10), aside(30)]
    # 35 is ahead of the newest commit (another timeline): untouched. 25 is damaged but inside the window (kept
    # for inspection); 15 is outside it. The uncommitted 5 is garbage. Set-aside 10 is below the floor (20).
    assert to_delete(listing, "checkpoint-30", 2) == ["checkpoint-15", "checkpoint-10", "checkpoint-5",
                                                      "checkpoint-10.replaced-a"]
    # keep_last None: only the leftover goes (damaged and set-aside ones are kept: no window to be outside of)
    assert to_delete(listing, "checkpoint-30", None) == ["checkpoint-5"]
    # the newest counts as valid whatever its listing says (it was just committed)
    assert to_delete([ckpt(10), ckpt(20, valid=None)], "checkpoint-20", 1) == ["checkpoint-10"]


def test_a_damaged_best_checkpoint_is_kept_too():
    listing = [ckpt(10, valid=False), ckpt(20), ckpt(30)]
    assert to_delete(listing, "checkpoint-30", 1, best_step=10) == ["checkpoint-20"]


def random_listing(rng: random.Random) -> tuple[list[Listed], str]:
    steps = rng.sample(range(1, 60), rng.randint(1, 9))
    listing = []
    for s in steps:
        kind = rng.random()
        listing.append(ckpt(s, committed=kind > 0.15, valid=kind > 0.3))
    for s in rng.sample(range(1, 60), rng.randint(0, 2)):
        listing.append(aside(s))
    committed = [e for e in listing if not e.set_aside and e.committed]
    newest = rng.choice(committed or [e for e in listing if not e.set_aside] or [ckpt(1)])
    if newest not in listing:
        listing.append(newest)
    return listing, newest.name


@pytest.mark.parametrize("seed", range(4))
def test_invariants_over_random_listings(seed):
    rng = random.Random(seed)
    for _ in range(500):
        listing, newest = random_listing(rng)
        newest_step = int(newest.split("-")[1])
        keep_last = rng.choice([None, 1, 2, 3])
        best = rng.choice([None, *(e.step for e in listing)])
        protected = {e.name for e in listing if rng.random() < 0.15}
        refused = {e.name for e in listing if rng.random() < 0.2}
        deleted = to_delete(listing, newest, keep_last, best, protected, lambda n, refused=refused: n not in refused)
        by_name = {e.name: e for e in listing}
        assert len(deleted) == len(set(deleted)) and set(deleted) <= set(by_name)
        assert newest not in deleted
        assert not set(deleted) & protected
        for name in deleted:
            e = by_name[name]
            assert e.set_aside or e.step < newest_step  # nothing at or above the newest commit
            assert e.set_aside or e.step != best or not e.committed  # the best stays unless it never committed
            if not e.set_aside and e.committed and e.valid:
                assert name not in refused  # the guard decides for valid checkpoints
        valid = sorted((e for e in listing if not e.set_aside and (e.name == newest or (
            e.committed and e.valid and e.step < newest_step))), key=lambda e: e.step, reverse=True)
        window = valid if keep_last is None else valid[:keep_last]
        assert not {e.name for e in window} & set(deleted)  # the keep_last newest valid ones, newest first
        if keep_last is None:
            assert all(not by_name[n].committed for n in deleted)  # only leftovers go
