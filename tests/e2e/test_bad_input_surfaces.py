"""Bad input on the newer surfaces, table-driven, in-process (`gptresume.cli.main`: every refusal here happens
before a training step, so no child process is needed). Each case: exit 2, one `error:` line naming the field or
the file, no traceback, and the run directory (or the directory the tool read) unchanged: names, sizes and
mtimes (conftest.snapshot).

- streamed sources: empty files, only empty shards, blank documents, bad UTF-8 (with its byte offset), a JSONL
  file without the text column or with a null text, shards whose columns disagree, a malformed line, a source
  smaller than one block;
- LoRA: r 0 or negative, a negative lora_alpha, lora_dropout out of [0, 1) or NaN, target modules the model lacks
  (a list entry or a regular expression), an empty list, a bad bias, layers the model lacks;
- the tools (generate, eval, export, export --merge) on a damaged adapter directory: adapter_config.json torn,
  not an object, without peft_type or base model; the weights torn, absent or holding no LoRA tensors; the base
  model gone.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from conftest import corpus_texts, make_base_model, snapshot, write_config
from gptresume.cli import main

pytestmark = pytest.mark.slow


def refused(capsys, argv, *fragments) -> str:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, captured.out + err
    assert "Traceback" not in err + captured.out and ("\n" + err).count("\nerror: ") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


# ---------------------------------------------------------------- streamed sources


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from gptresume.modeling import train_tokenizer

    where = tmp_path_factory.mktemp("tok")
    train_tokenizer(corpus_texts(), 400).save_pretrained(where)
    return where


GOOD = "\n\n".join(corpus_texts(2))
# name -> (files to write: name -> bytes, data.source, text_unit, the fragments the message must hold)
STREAM_SOURCES = {
    "empty file": ({"a.txt": b""}, "a.txt", "paragraph", ["data.source: {d}/a.txt holds no documents"]),
    "only empty shards": ({"s1.jsonl": b"", "s2.jsonl": b""}, "s*.jsonl", "document",
                          ["{d}/s1.jsonl, {d}/s2.jsonl hold no documents"]),
    "blank documents only": ({"a.txt": b"\n\n\n\n\n"}, "a.txt", "paragraph", ["{d}/a.txt holds no text"]),
    "bad UTF-8": ({"a.txt": GOOD[:500].encode() + b"\n\xff\xfe\n"}, "a.txt", "paragraph",
                  [f"{{d}}/a.txt is not valid UTF-8 at byte {len(GOOD[:500].encode()) + 1} (line", "iconv"]),
    "no text column": ({"a.jsonl": b'{"body": "hello"}\n'}, "a.jsonl", "document",
                       ["data.text_column: {d}/a.jsonl has no column 'text'; its columns are body"]),
    "null text": ({"a.jsonl": b'{"text": null}\n'}, "a.jsonl", "document",
                  ["data.text_column: {d}/a.jsonl: document 1 holds NoneType"]),
    "shards disagree": ({"a.jsonl": json.dumps({"text": GOOD}).encode() + b"\n", "b.jsonl": b'{"body": "x"}\n'},
                        "*.jsonl", "document", ["data.source: {d}/b.jsonl: could not read document 1"]),
    "malformed line": ({"a.jsonl": json.dumps({"text": GOOD}).encode() + b'\n{"text": "unterminated\n'},
                       "a.jsonl", "document", ["data.source: {d}/a.jsonl: could not read document", "JSON parse"]),
    "smaller than a block": ({"a.txt": b"hello\n"}, "a.txt", "paragraph",
                             ["{d}/a.txt' holds ", " tokens, fewer than one block (data.block_size = 32)"]),
}


@pytest.mark.parametrize("case", list(STREAM_SOURCES))
def test_streamed_sources_are_checked_before_anything_is_written(tmp_path, capsys, tokenizer, case):
    files, source, unit, fragments = STREAM_SOURCES[case]
    data = tmp_path / "data"
    data.mkdir()
    for name, content in files.items():
        (data / name).write_bytes(content)
    config = write_config(tmp_path, data={"source": str(data / source), "streaming": True, "validation_fraction": 0,
                                          "text_unit": unit})
    raw = yaml.safe_load(config.read_text())
    raw["model"]["tokenizer"] = {"name_or_path": str(tokenizer)}
    config.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("the user's own file\n")
    before = snapshot(run)
    refused(capsys, ["train", config], *[f.format(d=data) for f in fragments])
    assert snapshot(run) == before


# ---------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base_model(tmp_path_factory.mktemp("base") / "gpt2-tiny")


LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["c_attn", "c_proj"]}
LORA_CASES = [
    ("r", 0, "model.peft.r: 0 is not allowed: must be a positive integer"),
    ("r", -2, "model.peft.r: -2 is not allowed"),
    ("r", 2.5, "model.peft.r: 2.5 is not allowed"),
    ("lora_alpha", -8, "model.peft.lora_alpha: -8 is not allowed: must be a positive number"),
    ("lora_dropout", 1.5, "model.peft.lora_dropout: 1.5 is not allowed: must be a probability in [0, 1)"),
    ("lora_dropout", -0.1, "model.peft.lora_dropout: -0.1 is not allowed"),
    ("lora_dropout", float("nan"), "model.peft.lora_dropout: .nan is not a finite number"),
    ("target_modules", ["c_attn", "q_proj"],
     "model.peft.target_modules: 'q_proj' names no module of the model (gpt2); its adaptable layers are c_attn, "
     "c_fc, c_proj"),
    ("target_modules", "nothing\\..*", "model.peft.target_modules: 'nothing\\\\..*' names no module of the model"),
    ("target_modules", [], "model.peft.target_modules: [] is not allowed"),
    ("bias", "some", "model.peft.bias: 'some' is not allowed: must be none, all or lora_only"),
    ("layers_to_transform", [7], "model.peft: peft could not add LoRA adapters"),
]


@pytest.mark.parametrize("key,value,fragment", LORA_CASES, ids=[f"{k}={v!r}" for k, v, _ in LORA_CASES])
def test_lora_settings_are_checked_against_the_model_before_anything_is_written(tmp_path, capsys, base, key, value,
                                                                                 fragment):
    config = write_config(tmp_path)
    raw = yaml.safe_load(config.read_text())
    raw["model"] = {"name_or_path": str(base), "peft": {**LORA, key: value}}
    config.write_text(yaml.safe_dump(raw))
    refused(capsys, ["train", config], fragment)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- the tools on damaged adapters


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory):
    """A LoRA adapter directory as export writes it (adapters + tokenizer), made without training."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gptresume.config.integrations import lora_config

    where = tmp_path_factory.mktemp("adapters") / "adapters"
    config = lora_config(LORA)
    config.base_model_name_or_path = str(base)
    get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)), config).save_pretrained(where)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(where)
    return where


