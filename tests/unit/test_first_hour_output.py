"""What a new user sees: messages at the right level, hub noise once and fast offline, a per-key diff, tokens/s and a
time on the progress output, one line per committed checkpoint and no leftover save bars, `-v` anywhere."""

import json
import logging
import re
import socket
from types import SimpleNamespace

import pytest
import yaml

from gptresume.cli import build_parser, main
from gptresume.errors import UsageError

from conftest import TINY_MODEL, write_config

CLOCK = r"\d\d:\d\d:\d\d"


@pytest.fixture
def cli_env(monkeypatch):
    """`main` sets TORCH_FORCE_WEIGHTS_ONLY_LOAD for its process: undone after the test."""
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)


def test_the_allocator_line_is_debug_and_an_error_comes_first(tmp_path, capsys, caplog, cli_env):
    caplog.set_level(logging.DEBUG, logger="gptresume")
    config = write_config(tmp_path, train={"batch_size": 4})
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), err  # nothing before the error
    assert "per_device_train_batch_size" in err
    allocator = [r for r in caplog.records if "CPU allocator" in r.getMessage()]
    assert allocator and all(r.levelno == logging.DEBUG for r in allocator)  # `-v` shows it


def test_verbose_anywhere_on_the_line():
    parser = build_parser()
    assert parser.parse_args(["train", "c.yaml", "--set", "train.max_steps=2", "-v"]).verbose is True
    assert parser.parse_args(["train", "-v", "c.yaml", "--dry-run"]).verbose is True
    assert parser.parse_args(["eval", "runs/x", "--data", "a.txt", "b.txt", "-v"]).verbose is True
    assert parser.parse_args(["-v", "eval", "runs/x"]).verbose is True


def test_per_key_diff_of_nested_settings():
    from gptresume.resume.changes import config_changes, format_changes

    old = {"model": {"from_scratch": {**TINY_MODEL, "n_layer": 2, "resid_pdrop": 0.0}}, "train": {"seed": 1}}
    new = {"model": {"from_scratch": {**TINY_MODEL, "n_layer": 4, "resid_pdrop": 0.0}}, "train": {"seed": 1}}
    table = format_changes(config_changes(old, new))
    row = next(line for line in table.splitlines() if "n_layer" in line)
    assert re.search(r"model\.from_scratch\.n_layer\s+2\s+4\s+never", row), table
    assert "n_embd" not in table and "{" not in table  # only what differs, no dict cut at 40 characters
    kwargs = format_changes(config_changes({"train": {"lr_scheduler_kwargs": {"min_lr": 1e-5, "x": {"a": 1}}}},
                                           {"train": {"lr_scheduler_kwargs": {"min_lr": 1e-6, "x": {"a": 1}}}}))
    assert re.search(r"train\.lr_scheduler_kwargs\.min_lr\s+1e-05\s+1e-06", kwargs), kwargs


def _state(step, max_steps=20):
    return SimpleNamespace(global_step=step, max_steps=max_steps, is_world_process_zero=True, epoch=0.5,
                           is_local_process_zero=True)


def test_progress_lines_start_with_the_time(capsys):
    from gptresume.training.callbacks import ProgressLines

    lines = ProgressLines(tokens_per_step=128)
    lines.on_train_begin(None, _state(0), None)
    lines.on_log(None, _state(1), None, logs={"loss": 3.5, "learning_rate": 1e-3})
    lines.on_log(None, _state(1), None, logs={"eval_loss": 3.0})
    out = capsys.readouterr().out.splitlines()
    assert re.match(CLOCK + r" step +1/20 \| loss 3\.5000 .* tok/s \| eta", out[0]), out
    assert re.match(CLOCK + r" step +1/20 \| eval loss 3\.0000 \| perplexity 20\.09", out[1]), out


def test_the_terminal_bar_shows_tokens_per_second():
    from gptresume.training.callbacks import progress_bar_class

    from tqdm.contrib.logging import _TqdmLoggingHandler

    bar = progress_bar_class()(tokens_per_step=128)
    args = SimpleNamespace()
    bar.on_train_begin(args, _state(0), None)
    try:
        bar.on_log(args, _state(2), None, logs={"loss": 3.5, "learning_rate": 1e-3})
        postfix = bar.training_bar.postfix
        assert "loss=3.5000" in postfix and re.search(r"tok/s=[\d,]+", postfix), postfix
        # while the bar is shown, log lines (a committed checkpoint) are written above it, not into it
        assert any(isinstance(h, _TqdmLoggingHandler) for h in logging.getLogger().handlers)
    finally:
        bar.on_train_end(args, _state(2), SimpleNamespace())
    assert not any(isinstance(h, _TqdmLoggingHandler) for h in logging.getLogger().handlers)


