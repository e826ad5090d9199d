"""The TL;DR pipeline end to end offline: SFT on the project's TL;DR fixture (tests/fixtures/tldr: invented posts
and summaries in the hub schema; no TL;DR data exists offline), the fixture's preference pairs, DPO, sampling,
ROUGE and self-BLEU, alignment accuracy on held-out comparisons, and a pairwise LLM judge reached over a loopback
OpenAI-compatible server that this test starts and that answers with the tiny random model itself (greedy).
Every per-sample number is recomputed here: ROUGE with rouge-score, self-BLEU with sacrebleu, and each win from
the judge's logged answers in both orders."""
from __future__ import annotations

import gzip
import json
import re
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from bench.cli import main
from tests.fixtures.tasks_support import RESPONSE, LoopbackChatServer

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


class TinyModelServer(LoopbackChatServer):
    """``POST /v1/chat/completions`` answered by the tiny random Llama (greedy, ``max_tokens`` new tokens) on the
    system and user messages joined as plain text (its GPT-2 tokenizer has no chat template). Every request's
    (first response, second response, reply) goes to ``log``."""

    finish_reason = "length"

    def __init__(self) -> None:
        from bench.models import tiny_model

        super().__init__()
        self.model, self.tokenizer = tiny_model(0)
        self.model.eval()
        self.log: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def reply(self, body: dict) -> str:
        text = "\n\n".join(m["content"] for m in body["messages"])
        reply = self.complete(text, int(body.get("max_tokens") or 8))
        first, second = RESPONSE.search(body["messages"][-1]["content"]).groups()
        with self.lock:
            self.log.append((first, second, reply))
        return reply

    def complete(self, text: str, max_tokens: int) -> str:
        ids = self.tokenizer(text, return_tensors="pt").input_ids[:, -400:]  # the model's 512 positions
        with self.lock, torch.no_grad():
            out = self.model.generate(ids, do_sample=False, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def verdict(reply: str) -> str | None:
    """The judge's documented reading of an answer: a bare letter A or B (any case, punctuation around it), else
    the first standalone capital A or B, else none."""
    bare = "".join(ch for ch in reply if ch not in " \t\n*_.:()[]\"'")
    if bare.upper() in ("A", "B"):
        return bare.upper()
    for word in re.findall(r"[A-Za-z]+", reply):
        if word in ("A", "B"):
            return word
    return None


def suite(judge_url: str) -> dict:
    return {
        "name": "tldr_tiny", "models": [{"id": "tiny"}], "tasks": ["tldr"],
        "task_options": {"tldr": {"data_dir": str(REPO / "tests" / "fixtures"), "source": "local",
                                  "judge": f"llm:{judge_url}?model=tiny-judge", "max_eval_pairs": 4}},
        "methods": {"dpo": {}}, "reference_row": True, "seeds": [0],
        "sft": {"enabled": True, "steps": 2, "batch_size": 2, "lr": 1.0e-3, "peft": "lora", "checkpoint_every": 0},
        "prefdata": {"source": "dataset", "prompts": 6},
        "train": {"steps": 2, "batch_size": 2, "lr": 1.0e-3, "lr_schedule": "constant", "peft": "lora",
                  "chat_template": False, "max_length": 256, "max_prompt_length": 192, "checkpoint_every": 0},
        "generation": {"backend": "hf", "prompts": 3, "samples_per_prompt": 2, "max_new_tokens": 8,
                       "temperature": 1.0, "dtype": "float32"},
        "report": {"bootstrap_resamples": 200},
    }


def test_tldr_pipeline_end_to_end_with_a_loopback_llm_judge(tmp_path, capsys, monkeypatch):
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "cache"))
    work, results = tmp_path / "work", tmp_path / "results"
    started = time.perf_counter()
    with TinyModelServer() as server:
        path = tmp_path / "tldr_tiny.yaml"
        path.write_text(yaml.safe_dump(suite(server.base_url)))
        code = main(["run", str(path), "--work-dir", str(work), "--results-dir", str(results), "--plain"])
    print(f"\ntldr pipeline at tiny scale: {time.perf_counter() - started:.1f} s")
    assert code == 0, capsys.readouterr().err[-4000:]
    for stage in ("sft", "prefdata", "train", "generate", "score"):
        assert list((work / stage).glob("*/record.json")), f"stage {stage} did not run"

    board = json.loads((results / "leaderboard.json").read_text())
    assert board["primary_metric"] == {"tldr": "rouge1"}
    rows = {r["label"]: r for r in board["rows"]}
    assert set(rows) == {"reference", "dpo"}
    ref_alignment = rows["reference"]["metrics"]["alignment_accuracy"]
    assert ref_alignment["mean"] == 0.5 and "0.5 by construction" in ref_alignment["note"]
    assert "rouge1" in rows["dpo"]["vs_reference"] and "alignment_accuracy" in rows["dpo"]["vs_reference"]

    answers: dict[tuple[str, str], str] = {(first, second): reply for first, second, reply in server.log}
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    bleu = BLEU(effective_order=True)
    for label, row in rows.items():
        step = "__step2" if label == "dpo" else ""  # a trained policy's record names its final step
        evidence = [json.loads(line) for line in gzip.decompress(
            (results / "runs" / f"tldr__tiny__{label}__s0{step}.samples.jsonl.gz").read_bytes()).splitlines()]
        assert len(evidence) == 6  # 3 prompts x 2 samples
        references = {json.loads(line)["prompt"]: json.loads(line)["completion"].strip()
                      for line in (REPO / "tests/fixtures/tldr/tldr/test.jsonl").read_text().splitlines()}
        wins, self_bleus = [], []
        for e in evidence:
            completion, reference = e["completion"].strip(), references[e["prompt"]]
            for key in ("rouge1", "rouge2", "rougeL"):
                assert e["scores"][key] == pytest.approx(scorer.score(reference, completion)[key].fmeasure)
            forward, backward = verdict(answers[(completion, reference)]), verdict(answers[(reference, completion)])
            win = 1.0 if (forward, backward) == ("A", "B") else 0.0 if (forward, backward) == ("B", "A") else 0.5
            assert e["scores"]["win"] == win
            wins.append(win)
        for prompt_id in {e["prompt_id"] for e in evidence}:
            texts = [e["completion"] for e in evidence if e["prompt_id"] == prompt_id]
            self_bleus.append(sum(bleu.sentence_score(t, texts[:i] + texts[i + 1:]).score
                                  for i, t in enumerate(texts)) / len(texts))
        metrics = row["metrics"]
        assert metrics["win_rate"]["mean"] == pytest.approx(sum(wins) / len(wins))
        assert metrics["self_bleu"]["mean"] == pytest.approx(sum(self_bleus) / len(self_bleus))
        assert metrics["rouge1"]["ci_over"] == "prompts" and metrics["rouge1"]["n"] == 3
