"""Model and tokenizer loading through the real from_pretrained path, on local directories the tests create."""

import pytest

from conftest import TINY_MODEL, corpus_texts
from gptresume.config import ModelConfig, TokenizerConfig
from gptresume.errors import UsageError
from gptresume.modeling import EOS_TOKEN, build_model, load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    """A stand-in for `gpt2` on the hub: a tiny GPT-2 and its tokenizer written with save_pretrained."""
    from transformers import AutoModelForCausalLM, GPT2Config

    path = tmp_path_factory.mktemp("pretrained")
    tok = train_tokenizer(corpus_texts(), 300)
    model = AutoModelForCausalLM.from_config(GPT2Config(**TINY_MODEL, vocab_size=len(tok)))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_trained_tokenizer_uses_endoftext_for_eos_and_pad():
    tok = train_tokenizer(corpus_texts(), 300)
    assert tok.eos_token == tok.pad_token == EOS_TOKEN
    assert len(tok) == 300
    text = "def f(x):\n    return x  # ünïcode"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: lossless


def test_tokenizer_training_is_deterministic():
    a, b = train_tokenizer(corpus_texts(), 300), train_tokenizer(corpus_texts(), 300)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()


def test_fine_tune_loads_model_and_tokenizer_from_a_local_directory(pretrained_dir):
    cfg = ModelConfig(name_or_path=str(pretrained_dir))
    tok = load_tokenizer(cfg)
    model = build_model(cfg, tok, seed=0)
    assert model.config.n_layer == TINY_MODEL["n_layer"]
    assert tok.pad_token is not None


def test_from_scratch_weights_depend_on_seed_only():
    tok = train_tokenizer(corpus_texts(), 300)
    cfg = ModelConfig(from_scratch=dict(TINY_MODEL), tokenizer=TokenizerConfig(train_vocab_size=300))
    a, b, c = build_model(cfg, tok, 1), build_model(cfg, tok, 1), build_model(cfg, tok, 2)
    wa, wb, wc = a.transformer.wte.weight, b.transformer.wte.weight, c.transformer.wte.weight
    assert bool((wa == wb).all()) and not bool((wa == wc).all())
    assert a.config.vocab_size == len(tok) and a.config.eos_token_id == tok.eos_token_id


def test_tokenizer_larger_than_embedding_is_refused_or_resized(pretrained_dir):
    big = train_tokenizer(corpus_texts(), 500)
    cfg = ModelConfig(name_or_path=str(pretrained_dir))
    with pytest.raises(UsageError, match="500 tokens but the model's embedding has 300 rows"):
        build_model(cfg, big, seed=0)
    cfg.resize_embeddings = True
    assert build_model(cfg, big, seed=0).get_input_embeddings().num_embeddings == 500


def test_missing_model_directory_is_a_usage_error(tmp_path):
    cfg = ModelConfig(name_or_path=str(tmp_path / "no-such-model"))
    with pytest.raises(UsageError, match="model.name_or_path: directory .* does not exist"):
        load_tokenizer(cfg)
