"""One prompt format (bench.prompts): training, sampling and teacher-forced KL condition a model on
the same prompt ids for every chat_template setting (True / False / None) and max_prompt_length,
with tokenizers with and without a chat template.

The bug this pins: with ``chat_template: null`` the trainer resolved None to the tokenizer's
template while the samplers and KL tokenised plain text, so a policy was evaluated on prompts it
was never trained on."""
from __future__ import annotations

import shutil

import pytest
from transformers import AutoTokenizer

import bench.teacher_forcing as teacher_forcing
import bench.train.preference as preference
import bench.train.sft as sft
from bench.backends.hf import HFBackend
from bench.models import tiny_model
from bench.prompts import PLAIN, PromptFormat, PromptFormatError, encode
from bench.train import PreferenceTrainConfig, SFTConfig, train_preference, train_sft
from tasks.base import PreferencePair, Prompt, Sampling

pytestmark = pytest.mark.slow  # seconds per test: outside the `tox -e fast` inner loop, run by CI

# writes BOS itself, like Llama-3's template
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
KINDS = {
    "gpt2": {},  # no template, no BOS on plain text
    "gpt2+bos": {"add_bos_token": True},  # no template; plain text starts with BOS
    "chat": {"add_bos_token": True, "chat_template": TEMPLATE},  # the template's BOS must not be doubled
}
PROMPTS = ["The movie was", "Once upon a time, in a land far away, a long and winding story began to unfold slowly"]
LIMITS = (8, 256)  # 8 truncates both prompts (the long one even as plain text); 256 none


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    base = tiny_model(0, save=True)
    dirs = {}
    for kind, options in KINDS.items():
        path = tmp_path_factory.mktemp("models") / kind
        shutil.copytree(base, path)
        tokenizer = AutoTokenizer.from_pretrained(base, add_bos_token=options.get("add_bos_token", False))
        if "chat_template" in options:
            tokenizer.chat_template = options["chat_template"]
        tokenizer.save_pretrained(path)
        dirs[kind] = str(path)
    return dirs


@pytest.fixture(scope="module")
def samplers(model_dirs):
    return {kind: HFBackend(path, dtype="float32", batch_size=4) for kind, path in model_dirs.items()}


_LOADED: dict = {}


@pytest.fixture(autouse=True)
def load_each_pair_once(monkeypatch):
    """Teacher forcing loads (policy, reference, tokenizer) through its own code once per model
    directory; later calls reuse them (loading dominated this file's run time)."""
    real = teacher_forcing._load_pair

    def cached(policy_path, reference_path, dtype="float32"):
        key = (policy_path, reference_path, dtype)
        if key not in _LOADED:
            _LOADED[key] = real(policy_path, reference_path, dtype)
        return _LOADED[key]

    monkeypatch.setattr(teacher_forcing, "_load_pair", cached)


class _Stop(Exception):
    pass


def trained_prompt_ids(trainer: str, model_dir: str, chat_template, limit: int, tmp_path, monkeypatch):
    """The prompt ids the trainer tokenises its data to (training is stopped right after)."""
    seen = []
    module = preference if trainer == "preference" else sft
    real = module.tokenize_rows

    def spy(*args, **kwargs):
        examples, _ = real(*args, **kwargs)
        seen.extend(e.prompt for e in examples)
        raise _Stop

    monkeypatch.setattr(module, "tokenize_rows", spy)
    common = dict(model=model_dir, chat_template=chat_template, max_prompt_length=limit, max_length=limit + 16,
                  steps=1, batch_size=2, tensorboard=False, progress_bar=False, wandb=False)
    with pytest.raises(_Stop):
        if trainer == "preference":
            rows = [{"prompt": p, "chosen": " good", "rejected": " bad"} for p in PROMPTS]
            train_preference(PreferenceTrainConfig(**common), rows, "dpo", tmp_path / "run")
        else:
            train_sft(SFTConfig(**common), [{"prompt": p, "completion": " fine"} for p in PROMPTS], tmp_path / "run")
    return seen


