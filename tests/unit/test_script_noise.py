"""logs.py `known_noise_filtered`: while `gptresume.train` runs in a script, the Transformers messages gptresume makes
irrelevant (compat.SCRIPT_NOISE, each on the logger that emits it) and the "Writing model shards" bars are dropped;
the script's own messages, the same texts from other loggers, and everything after the call pass unchanged."""

from __future__ import annotations

import logging

import pytest

from gptresume.compat import SCRIPT_NOISE
from gptresume.logs import known_noise_filtered


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append((record.name, record.getMessage()))


@pytest.fixture
def seen():
    """What reaches a handler on the `transformers` logger and on the root logger (a script's own set-up)."""
    handler = Collect()
    for name in ("transformers", ""):
        logging.getLogger(name).addHandler(handler)
    yield handler.messages
    for name in ("transformers", ""):
        logging.getLogger(name).removeHandler(handler)


def emit_all():
    """Each known message as Transformers emits it, and the same texts (and others) from other loggers."""
    for logger, text in SCRIPT_NOISE.values():
        logging.getLogger(logger).warning("[prefix] %s [suffix]", text)
        logging.getLogger("my_script").warning("%s", text)  # the user's own logger: never dropped
    logging.getLogger("transformers.trainer").warning("There were missing keys in the checkpoint model loaded: "
                                                      "['lm_head.weight', 'transformer.h.0.attn.c_attn.weight'].")
    logging.getLogger("transformers.trainer").warning("a Trainer warning gptresume knows nothing about")


def test_the_known_noise_is_dropped_and_nothing_else(seen):
    with known_noise_filtered():
        emit_all()
    dropped = {(logger, text) for key, (logger, text) in SCRIPT_NOISE.items() if key != "special_tokens_aligned"}
    assert not [m for m in seen if any(m[0] == logger and text in m[1] for logger, text in dropped)]
    assert sum(m[0] == "my_script" for m in seen) == len(SCRIPT_NOISE)
    assert any("'transformer.h.0.attn.c_attn.weight'" in m[1] for m in seen)  # a real missing key is reported
    assert ("transformers.trainer", "a Trainer warning gptresume knows nothing about") in seen
    assert any("PAD/BOS/EOS" in m[1] and m[0] == "transformers.trainer_utils" for m in seen)  # a first start: real


def test_on_a_resume_the_special_token_alignment_is_a_repeat(seen):
    with known_noise_filtered() as noise:
        noise.resuming = True
        emit_all()
    assert not [m for m in seen if m[0].startswith("transformers") and "PAD/BOS/EOS" in m[1]]
    assert ("my_script", SCRIPT_NOISE["special_tokens_aligned"][1]) in seen


def test_nothing_is_left_behind(seen):
    from transformers.utils import logging as hf_logging

    def mine(factory, args, kwargs):  # a hook the script set itself
        return factory(*args, **kwargs)

    previous = hf_logging.set_tqdm_hook(mine)
    try:
        with known_noise_filtered():
            pass
        assert hf_logging.set_tqdm_hook(mine) is mine
    finally:
        hf_logging.set_tqdm_hook(previous)
    assert all(not logging.getLogger(name).filters for name, _ in SCRIPT_NOISE.values())
    emit_all()
    assert sum(m[0].startswith("transformers") for m in seen) == len(SCRIPT_NOISE) + 2  # all of it, after the call


def test_no_writing_model_shards_bar_while_it_runs_and_the_bar_again_after(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=64))
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()  # as in a script on a terminal
    earlier = hf_logging.set_tqdm_hook(None)  # a script's process: no hook of the CLI's (quiet_transformers)
    try:
        with known_noise_filtered():
            model.save_pretrained(tmp_path / "during")
        during = capsys.readouterr().err
        model.save_pretrained(tmp_path / "after")  # the script's own save, after gptresume.train returned
        after = capsys.readouterr().err
    finally:
        hf_logging.set_tqdm_hook(earlier)
        if not enabled:
            hf_logging.disable_progress_bar()
    assert "Writing model shards" not in during and (tmp_path / "during" / "model.safetensors").is_file()
    assert "Writing model shards" in after
