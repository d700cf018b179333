"""Credentials in `checkpoint.remote_options` (and the API's `remote_options=`) are refused at any depth, naming the
key path, before anything is written; legitimate options are not; whatever is written (config.yaml, manifests,
history.jsonl) is redacted as a second layer."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import snapshot, write_config
from gptresume.cli import main
from gptresume.credentials import REDACTED, redact, redact_argv, secret_paths, why_secret_value
from gptresume.remote.url import remote_problems

AWS_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# (remote_options, the key path the message must name)
NESTED_SECRETS = [
    ({"client_kwargs": {"aws_secret_access_key": AWS_SECRET}}, "remote_options.client_kwargs.aws_secret_access_key"),
    ({"client_kwargs": {"aws_access_key_id": AWS_ID}}, "remote_options.client_kwargs.aws_access_key_id"),
    ({"client_kwargs": {"aws_session_token": "FwoGZXIvYXdzEBYaDH"}}, "remote_options.client_kwargs.aws_session_token"),
    ({"key": "x", "secret": "y"}, "remote_options.key"),
    ({"secret": "y"}, "remote_options.secret"),
    ({"token": "ya29.a0AfH6SMBx"}, "remote_options.token"),  # gcsfs: an OAuth token
    ({"config_kwargs": {"s3": {"addressing_style": "path"}, "proxies": {"https": "http://u:pw@proxy:3128"}}},
     "remote_options.config_kwargs.proxies.https"),
    ({"account_name": "acct", "account_key": AZURE_KEY}, "remote_options.account_key"),
    ({"sas_token": "sv=2021-08-06&ss=b&sig=abc"}, "remote_options.sas_token"),
    ({"connection_string": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k"},
     "remote_options.connection_string"),
    ({"credential": "abc"}, "remote_options.credential"),
    ({"client_secret": "abc"}, "remote_options.client_secret"),
    ({"s3_additional_kwargs": {"SSECustomerKey": "k" * 32}}, "remote_options.s3_additional_kwargs.SSECustomerKey"),
    ({"headers": {"Authorization": "Bearer abc"}}, "remote_options.headers.Authorization"),
    ({"client_kwargs": {"extra": [{"password": "hunter2"}]}}, "remote_options.client_kwargs.extra[0].password"),
    # a name not on any list, with a value shaped like a key
    ({"client_kwargs": {"my_value": AWS_SECRET}}, "remote_options.client_kwargs.my_value"),
    ({"client_kwargs": {"id": AWS_ID}}, "remote_options.client_kwargs.id"),
    ({"options": "AccountName=a;AccountKey=abcdefgh"}, "remote_options.options"),
]
LEGITIMATE = [
    {"endpoint_url": "http://127.0.0.1:9000"},
    {"endpoint_url": "https://s3.us-east-1.amazonaws.com", "client_kwargs": {"region_name": "us-east-1"}},
    {"profile": "training", "anon": False, "use_ssl": True, "requester_pays": True},
    {"config_kwargs": {"retries": {"max_attempts": 10, "mode": "adaptive"}, "connect_timeout": 5}},
    {"s3_additional_kwargs": {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"}},
    {"s3_additional_kwargs": {"SSEKMSKeyId": "1234abcd-12ab-34cd-56ef-1234567890ab"}},
    {"token": "anon"}, {"token": "google_default"}, {"token": None},
    {"project": "my-project-123456", "default_location": "europe-west4"},
    {"account_name": "mystorageaccount", "anon": False},
    {"default_block_size": 5242880, "max_concurrency": 8, "version_aware": False},
    {"client_kwargs": {"verify": "/etc/ssl/certs/ca-bundle.crt"}},
]


@pytest.mark.parametrize("options,path", NESTED_SECRETS, ids=[p for _, p in NESTED_SECRETS])
def test_a_secret_at_any_depth_is_refused_naming_its_key_path(options, path):
    problems = remote_problems("s3://bucket/run", options, None)
    assert any(p.startswith(f"checkpoint.{path}:") for p in problems), problems
    assert all("environment" in p and "~/.aws/credentials" in p for p in problems)
    for p in problems:  # the message never repeats the secret itself
        assert AWS_SECRET not in p and AZURE_KEY not in p and AWS_ID not in p
    # the script API's remote_options= goes through the same check, named after the call
    api = remote_problems("s3://bucket/run", options, None, prefix="gptresume.train()")
    assert any(p.startswith(f"gptresume.train().{path}:") for p in api), api


@pytest.mark.parametrize("options", LEGITIMATE, ids=[json.dumps(o)[:50] for o in LEGITIMATE])
def test_legitimate_options_pass(options):
    assert remote_problems("s3://bucket/run", options, None) == []
    assert redact({"checkpoint": {"remote_options": options}}) == {"checkpoint": {"remote_options": options}}


def test_a_password_in_the_remote_url_is_refused_and_a_user_is_not():
    (why,) = remote_problems("s3://AKID:hunter2@bucket/run", None, None)
    assert why.startswith("checkpoint.remote: the URL holds a password") and "hunter2" not in why
    assert remote_problems("abfs://container@account.dfs.core.windows.net/run", None, None) == []


def test_value_shapes():
    for value in (AWS_ID, AWS_SECRET, AZURE_KEY, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
                  "-----BEGIN RSA PRIVATE KEY-----\nMIIE...", "https://acct.blob.core.windows.net/c?sv=1&sig=abcdefghij"):
        assert why_secret_value(value), value
    for value in ("http://127.0.0.1:9000", "us-east-1", "/home/me/.aws/credentials", "runs/demo",
                  "1234abcd-12ab-34cd-56ef-1234567890ab", "arn:aws:kms:us-east-1:111122223333:key/1234",
                  "a" * 64, "my-bucket-name-that-is-quite-long-indeed", 12345, None, True):
        assert why_secret_value(value) is None, value


def test_redaction_is_a_second_layer_for_what_slipped_through():
    config = {"checkpoint": {"remote": "s3://user:pw@bucket/run",
                             "remote_options": {"endpoint_url": "http://x:9000",
                                                "client_kwargs": {"aws_secret_access_key": AWS_SECRET,
                                                                  "region_name": "us-east-1", "other": AWS_SECRET}}},
              "train": {"hub_token": "hf_abc", "learning_rate": 0.1},
              "model": {"from_scratch": {"bos_token_id": 0}}}
    out = redact(config)
    opts = out["checkpoint"]["remote_options"]
    assert opts["client_kwargs"] == {"aws_secret_access_key": REDACTED, "region_name": "us-east-1", "other": REDACTED}
    assert opts["endpoint_url"] == "http://x:9000" and out["checkpoint"]["remote"] == f"s3://user:{REDACTED}@bucket/run"
    assert out["train"] == {"hub_token": REDACTED, "learning_rate": 0.1}
    assert out["model"] == config["model"]  # token ids are not tokens
    assert config["checkpoint"]["remote_options"]["client_kwargs"]["other"] == AWS_SECRET  # the input is untouched
    assert AWS_SECRET not in json.dumps(out) and "hf_abc" not in json.dumps(out) and ":pw@" not in json.dumps(out)
    # a redacted config fed back in is refused again (s3fs would get "<redacted>" as the secret)
    assert [p for p, _ in secret_paths(out["checkpoint"]["remote_options"], "o")] == [
        "o.client_kwargs.aws_secret_access_key"]


def test_the_command_line_in_history_is_redacted():
    argv = ["train", "c.yaml", "--set", f"checkpoint.remote_options.client_kwargs.aws_secret_access_key={AWS_SECRET}",
            "--set", f"checkpoint.remote_options={{key: {AWS_ID}, endpoint_url: 'http://x'}}",
            "--set", "checkpoint.remote_options.endpoint_url=http://127.0.0.1:9000", "--set", "train.hub_token=hf_x",
            "--set", "checkpoint.remote=s3://u:pw@b/r", "--set", "train.learning_rate=1e-4", AWS_SECRET]
    out = redact_argv(argv)
    assert out == ["train", "c.yaml",
                   "--set", f"checkpoint.remote_options.client_kwargs.aws_secret_access_key={REDACTED}",
                   "--set", f"checkpoint.remote_options={REDACTED}",
                   "--set", "checkpoint.remote_options.endpoint_url=http://127.0.0.1:9000",
                   "--set", f"train.hub_token={REDACTED}", "--set", f"checkpoint.remote=s3://u:{REDACTED}@b/r",
                   "--set", "train.learning_rate=1e-4", REDACTED]


CLI_SECRETS = [
    (["--set", f"checkpoint.remote_options.client_kwargs.aws_secret_access_key={AWS_SECRET}"],
     "checkpoint.remote_options.client_kwargs.aws_secret_access_key"),
    (["--set", "checkpoint.remote_options={config_kwargs: {s3: {addressing_style: path}}, "
               "client_kwargs: {aws_session_token: abc}}"],
     "checkpoint.remote_options.client_kwargs.aws_session_token"),
    (["--set", f"checkpoint.remote_options.token={AWS_SECRET}"], "checkpoint.remote_options.token"),
    (["--set", f"checkpoint.remote_options.account_key={AZURE_KEY}"], "checkpoint.remote_options.account_key"),
    (["--set", "train.hub_token=hf_abcdef"], "train.hub_token"),
    (["--set", "checkpoint.remote=s3://AKID:SECRET@bucket/run"], "checkpoint.remote: the URL holds a password"),
]


@pytest.mark.parametrize("args,fragment", CLI_SECRETS, ids=[f for _, f in CLI_SECRETS])
def test_train_refuses_a_config_with_a_credential_and_writes_nothing(tmp_path, capsys, args, fragment):
    config = write_config(tmp_path, checkpoint={"remote": "s3://bucket/run",
                                                "remote_options": {"endpoint_url": "http://127.0.0.1:9"}})
    run = tmp_path / "run"
    (run / "checkpoint-3").mkdir(parents=True)  # an existing run directory: it must stay exactly as it is
    before = snapshot(run)
    assert main(["train", str(config), *args]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and err.count("error:") == 1
    assert "AWS_SECRET_ACCESS_KEY" in err or "hf auth login" in err
    assert AWS_SECRET not in err and AZURE_KEY not in err
    assert snapshot(run) == before


def test_dump_config_writes_the_redacted_form(tmp_path):
    from gptresume.config import dump_config, load_config

    config = load_config(write_config(tmp_path, checkpoint={"remote": "s3://bucket/run",
                                                            "remote_options": {"endpoint_url": "http://x:1"}}))
    config.checkpoint.remote_options["client_kwargs"] = {"aws_secret_access_key": AWS_SECRET}  # past the check
    dump_config(config, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert AWS_SECRET not in text
    assert yaml.safe_load(text)["checkpoint"]["remote_options"]["client_kwargs"] == {"aws_secret_access_key": REDACTED}


def test_history_and_manifests_record_the_redacted_form(tmp_path):
    from conftest import fake_checkpoint
    from gptresume.rundir import append_history

    leaked = {"remote_options": {"client_kwargs": {"aws_secret_access_key": AWS_SECRET}}}
    append_history(tmp_path, "start", argv=["train", "c.yaml", "--set",
                                             f"checkpoint.remote_options.secret={AWS_SECRET}"], checkpoint=leaked)
    ckpt = fake_checkpoint(tmp_path, 4, {"model.safetensors": b"x"}, config={"checkpoint": leaked})
    for path in (tmp_path / "history.jsonl", ckpt / "manifest.json"):
        text = path.read_text()
        assert AWS_SECRET not in text and REDACTED in text, path
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["config"]["checkpoint"]["remote_options"]["client_kwargs"]["aws_secret_access_key"] == REDACTED
