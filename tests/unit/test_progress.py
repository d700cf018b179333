"""gptresume/progress.py and its users: a long phase prints a few timed lines and a summary, a short one only its
summary, and the count of lines stays bounded however many updates come (a log, not a flood). Time is a fake
clock: nothing here depends on how fast the machine is."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from gptresume.progress import MAX_GAP_S, QUIET_S, Progress, size


class FakeClock:
    def __init__(self, step: float = 0.0):
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def lines_of(total, updates, seconds, **kw):
    clock, out = FakeClock(), []
    p = Progress("packing", total, unit=size, interactive=False, emit=out.append, clock_s=clock, **kw)
    for i in range(1, updates + 1):
        clock.now = 1000.0 + seconds * i / updates
        p.update(total * i / updates if total else i)
    p.finish()
    return out


def test_a_short_phase_prints_only_its_summary():
    out = lines_of(10e6, 500, QUIET_S - 1)
    assert len(out) == 1 and re.match(r"\d\d:\d\d:\d\d packing: 10\.0 MB in 9\.0 s$", out[0]), out


@pytest.mark.parametrize("seconds", [60, 600, 3600, 36000])
def test_a_long_phase_prints_a_bounded_number_of_lines(seconds):
    out = lines_of(10e9, 20_000, seconds)
    assert len(out) >= 2  # at least one progress line and the summary
    assert len(out) <= 10 + seconds / MAX_GAP_S + 2, (seconds, len(out))
    first = out[0]
    assert re.search(r"packing: [\d.]+ [KMG]B/10\.0 GB \(\d+%\) \| [\d.]+ [KMG]B/s \| eta ", first), first


def test_the_percent_marks_and_the_eta():
    clock, out = FakeClock(), []
    p = Progress("evaluation", 100, interactive=False, emit=out.append, clock_s=clock)
    for i in range(1, 101):
        clock.now = 1000.0 + 2.0 * i  # 200 s in all
        p.update(i)
    p.finish("evaluation: 100 batches in 3m20s")
    percents = [int(m.group(1)) for m in (re.search(r"\((\d+)%\)", x) for x in out) if m]
    assert percents == sorted(percents) and len(percents) == len(set(percents)) >= 8
    assert "eta" in out[0] and out[-1].endswith("evaluation: 100 batches in 3m20s")


def test_an_unknown_total_prints_a_line_a_minute():
    out = lines_of(None, 600, 600)
    assert 8 <= len(out) <= 12 and "%" not in out[0] and "eta" not in out[0]


def test_close_prints_a_summary_only_after_progress_was_shown():
    out = []
    quick = Progress("verifying checkpoint-1", 10, interactive=False, emit=out.append, clock_s=FakeClock())
    quick.update(10)
    quick.close()
    assert out == []
    clock = FakeClock(step=30.0)
    slow = Progress("verifying checkpoint-2", 10, interactive=False, emit=out.append, clock_s=clock)
    for i in range(10):
        slow.update(i + 1)
    slow.close()
    assert out and "verifying checkpoint-2" in out[-1]


def test_packing_a_few_megabytes_shows_progress_and_a_summary(tmp_path):
    from conftest import corpus_texts
    from gptresume.data.tokens import packing_progress, tokenize_to_file
    from gptresume.modeling import train_tokenizer

    tokenizer = train_tokenizer(corpus_texts(), 300)
    paragraphs = [p for d in corpus_texts(79) for p in d.split("\n\n") if p.strip()]
    docs = paragraphs * 3  # about 1.4 MB of text in batches of 50 documents
    batches = [docs[i:i + 50] for i in range(0, len(docs), 50)]
    text_bytes = sum(len(d.encode()) for d in docs)
    out, clock = [], FakeClock(step=1.0)  # each reading of the clock: one more second
    progress = packing_progress(text_bytes, interactive=False, emit=out.append, clock_s=clock)
    n = tokenize_to_file(iter(batches), text_bytes, tokenizer, tmp_path / "tokens.bin", num_proc=1,
                         progress=progress)
    assert n == (tmp_path / "tokens.bin").stat().st_size // 4
    assert 2 <= len(out) <= 12, out
    assert re.search(r"packing: [\d.]+ [KM]B/[\d.]+ MB \(\d+%\) \| [\d.]+ [KM]B/s \| [\d,]+ tokens \| eta", out[0]), out
    assert re.search(rf"packing: {re.escape(size(text_bytes))} of text -> {n:,} tokens in .* tokens/s", out[-1]), out


def test_an_evaluation_shows_its_batches():
    from gptresume.training.phase_progress import EvalProgress

    clock, out = FakeClock(), []
    cb = EvalProgress(clock_s=clock, emit=out.append)
    state = SimpleNamespace(is_world_process_zero=True)

    class Loader(list):
        dataset = list(range(1600))

    loader = Loader(range(200))
    for _ in range(200):
        clock.now += 0.5  # 100 s of evaluation
        cb.on_prediction_step(None, state, None, eval_dataloader=loader)
    cb.on_evaluate(None, state, None)
    assert any(re.search(r"evaluation: \d+/200 \(\d+%\) \| [\d.]+ batches/s \| eta", x) for x in out), out
    assert out[-1].endswith("evaluation: 200 batches (1,600 blocks) in 1m40s"), out
    assert len(out) <= 12
    assert cb.progress is None  # the next evaluation starts its own count


def test_a_large_checkpoint_load_and_a_slow_save_say_so(tmp_path, caplog):
    import logging

    from gptresume.training.phase_progress import CheckpointLoadProgress, SaveProgress

    ckpt = tmp_path / "checkpoint-40"
    ckpt.mkdir()
    (ckpt / "optimizer.pt").write_bytes(b"x" * 5000)
    state = SimpleNamespace(is_world_process_zero=True, global_step=40)
    caplog.set_level(logging.INFO, logger="gptresume")
    small = CheckpointLoadProgress(ckpt)  # 5 KB: below LARGE_CHECKPOINT_BYTES, nothing said
    small.announce()
    small.on_train_begin(None, state, None)
    assert not caplog.records
    large = CheckpointLoadProgress(ckpt, threshold=4096)
    large.announce()
    large.on_train_begin(None, state, None)
    messages = [r.getMessage() for r in caplog.records]
    assert re.search(r"loading checkpoint-40 \(5\.0 KB of weights and training state\)$", messages[0]), messages
    assert re.search(r"checkpoint-40 loaded in [\d.]+ s$", messages[1]), messages
    caplog.clear()
    saves = SaveProgress(state_bytes=2 << 30)  # the first save of a 2 GB state: said when it starts
    saving = SimpleNamespace(should_save=True)
    saves.on_step_end(None, state, saving)
    saves.on_save(None, state, saving)
    assert "saving checkpoint-40 (about 2.1 GB)" in caplog.records[0].getMessage()
    caplog.clear()
    quick = SaveProgress(state_bytes=1000)
    quick.on_step_end(None, state, saving)
    quick.on_save(None, state, saving)
    quick.on_step_end(None, state, SimpleNamespace(should_save=False))
    assert not caplog.records
    quick.last_s = 12.0  # the previous save took 12 s: the next one says so
    quick.on_step_end(None, state, saving)
    assert "saving checkpoint-40 (the last took 12s)" in caplog.records[0].getMessage()
