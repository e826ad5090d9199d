"""transformers ``generate`` backend: batched, length-sorted, left-padded, bf16 where supported."""
from __future__ import annotations

import functools
import hashlib
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from bench.backends import BackendError, apply_stop
from bench.models import DTYPES, left_padded, parse_dtype
from bench.prompts import PromptFormat, encode


def pick_dtype(name: str, device: str) -> torch.dtype:
    """``auto``/``bfloat16`` -> bf16 where the device supports it, else float32."""
    if name == "auto" or DTYPES.get(name) is torch.bfloat16:
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16  # CPU: native on AVX512-BF16/AMX, emulated (correct, slower) elsewhere
    if name not in DTYPES:
        raise BackendError(f"generation.dtype {name!r}: use one of {sorted(DTYPES)} or auto")
    return parse_dtype(name)


def load_for_inference(path: str | Path, dtype: torch.dtype, device: str = "cpu"):
    """A causal LM and its tokenizer from a model directory (a PEFT adapter directory is merged into
    its base: :func:`bench.models.load_causal_lm`)."""
    from transformers import AutoTokenizer

    from bench.models import load_causal_lm

    path = Path(path)
    model = load_causal_lm(path, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    return model, tokenizer


def decode_completion(tokenizer: Any, ids: Sequence[int], stop: Sequence[str]) -> str:
    """Completion ids (up to the first EOS) -> text, cut at the first stop string."""
    eos = tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    out = []
    for token in ids:
        if token in eos_ids:
            break
        out.append(int(token))
    return apply_stop(tokenizer.decode(out, skip_special_tokens=True), stop)


def completion_and_draw(tokenizer: Any, tokens: Sequence[int], logprobs: Sequence[float] | None,
                        stop: Sequence[str]) -> tuple[str, dict[str, list] | None]:
    """A sampled completion's text (cut at the first stop string) and what the score stage's KL from the
    sampler reads: the drawn ids with the policy's log-probs of them, only when the sampler gave them and no
    stop string cut the text (else None: the text is teacher-forced). ``tokens`` and ``logprobs`` end where
    the sample does, the EOS included when it was drawn."""
    full = decode_completion(tokenizer, tokens, ())  # one decode; the stop cut is a string op
    text = apply_stop(full, stop)
    if logprobs is None or text != full:
        return text, None
    return text, {"token_ids": list(tokens), "logprobs": list(logprobs)}


class HFOptions(BaseModel):
    """Options of the hf backend (a suite's ``generation.backend_options`` with ``backend: hf``)."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(64, ge=1, description="sequences per generate() call (rows sorted by prompt length)")
    prefill_once_per_prompt: bool = Field(
        False, description="run each distinct prompt of a batch once and copy its KV cache to its samples: faster "
        "for several samples of long prompts (code: 1.4x), the same distribution, but float32 rounding of the "
        "differently batched prompt pass changes some exact draws (default suite's preference data: 21 of 256 "
        "samples differ, no time saved on its short prompts), so committed results stay reproducible only with "
        "the setting they were made with")


class HFBackend:
    name = "hf"
    description = "transformers generate: batched, prompts sorted by length, bf16 where supported"
    options_model = HFOptions

    def __init__(self, model_path: str, dtype: str = "bfloat16", batch_size: int = 64,
                 prefill_once_per_prompt: bool = False, device: str | None = None) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = pick_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.prefill_once_per_prompt = prefill_once_per_prompt
        self.model, self.tokenizer = load_for_inference(model_path, self.dtype, self.device)
        self.model_path = str(model_path)
        self.stats: dict[str, float] = {"generated_tokens": 0, "seconds": 0.0}

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Any], sampling: Any, seed: int = 0,
                 prompt_format: PromptFormat | None = None) -> list[Any]:
        from transformers import LogitsProcessorList

        from tasks.base import Sample

        started = time.perf_counter()
        ids = [encode(self.tokenizer, p.text, prompt_format) for p in prompts]
        n = max(1, int(sampling.n))
        # every (prompt, sample) row, sorted longest first so a batch pads little
        rows = [(i, k) for i in range(len(prompts)) for k in range(n)]
        order = sorted(range(len(rows)), key=lambda r: (-len(ids[rows[r][0]]), r))
        completions: dict[tuple[int, int], str] = {}
        sampled: dict[tuple[int, int], dict[str, Any]] = {}  # token ids + policy log-probs per row
        greedy = sampling.temperature == 0
        pad = self.tokenizer.pad_token_id
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            chunk = [rows[r] for r in order[start:start + self.batch_size]]
            input_ids, attention = left_padded([ids[i] for i, _ in chunk], pad)  # generation continues at the right edge
            width = input_ids.shape[1]
            # always transformers' greedy loop: sampling happens in our logits processor, which
            # leaves one finite score per row (see InverseCDFSampler for why)
            kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "pad_token_id": pad,
                                      "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            sampler = None
            if not greedy:
                if getattr(sampling, "draws", "per_row") == "per_batch":  # one stream per (seed, batch)
                    sampler = InverseCDFSampler(sampling.temperature, sampling.top_p,
                                                torch.Generator().manual_seed(seed * 100_003 + b))
                else:
                    sampler = InverseCDFSampler(sampling.temperature, sampling.top_p, uniforms=torch.stack(
                        [row_uniforms(seed, prompts[i].id, k, sampling.max_new_tokens) for i, k in chunk]))
                kwargs["logits_processor"] = LogitsProcessorList([sampler])
            cache = self._prefill_once_per_prompt(ids, [i for i, _ in chunk], width)
            if cache is not None:
                kwargs["cache"] = cache
            out = self.model.generate(input_ids=input_ids.to(self.device),
                                      attention_mask=attention.to(self.device), **kwargs)
            new = out[:, width:].tolist()
            logps = torch.stack(sampler.logps, dim=1).tolist() if sampler is not None and sampler.logps else None
            for j, ((i, k), tokens) in enumerate(zip(chunk, new)):
                count = _count_until_eos(tokens, self.tokenizer.eos_token_id, pad)  # padding follows the EOS
                self.stats["generated_tokens"] += count
                text, drawn = completion_and_draw(self.tokenizer, tokens[:count],
                                                  logps[j][:count] if logps is not None else None, sampling.stop)
                completions[(i, k)] = text
                if drawn is not None:
                    sampled[(i, k)] = drawn
        self.stats["seconds"] += time.perf_counter() - started
        samples = []
        for i in range(len(prompts)):
            for k in range(n):
                drawn = sampled.get((i, k))
                samples.append(Sample.from_prompt(
                    prompts[i], completions[(i, k)], index=k,
                    logprobs=drawn["logprobs"] if drawn else None,
                    meta={"token_ids": drawn["token_ids"]} if drawn else {}))
        return samples

    def _prefill_once_per_prompt(self, ids: Sequence[Sequence[int]], rows: Sequence[int], width: int) -> Any:
        """The KV cache of a batch whose rows repeat prompts (several samples per prompt): each distinct
        prompt, left-padded to the batch's ``width``, is run once up to its last token and its cache
        rows are copied to every row that samples from it; ``generate`` then runs only the last prompt
        token and the new ones. Measured here (SmolLM2, 6 MBPP prompts x 10 samples x 32 new tokens):
        25.0 s -> 11.2 s, the same tokens drawn, the sampler's log-probs within 2e-5 (float32 rounding
        of differently batched matmuls, which can change a draw: off unless ``prefill_once_per_prompt``).
        None when off, when no prompt repeats or when the model takes no cache."""
        distinct = list(dict.fromkeys(rows))
        if not self.prefill_once_per_prompt or len(distinct) == len(rows) or width < 2 or not self._takes_cache:
            return None
        from transformers import DynamicCache

        input_ids, attention = left_padded([ids[i] for i in distinct], self.tokenizer.pad_token_id, width)
        # the positions generate() gives left-padded rows: count of real tokens so far, 0 on padding
        positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 0)
        cache = DynamicCache()
        self.model(input_ids=input_ids[:, :-1].to(self.device), attention_mask=attention[:, :-1].to(self.device),
                   position_ids=positions[:, :-1].to(self.device), cache=cache, use_cache=True, logits_to_keep=1)
        cache.batch_select_indices(torch.tensor([distinct.index(i) for i in rows], device=self.device))
        return cache

    @functools.cached_property
    def _takes_cache(self) -> bool:
        """Whether the model's forward takes ``cache``, ``position_ids`` and ``logits_to_keep`` (asked once)."""
        import inspect

        params = inspect.signature(self.model.forward).parameters
        return all(name in params for name in ("cache", "position_ids", "logits_to_keep"))

    def close(self) -> None:
        del self.model


