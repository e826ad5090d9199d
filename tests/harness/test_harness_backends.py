"""The hf backend and teacher-forced KL on tiny models (the vLLM side lives in test_harness_vllm.py)."""
from __future__ import annotations

import pytest
import torch

from bench.backends import apply_stop, resolve_backend_name, vllm_available
from bench.backends.hf import HFBackend
from bench.teacher_forcing import sequence_kl
from tasks.base import Prompt, Sampling

PROMPTS = [Prompt("a", "The movie was"), Prompt("b", "I"), Prompt("c", "What a long and winding road this film is"),
           Prompt("d", "Bad")]


def test_hf_backend_order_n_and_batch_invariance(tiny_dirs):
    one = HFBackend(tiny_dirs[0], dtype="float32", batch_size=1)
    many = HFBackend(tiny_dirs[0], dtype="float32", batch_size=64)
    greedy = Sampling(max_new_tokens=6, temperature=0.0, n=2)
    a, b = one.generate(PROMPTS, greedy), many.generate(PROMPTS, greedy)
    assert [(s.prompt_id, s.index) for s in a] == [(p.id, k) for p in PROMPTS for k in range(2)]
    # left padding + length sorting must not change what a prompt produces
    assert [s.completion for s in a] == [s.completion for s in b]
    assert a[0].completion == a[1].completion  # greedy: the n copies agree
    sampled = Sampling(max_new_tokens=6, temperature=1.0, n=3)
    x, y = many.generate(PROMPTS, sampled, seed=5), many.generate(PROMPTS, sampled, seed=5)
    assert [s.completion for s in x] == [s.completion for s in y]  # seeded
    assert len({s.completion for s in x if s.prompt_id == "c"}) > 1  # real sampling
    assert many.stats["generated_tokens"] > 0


def test_per_row_draws_do_not_depend_on_the_batch(tiny_dirs):
    """draws: per_row: a (prompt, sample) row draws the same tokens whatever the batch size, the prompt's
    position in the list or the other prompts sampled with it; per_batch (the earlier scheme) does not."""
    backend = HFBackend(tiny_dirs[0], dtype="float32", batch_size=64)
    sampling = Sampling(max_new_tokens=8, temperature=1.0, n=3)

    def drawn(prompts, batch_size, draws="per_row", seed=4):
        backend.batch_size = batch_size
        out = backend.generate(prompts, sampling.replace(draws=draws), seed=seed)
        return {(s.prompt_id, s.index): tuple(s.meta["token_ids"]) for s in out}

    whole = drawn(PROMPTS, 64)
    assert drawn(PROMPTS, 1) == whole and drawn(PROMPTS, 5) == whole
    assert drawn(PROMPTS[::-1], 64) == whole  # the position in the list does not matter
    alone = drawn([PROMPTS[2]], 64)
    assert alone == {key: tokens for key, tokens in whole.items() if key[0] == "c"}
    assert drawn(PROMPTS, 64, seed=5) != whole  # the seed does
    assert len({tokens for key, tokens in whole.items() if key[0] == "c"}) > 1  # a prompt's samples differ
    # the earlier scheme: one stream per batch, so the batch size changes what is drawn
    assert drawn(PROMPTS, 1, "per_batch") != drawn(PROMPTS, 64, "per_batch")


def test_samples_of_one_prompt_share_its_prefill(tiny_dirs, monkeypatch):
    backend = HFBackend(tiny_dirs[0], dtype="float32", batch_size=5,  # batches cut through prompt groups
                        prefill_once_per_prompt=True)
    sampling = Sampling(max_new_tokens=8, temperature=1.0, n=3)
    prefills = []
    real = HFBackend._prefill_once_per_prompt

    def counted(self, ids, rows, width):
        cache = real(self, ids, rows, width)
        prefills.append((len(set(rows)), len(rows), cache is not None))
        return cache

    monkeypatch.setattr(HFBackend, "_prefill_once_per_prompt", counted)
    shared = backend.generate(PROMPTS, sampling, seed=2)
    # batches of 5 rows: prompts a|a|a|c|c, c|b|b|b|d... sorted by length; the one-token prompt ("I") has nothing
    # to prefill before its last token
    assert [used for _, _, used in prefills] == [True, True, False], prefills
    backend.prefill_once_per_prompt = False  # the default: every row runs its prompt
    plain = backend.generate(PROMPTS, sampling, seed=2)
    assert [used for _, _, used in prefills[3:]] == [False, False, False]
    # the same tokens drawn (one prompt pass per row instead: float32 rounding is far below the draws' gaps)
    assert [s.completion for s in shared] == [s.completion for s in plain]
    assert [s.meta["token_ids"] for s in shared] == [s.meta["token_ids"] for s in plain]
    for a, b in zip(shared, plain):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_stop_strings():
    assert apply_stop("good film. Bad\nnext", ["\n", "Bad"]) == "good film. "
    assert apply_stop("nothing to cut", ["###"]) == "nothing to cut"


