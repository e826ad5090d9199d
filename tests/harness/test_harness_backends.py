"""The hf backend and teacher-forced KL on tiny models (the vLLM side lives in test_harness_vllm.py)."""
from __future__ import annotations

import pytest
import torch

from bench.backends import apply_stop, resolve_backend_name, vllm_available
from bench.backends.hf import HFBackend
from bench.models import tiny_model
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


def test_auto_backend_choice():
    assert resolve_backend_name("auto") == ("vllm" if vllm_available() else "hf")
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


def test_inverse_cdf_sampler_rejects_bad_settings():
    from bench.backends import BackendError
    from bench.backends.hf import InverseCDFSampler

    with pytest.raises(BackendError, match="temperature"):
        InverseCDFSampler(0.0, 1.0, torch.Generator())
    with pytest.raises(BackendError, match="top_p"):
        InverseCDFSampler(1.0, 0.0, torch.Generator())