def row_uniforms(seed: int, prompt_id: str, index: int, steps: int) -> torch.Tensor:
    """The uniforms that draw sample ``index`` of prompt ``prompt_id``, one per generation step: a
    stream of its own, seeded by a hash of (seed, prompt id, sample index), so a row draws the same
    whatever the batch size, the other rows of its batch or the prompt's position in the list; every
    policy sampled with the same seed uses the same uniforms on the same prompt (common random
    numbers, which make paired comparisons of policies less noisy)."""
    digest = hashlib.blake2b(f"{seed}\x1f{prompt_id}\x1f{index}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
    return torch.rand(steps, generator=generator, dtype=torch.float64)


class InverseCDFSampler:
    """A transformers logits processor that draws the next token itself (temperature, then
    nucleus/top-p, then inverse-CDF sampling with a seeded generator) and returns scores where only
    the drawn token is finite, so ``generate``'s greedy argmax emits it.

    Why not ``do_sample=True``: transformers draws with ``torch.multinomial``, which generates one
    exponential variate per vocabulary entry per row per step; with a 49k vocabulary that was ~27% of
    CPU generation time here. Inverse CDF needs one uniform per row. Exact categorical sampling
    either way (up to float32 rounding of the cumulative sum)."""

    def __init__(self, temperature: float, top_p: float, generator: torch.Generator | None = None, *,
                 uniforms: torch.Tensor | None = None) -> None:
        """``uniforms`` [rows, steps]: the rows' own draws (:func:`row_uniforms`), one column per step;
        else one uniform per row and step from ``generator``."""
        if (generator is None) == (uniforms is None):
            raise BackendError("InverseCDFSampler takes a generator or the rows' uniforms, one of them")
        if temperature <= 0:
            raise BackendError(f"sampling temperature must be > 0 for sampling, got {temperature}")
        if not 0 < top_p <= 1:
            raise BackendError(f"sampling top_p must be in (0, 1], got {top_p}")
        self.temperature, self.top_p, self.generator, self.uniforms = float(temperature), float(top_p), generator, uniforms
        #: per generation step, [rows]: log pi(drawn token) under the untempered, untruncated policy
        self.logps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float()
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1:
            probs = nucleus(probs, self.top_p)
        cdf = probs.cumsum(-1)
        if self.uniforms is not None:
            u = self.uniforms[:, len(self.logps):len(self.logps) + 1].to(cdf)
        else:
            u = torch.rand((probs.shape[0], 1), generator=self.generator)
        u = u.to(cdf.device) * cdf[:, -1:]
        # right=True: the first entry whose cdf exceeds u, which always has positive probability
        token = torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1)
        # the policy's own log-prob of the drawn token: with temperature 1 and no truncation, the
        # samples come from pi and sum(logps - ref logps) estimates KL(pi || ref) without a second
        # forward of the policy (the score stage then runs only the reference)
        self.logps.append((logits.gather(-1, token) - torch.logsumexp(logits, -1, keepdim=True)).squeeze(-1).cpu())
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