@pytest.mark.slow
def test_teacher_forced_kl(tiny_dirs):
    policy, reference = tiny_dirs
    prompts, completions = ["The movie was", "I"], [" great fun", ""]
    assert sequence_kl(policy, policy, prompts, completions) == [0.0, 0.0]
    kl = sequence_kl(policy, reference, prompts, completions, batch_size=1)
    # independent computation: one unpadded forward per model over the concatenated ids
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy)
    ids_p, ids_c = tok(prompts[0])["input_ids"], tok(completions[0], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ids_p + ids_c])
    total = 0.0
    for path, sign in ((policy, 1.0), (reference, -1.0)):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        targets = ids[0, 1:]
        total += sign * logp[len(ids_p) - 1:, :].gather(-1, targets[len(ids_p) - 1:, None]).sum().item()
    assert kl[0] == pytest.approx(total, abs=1e-4)
    assert kl[1] == 0.0  # an empty completion has no tokens


def test_auto_backend_choice(monkeypatch):
    import bench.backends as backends

    assert resolve_backend_name("auto") == ("vllm" if vllm_available() else "hf")
    # where vLLM is importable: on a CPU only a stage large enough to repay its engine start goes to it
    monkeypatch.setattr(backends, "vllm_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend_name("auto", sampled_tokens=128 * 24) == "hf"  # the default suite's stages
    assert resolve_backend_name("auto", sampled_tokens=backends.CPU_VLLM_MIN_TOKENS) == "vllm"
    assert resolve_backend_name("auto") == "vllm"  # size unknown
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend_name("auto", sampled_tokens=100) == "vllm"
    with pytest.raises(RuntimeError, match="unknown generation backend"):
        resolve_backend_name("tgi")


def _draw(probs: list[float], rows: int, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0):
    """Tokens drawn by the hf backend's sampler from scores log(probs), one per row."""
    from bench.backends.hf import InverseCDFSampler

    scores = torch.log(torch.tensor(probs, dtype=torch.float32)).expand(rows, -1).clone()
    out = InverseCDFSampler(temperature, top_p, torch.Generator().manual_seed(seed))(None, scores)
    assert (torch.isfinite(out).sum(-1) == 1).all()  # exactly one finite score: greedy argmax emits it
    return out.argmax(-1)


def test_inverse_cdf_sampler_draws_from_the_tempered_nucleus():
    p = [0.5, 0.3, 0.15, 0.05]
    rows = 40_000  # binomial sd of a frequency <= 0.0025: 0.012 is ~5 sd
    cases = {
        (1.0, 1.0): p,
        (0.5, 1.0): [x * x / sum(y * y for y in p) for x in p],  # temperature 0.5 squares the probabilities
        (1.0, 0.8): [0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0],  # 0.5 + 0.3 reaches 0.8: the nucleus is {0, 1}
        (1.0, 0.81): [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0],
    }
    for (temperature, top_p), expected in cases.items():
        tokens = _draw(p, rows, temperature, top_p)
        freq = torch.bincount(tokens, minlength=4).double() / rows
        assert freq.tolist() == pytest.approx(expected, abs=0.012), (temperature, top_p)
        if 0.0 in expected:
            assert freq[torch.tensor(expected) == 0].sum() == 0  # outside the nucleus: never
    assert torch.equal(_draw(p, 50, seed=3), _draw(p, 50, seed=3))
    assert not torch.equal(_draw(p, 50, seed=3), _draw(p, 50, seed=4))
    assert (_draw([0.0, 0.0, 1.0, 0.0], 100) == 2).all()  # zero-probability tokens are never drawn


def test_the_nucleus_from_candidates_equals_the_full_sort():
    from bench.backends.hf import nucleus

    def full_sort(probs, top_p):  # the definition: the smallest sorted prefix whose mass reaches top_p
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        return torch.zeros_like(probs).scatter_(-1, order, sorted_probs.masked_fill(outside, 0.0))

    g = torch.Generator().manual_seed(0)
    peaked = torch.softmax(torch.randn(6, 5000, generator=g) * 4, -1)  # nucleus of a few dozen tokens
    flat = torch.softmax(torch.randn(6, 5000, generator=g) * 0.1, -1)  # nucleus of thousands: past 64 candidates
    probs = torch.cat([peaked, flat])
    for top_p in (0.5, 0.9, 0.95, 0.999):
        expected = full_sort(probs, top_p)
        got = nucleus(probs, top_p, candidates=64)
        assert torch.equal(got, expected), top_p
        assert ((expected > 0).sum(-1)[6:] > 64).all()  # the flat rows did take the fallback


def test_inverse_cdf_sampler_rejects_bad_settings():
    from bench.backends import BackendError
    from bench.backends.hf import InverseCDFSampler

    with pytest.raises(BackendError, match="temperature"):
        InverseCDFSampler(0.0, 1.0, torch.Generator())
    with pytest.raises(BackendError, match="top_p"):
        InverseCDFSampler(1.0, 0.0, torch.Generator())


def test_kl_from_the_sampler_equals_teacher_forcing_on_the_tiny_model(tiny_dirs):
    """The hf sampler returns the drawn token ids with the policy's log-probs; a reference forward over
    those ids gives the KL without re-scoring the policy, and both ways agree (issue: KL from the sampler)."""
    from bench.config.schema import ScoreConfig
    from bench.prompts import PromptFormat
    from bench.stages.evaluate import kl_from_samples
    from bench.teacher_forcing import completion_logps
    from bench.backends.hf import load_for_inference

    policy, reference = tiny_dirs
    prompts = [Prompt(id=f"p{i}", text=t) for i, t in enumerate(["The movie was", "I think", "A long and"])]
    fmt = PromptFormat(chat_template=False, max_prompt_length=64)
    samples = HFBackend(policy, dtype="float32", batch_size=4).generate(
        prompts, Sampling(max_new_tokens=6, temperature=1.0, n=3), seed=3, prompt_format=fmt)
    assert all(s.logprobs is not None and len(s.logprobs) == len(s.meta["token_ids"]) for s in samples)
    # 1. the sampler's log-probs are the policy's own: teacher forcing over the same ids agrees
    model, tok = load_for_inference(policy, torch.float32)
    rows = [(tok(s.prompt)["input_ids"] + s.meta["token_ids"], len(tok(s.prompt)["input_ids"])) for s in samples]
    forced = completion_logps(model, rows, tok.pad_token_id, batch_size=1)
    for s, lp in zip(samples, forced):
        assert s.logprobs == pytest.approx(lp, abs=1e-4)
    # 2. KL via the sampler (reference forward only) == KL via teacher forcing of the decoded text,
    # on samples whose text re-tokenises to the drawn ids (the round trip the sampler path avoids)
    via_sampler = [s for s in samples]
    kl_from_samples(via_sampler, policy, reference, ScoreConfig(kl_source="sampler"), fmt)
    text_samples = [type(s)(prompt_id=s.prompt_id, prompt=s.prompt, completion=s.completion, index=s.index)
                    for s in samples]
    kl_from_samples(text_samples, policy, reference, ScoreConfig(kl_source="teacher_forcing"), fmt)
    round_trip = [i for i, s in enumerate(samples)
                  if tok(s.completion, add_special_tokens=False)["input_ids"] == s.meta["token_ids"]]
    assert round_trip, "no sample re-tokenised to its own ids: the comparison would be empty"
    for i in round_trip:
        assert via_sampler[i].kl == pytest.approx(text_samples[i].kl, abs=1e-4)