def sampled_prompt_ids(backend: HFBackend, fmt: PromptFormat | None, monkeypatch) -> list[list[int]]:
    """The prompt ids the hf sampler feeds ``model.generate`` (left padding removed)."""
    seen: list[list[int]] = []
    real = backend.model.generate

    def spy(*, input_ids, attention_mask, **kwargs):
        for row, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            seen.append([t for t, m in zip(row, mask) if m])
        return real(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(backend.model, "generate", spy)
    for i, text in enumerate(PROMPTS):  # one prompt per call: the captured row is that prompt's
        backend.generate([Prompt(str(i), text)], Sampling(max_new_tokens=1, temperature=0.0, n=1),
                         prompt_format=fmt)
    return seen


def scored_prompt_ids(model_dir: str, fmt: PromptFormat | None, monkeypatch) -> tuple[list, list]:
    """The prompt ids teacher forcing scores completions after: (sequence_kl, summed_pair_logps)."""
    calls: list[list[list[int]]] = []
    real = teacher_forcing.completion_logps

    def spy(model, rows, *args, **kwargs):
        calls.append([list(seq[:prompt_len]) for seq, prompt_len in rows])
        return real(model, rows, *args, **kwargs)

    paired: list[list[list[int]]] = []
    real_pairs = teacher_forcing.shared_prompt_logps

    def spy_pairs(model, prompts, *args, **kwargs):  # held-out pairs: each prompt once, then its two responses
        paired.append([list(p) for p in prompts])
        return real_pairs(model, prompts, *args, **kwargs)

    monkeypatch.setattr(teacher_forcing, "completion_logps", spy)
    monkeypatch.setattr(teacher_forcing, "shared_prompt_logps", spy_pairs)
    kl = teacher_forcing.sequence_kl(model_dir, model_dir, PROMPTS, [" fine"] * len(PROMPTS), prompt_format=fmt)
    assert kl == [0.0] * len(PROMPTS)
    pairs = [PreferencePair(p, " good", " bad", id=str(i)) for i, p in enumerate(PROMPTS)]
    teacher_forcing.summed_pair_logps(model_dir, pairs, prompt_format=fmt)
    assert calls[0] == calls[1]  # policy and reference see the same rows
    return calls[0], paired[0]


def expected_ids(tokenizer, text: str, templated: bool, limit: int) -> list[int]:
    """The rules, written out independently of bench.prompts."""
    if templated:
        chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(chat, add_special_tokens=False).input_ids
    else:
        ids = tokenizer(text, add_special_tokens=True).input_ids
    return ids[-limit:]


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("chat_template", [True, False, None], ids=["template", "plain", "null"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_training_sampling_and_kl_use_the_same_prompt_ids(kind, chat_template, limit, model_dirs, samplers,
                                                          tmp_path, monkeypatch):
    model_dir = model_dirs[kind]
    fmt = PromptFormat(chat_template=chat_template, max_prompt_length=limit)
    tokenizer = samplers[kind].tokenizer
    has_template = "chat_template" in KINDS[kind]
    if chat_template is True and not has_template:  # refused the same way everywhere
        for trainer in ("preference", "sft"):
            with pytest.raises(PromptFormatError, match="no chat template"):
                trained_prompt_ids(trainer, model_dir, chat_template, limit, tmp_path / trainer, monkeypatch)
        with pytest.raises(PromptFormatError, match="no chat template"):
            samplers[kind].generate([Prompt("0", PROMPTS[0])], Sampling(max_new_tokens=1, temperature=0.0),
                                    prompt_format=fmt)
        with pytest.raises(PromptFormatError, match="no chat template"):
            teacher_forcing.sequence_kl(model_dir, model_dir, PROMPTS, [" x"] * 2, prompt_format=fmt)
        return

    templated = chat_template is True or (chat_template is None and has_template)
    want = [expected_ids(tokenizer, text, templated, limit) for text in PROMPTS]
    preference_ids = trained_prompt_ids("preference", model_dir, chat_template, limit, tmp_path / "p", monkeypatch)
    sft_ids = trained_prompt_ids("sft", model_dir, chat_template, limit, tmp_path / "s", monkeypatch)
    sampler_ids = sampled_prompt_ids(samplers[kind], fmt, monkeypatch)
    kl_ids, pair_ids = scored_prompt_ids(model_dir, fmt, monkeypatch)
    assert preference_ids == want
    assert sft_ids == want
    assert sampler_ids == want
    assert kl_ids == want
    assert pair_ids == want
    assert [encode(tokenizer, text, fmt) for text in PROMPTS] == want

    if limit == 8:
        assert len(want[1]) == 8 and all(len(ids) <= 8 for ids in want)  # truncated, keeping the end
    else:
        full = want
        bos = tokenizer.bos_token_id
        if templated or kind == "gpt2+bos" or (kind == "chat" and not templated):
            # exactly one BOS: the tokenizer's on plain text, the template's (and not the tokenizer's too)
            assert all(ids[0] == bos and ids[1] != bos for ids in full)
        else:
            assert all(bos not in ids for ids in full)
        if kind == "chat":  # the two settings really differ, so agreement above means something
            plain = [expected_ids(tokenizer, text, False, limit) for text in PROMPTS]
            assert (full != plain) == templated


def test_prompt_format_from_a_training_config_and_the_plain_default(model_dirs, samplers, monkeypatch):
    assert PreferenceTrainConfig(chat_template=None, max_prompt_length=12).prompt_format() == PromptFormat(None, 12)
    assert SFTConfig(chat_template=True, max_prompt_length=40).prompt_format() == PromptFormat(True, 40)
    # prompt_format=None: plain text with the tokenizer's special tokens, untruncated (the old behaviour)
    tokenizer = samplers["chat"].tokenizer
    plain = [tokenizer(text).input_ids for text in PROMPTS]
    assert sampled_prompt_ids(samplers["chat"], None, monkeypatch) == plain
    assert scored_prompt_ids(model_dirs["chat"], None, monkeypatch) == (plain, plain)
    assert [encode(tokenizer, text, PLAIN) for text in PROMPTS] == plain
    # an empty prompt still has a position that predicts the first completion token
    assert encode(tokenizer, "", PLAIN) == [tokenizer.bos_token_id]