def _edit_config(change):
    def damage(d):
        path = d / "adapter_config.json"
        config = json.loads(path.read_text())
        change(config)
        path.write_text(json.dumps(config))
    return damage


DAMAGE = {
    "torn config": (lambda d: (d / "adapter_config.json").write_text('{"peft_type": "LO'),
                    "adapter_config.json is not readable JSON"),
    "config not an object": (lambda d: (d / "adapter_config.json").write_text("[1, 2]"),
                             "adapter_config.json is not a JSON object"),
    "no peft_type": (_edit_config(lambda c: c.pop("peft_type")), "adapter_config.json has no 'peft_type'"),
    "no base model": (_edit_config(lambda c: c.pop("base_model_name_or_path")),
                      "adapter_config.json names no base_model_name_or_path"),
    "torn weights": (lambda d: (d / "adapter_model.safetensors").write_bytes(
        (d / "adapter_model.safetensors").read_bytes()[:100]), "adapter_model.safetensors does not parse"),
    "no weights": (lambda d: (d / "adapter_model.safetensors").unlink(),
                   "holds adapter_config.json but no adapter weights"),
    "weights without LoRA tensors": (lambda d: __import__("safetensors.torch").torch.save_file(
        {"x": __import__("torch").zeros(2)}, str(d / "adapter_model.safetensors")), "holds no LoRA weights"),
    "base model gone": (_edit_config(lambda c: c.update(base_model_name_or_path=str(d_missing()))),
                        "could not load the LoRA adapters"),
    "target_modules not a list": (_edit_config(lambda c: c.update(target_modules=5)),
                                  "could not load the LoRA adapters"),
}


def d_missing():
    return "/nonexistent/gptresume-base-model"


TOOLS = {"generate": ["generate", "{d}", "--prompt", "The", "--max-new-tokens", "2"],
         "eval": ["eval", "{d}", "--data", "{text}", "--block-size", "16"],
         "export": ["export", "{d}", "{out}"], "export --merge": ["export", "{d}", "{out}", "--merge"]}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_the_tools_answer_a_damaged_adapter_directory_in_one_line(tmp_path, capsys, adapters, damage):
    spoil, fragment = DAMAGE[damage]
    d = tmp_path / "adapters"
    shutil.copytree(adapters, d)
    spoil(d)
    text = tmp_path / "sample.txt"
    text.write_text(GOOD)
    before = snapshot(d)
    for tool, argv in TOOLS.items():
        if damage in ("base model gone", "target_modules not a list") and tool == "export":
            continue  # the adapters themselves are intact: a plain export copies them byte for byte
        out = tmp_path / f"out-{tool.replace(' ', '')}"
        refused(capsys, [a.format(d=d, text=text, out=out) for a in argv], fragment)
        assert not out.exists(), tool
    assert snapshot(d) == before


def test_the_intact_adapters_load_in_every_tool(tmp_path, capsys, adapters):
    text = tmp_path / "sample.txt"
    text.write_text(GOOD)
    for tool, argv in TOOLS.items():
        assert main([a.format(d=adapters, text=text, out=tmp_path / f"out-{tool.replace(' ', '')}")
                     for a in argv]) == 0, capsys.readouterr().err
