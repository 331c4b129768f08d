"""Model names: tiny-local, a local path and a hub id all end in the same from_pretrained call."""
import time

import pytest

from safealign import models


def test_tiny_local_resolves_to_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SAFEALIGN_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run `make tiny-model`"):
        models.resolve("tiny-local")
    (tmp_path / "models" / "tiny-local").mkdir(parents=True)
    (tmp_path / "models" / "tiny-local" / ".done").write_text("")
    assert models.resolve("tiny-local") == str(tmp_path / "models" / "tiny-local")


def test_local_path_and_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.resolve(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve(str(tmp_path)) == str(tmp_path)
    assert models.resolve("aisingapore/llama3-8b-cpt-sea-lionv2.1-instruct") == \
        "aisingapore/llama3-8b-cpt-sea-lionv2.1-instruct"
    assert models.is_local("tiny-local") and not models.is_local("aisingapore/some-model")


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