def test_one_line_per_committed_checkpoint_with_size_and_seconds(tmp_path, caplog):
    from gptresume.checkpoint import MANIFEST_NAME
    from gptresume.resume.plan import RunSpec
    from gptresume.training.callbacks import CommitCallback

    caplog.set_level(logging.INFO, logger="gptresume")
    commit = CommitCallback(RunSpec(tmp_path, {"train": {"output_dir": str(tmp_path)}}), keep_last=2)
    args, control = SimpleNamespace(output_dir=str(tmp_path), world_size=1), SimpleNamespace(should_save=True)
    commit.on_step_end(args, _state(10), control)  # the save starts
    ckpt = tmp_path / "checkpoint-10"  # what Trainer's save writes
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"w" * 10_000)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 10, "max_steps": 20}))
    commit.on_save(args, _state(10), control)
    assert (ckpt / MANIFEST_NAME).is_file()
    lines = [r.getMessage() for r in caplog.records if "committed" in r.getMessage()]
    assert len(lines) == 1 and re.fullmatch(CLOCK + r" checkpoint-10 committed \(10\.\d KB, \d+\.\d\d s\)",
                                            lines[0]), lines


def test_no_writing_model_shards_bar_is_left_behind(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from gptresume.logs import quiet_transformers

    model = GPT2LMHeadModel(GPT2Config(**TINY_MODEL, vocab_size=300))
    quiet_transformers()
    hf_logging.enable_progress_bar()  # as on a terminal
    try:
        model.save_pretrained(tmp_path / "m")
    finally:
        hf_logging.disable_progress_bar()
    err = capsys.readouterr().err
    assert "Writing model shards" not in err, err
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_huggingface_hub_records_are_printed_once():
    from gptresume.logs import quiet_transformers

    quiet_transformers()
    hub = logging.getLogger("huggingface_hub")
    assert hub.handlers and hub.propagate is False  # its own handler only: never the root's as well


@pytest.fixture
def no_hub(monkeypatch):
    """A hub endpoint nothing listens on (the test machine has no network either)."""
    import huggingface_hub.constants

    import gptresume.hub as hub

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    # set first, so that undo also removes what hub.py sets
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(hub, "_verdict", None)
    try:
        import datasets.config

        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets.config.HF_HUB_OFFLINE)
    except ImportError:
        pass
    return hub


def test_offline_is_found_once_said_once_and_a_missing_model_is_one_message(no_hub, caplog):
    import huggingface_hub.constants
    from transformers import AutoModelForCausalLM

    from gptresume.modeling import _from_pretrained

    caplog.set_level(logging.INFO)
    reason = no_hub.use_cache_if_offline(["someone/not-cached-model"])
    assert reason and "cannot be reached" in reason
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True  # the libraries read the cache only, no retries
    assert no_hub.use_cache_if_offline(["gpt2"]) == reason  # decided once per process
    said = [r for r in caplog.records if "No connection" in r.getMessage()]
    assert len(said) == 1 and "HF_HUB_OFFLINE=1" in said[0].getMessage()
    caplog.clear()
    with pytest.raises(UsageError) as e:
        _from_pretrained(AutoModelForCausalLM, "someone/not-cached-model", "model.name_or_path")
    assert "model.name_or_path: 'someone/not-cached-model' is not in the local Hugging Face cache" in str(e.value)
    assert "cannot be reached" in str(e.value)
    assert not [r for r in caplog.records if "Retry" in r.getMessage()]


def test_behind_a_proxy_the_proxy_is_what_must_answer(no_hub, monkeypatch):
    with socket.socket() as server:  # a listening proxy: the hub counts as reachable through it
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert no_hub.use_cache_if_offline(["gpt2"]) is None
    monkeypatch.setattr(no_hub, "_verdict", None)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")  # nothing listens there
    assert "the proxy 127.0.0.1:1 to the hub" in no_hub.use_cache_if_offline(["gpt2"])


def test_hf_hub_offline_set_by_the_user_skips_the_probe(no_hub, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed the hub"))
    assert no_hub.use_cache_if_offline(["gpt2"]) == "HF_HUB_OFFLINE is set"


def test_hub_names_are_the_ids_a_config_loads_from_the_hub(tmp_path):
    from gptresume.config import config_from_dict
    from gptresume.modeling import hub_names

    raw = {"model": {"name_or_path": "gpt2"}, "data": {"source": "hub:wikitext", "hub_config": "x"},
           "train": {"output_dir": str(tmp_path / "r"), "max_steps": 2}}
    assert hub_names(config_from_dict(raw)) == ["gpt2", "wikitext"]
    raw["model"]["name_or_path"] = str(tmp_path)
    raw["data"]["source"] = "builtin:python-docs"
    assert hub_names(config_from_dict(raw)) == []


def test_print_config_shows_the_resolved_config_and_writes_nothing(tmp_path, capsys, cli_env):
    config = write_config(tmp_path)
    assert main(["train", str(config), "--print-config", "--set", "train.eval_strategy=no"]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out)
    assert resolved["train"]["eval_strategy"] == "no" and resolved["train"]["report_to"] == "none"  # a default
    assert resolved["checkpoint"]["async_save"] is False and resolved["data"]["block_size"] == 32
    assert not (tmp_path / "run").exists()