#: candidates per row for top-p: sorting the whole 49k vocabulary every step was 17% of CPU generation
#: time (64 rows, SmolLM2, top_p 0.95); the nucleus is almost always inside the 1024 most likely tokens
NUCLEUS_CANDIDATES = 1024


def nucleus(probs: torch.Tensor, top_p: float, candidates: int = NUCLEUS_CANDIDATES) -> torch.Tensor:
    """``probs`` [rows, vocab] with everything outside each row's nucleus set to 0: the smallest set of
    most likely tokens whose mass reaches ``top_p`` (not renormalised). Rows whose nucleus is not
    inside the ``candidates`` most likely tokens are sorted in full; either way the result is the
    full sort's, since the top candidates are the sorted distribution's prefix."""
    k = min(candidates, probs.shape[-1])
    top, order = probs.topk(k, dim=-1)  # sorted, descending
    cum = top.cumsum(-1)
    out = torch.zeros_like(probs).scatter_(-1, order, top.masked_fill(cum - top >= top_p, 0.0))
    wider = cum[:, -1] < top_p  # the nucleus reaches past the candidates
    if k < probs.shape[-1] and bool(wider.any()):
        out[wider] = nucleus(probs[wider], top_p, probs.shape[-1])
    return out


def _count_until_eos(tokens: Sequence[int], eos: Any, pad: int) -> int:
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    count = 0
    for t in tokens:
        count += 1
        if t in eos_ids:
            break
    return count
