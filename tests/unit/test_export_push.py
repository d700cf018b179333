"""`gptresume export --push-to-hub`: the repository id and the hub's reachability are checked before anything is
read or written (the hub itself is unreachable here; the upload is huggingface_hub's create_repo/upload_folder)."""

import pytest

from gptresume.errors import UsageError
from gptresume.tools.export import export


def test_a_malformed_repo_id_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="'bad id!!' is not a hub repository id"):
        export(tmp_path / "run", out, push_to_hub="bad id!!")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_offline_hub_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE is set"):
        export(tmp_path / "run", tmp_path / "out", push_to_hub="me/model")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(UsageError, match="does not exist"):  # past the hub checks: the source is looked at next
        export(tmp_path / "run", tmp_path / "out", push_to_hub="me/model")
