"""Model names: tiny-local, a local path and a hub id all end in the same from_pretrained call."""

import time

import pytest

from safealign.models import load as models


def test_tiny_local_resolves_to_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SAFEALIGN_CACHE", str(tmp_path))
    with pytest.raises(models.ModelUnavailable, match="base_model: tiny-local: .* run `make tiny-model`"):
        models.locate("tiny-local")
    (tmp_path / "models" / "tiny-local").mkdir(parents=True)
    (tmp_path / "models" / "tiny-local" / ".done").write_text("")
    assert models.locate("tiny-local") == str(tmp_path / "models" / "tiny-local")


def fake_hub_cache(root, repo_id: str):
    """The HF hub cache's layout for one model with only its config.json (no download)."""
    d = root / f"models--{repo_id.replace('/', '--')}"
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text("0" * 40)
    (d / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (d / "snapshots" / ("0" * 40) / "config.json").write_text("{}")


def test_local_path_and_hub_id(tmp_path, monkeypatch):
    from huggingface_hub import constants

    with pytest.raises(models.ModelUnavailable, match="no config.json"):
        models.locate(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert models.locate(str(tmp_path)) == str(tmp_path)
    hub_id = "aisingapore/llama3-8b-cpt-sea-lionv2.1-instruct"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    fake_hub_cache(tmp_path / "hub", hub_id)
    assert models.locate(hub_id) == hub_id  # in the cache: the id goes to from_pretrained unchanged
    assert models.is_local("tiny-local") and not models.is_local("aisingapore/some-model")


def test_hub_id_that_cannot_be_had_is_one_paragraph(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelUnavailable) as e:
        models.locate("aisingapore/not-cached-here")
    msg = str(e.value)
    assert msg.startswith("base_model: aisingapore/not-cached-here is not in the local Hugging Face cache")
    assert "HF_HUB_OFFLINE=1" in msg and "hf download aisingapore/not-cached-here" in msg and "\n" not in msg
    with pytest.raises(models.ModelUnavailable, match="eval.safety.judge: 'not a valid id!' is not a local folder"):
        models.locate("not a valid id!", key="eval.safety.judge")


def test_hub_id_offline_fails_fast_not_hangs(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(OSError):
        models.load_tokenizer("aisingapore/not-cached-here")
    assert time.time() - t0 < 60


def test_bf16_auto_is_off_on_cpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    assert models.use_bf16("auto") is False and models.pick_dtype("auto") == torch.float32
    assert models.use_bf16(True) is True
