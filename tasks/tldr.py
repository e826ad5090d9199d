"""TL;DR summarization of Reddit posts (Stiennon et al. 2020; the DPO paper's summarization task).

Datasets: ``trl-lib/tldr`` (``prompt``/``completion``: SFT data and eval prompts with their
reference summary) and ``trl-lib/tldr-preference`` (``prompt``/``chosen``/``rejected``: the OpenAI
human comparisons) on the hub; locally the same schema as jsonl files under
``<data_dir>/tldr/tldr/{train,validation,test}.jsonl`` and
``<data_dir>/tldr/tldr-preference/{train,validation}.jsonl`` (``tests/fixtures/tldr`` is a small
fixture in that layout). Prompts end with ``"\\n\\nTL;DR:"``.

Metrics: ROUGE-1/2/L against the reference summary (rouge-score, stemmed F1), self-BLEU across
samples (diversity), judge win rate vs the reference summary (pairwise LLM or reward-model judge;
offline, MiniLM similarity to the reference instead, reported under its own name).
Tags: summarization, dataset-preferences.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from tasks.base import (DataError, DataSource, Metric, PairLogps, PreferencePair, Prompt, Sample, Sampling,
                        Scores, SFTExample, SourceUsed, Task, TaskError, file_fingerprint, limit_list, read_jsonl)
from tasks.metrics import alignment_scores, judge_against_reference, rouge, self_bleu_by_prompt

SFT_HUB_ID = "trl-lib/tldr"
PREF_HUB_ID = "trl-lib/tldr-preference"
SFT_FIELDS = ("prompt", "completion")
PREF_FIELDS = ("prompt", "chosen", "rejected")


def read_rows(path: Path, fields: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a jsonl file; any row lacking a string field raises DataError(file, line, reason)."""
    rows = []
    for line_no, row in read_jsonl(path, strict=True):
        if not isinstance(row, dict):
            raise DataError(path, line_no, "record is not a JSON object")
        for name in fields:
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise DataError(path, line_no, f"field {name!r} missing or not a non-empty string")
        rows.append({name: row[name] for name in fields} | {"_line": line_no})
    return rows


class TLDR(Task):
    name = "tldr"
    version = "2"  # 2: alignment_accuracy counts ties 1/2 and has per-pair values
    description = "summarize a Reddit post in one TL;DR line"
    paper = "Stiennon et al. 2020; DPO sec. 6.2"
    sources = (
        DataSource("hub", f"{SFT_HUB_ID} + {PREF_HUB_ID}", "tldr: SFT (train), eval prompts (test); "
                   "tldr-preference: pairs (train), held-out pairs (validation)", "train/validation/test"),
        DataSource("local", "tldr", "same schema as jsonl: <data_dir>/tldr/tldr/{train,validation,test}.jsonl, "
                   "<data_dir>/tldr/tldr-preference/{train,validation}.jsonl", "train/validation/test"),
    )
    metrics = (
        Metric("rouge1", True, "ROUGE-1 F1 vs the reference summary (stemmed)"),
        Metric("rouge2", True, "ROUGE-2 F1 vs the reference summary (stemmed)"),
        Metric("rougeL", True, "ROUGE-L F1 vs the reference summary (stemmed)"),
        Metric("self_bleu", False, "self-BLEU among samples (0-100; lower = more diverse)"),
        Metric("win_rate", True, "judge win rate vs the reference summary (ties = 1/2)"),
        Metric("similarity_to_reference", True, "offline fallback: MiniLM cosine similarity to the reference"),
        Metric("alignment_accuracy", True, "held-out comparisons where the implicit reward log pi/ref ranks chosen "
               "first (ties = 1/2; per pair: the CI's unit)"),
    )
    sampling = Sampling(max_new_tokens=64, temperature=1.0, top_p=1.0, n=1, stop=("\n",))
    preference_mode = "dataset"
    judge_hint = "Prefer the summary that captures the most important points of the post more concisely and precisely."
    options = {
        "eval_split": ("test", "split of trl-lib/tldr whose prompts are evaluated"),
        "max_eval_pairs": (256, "held-out preference pairs teacher-forced for alignment_accuracy when no limit is given"),
    }

    @classmethod
    def default_judge(cls) -> str:
        return "embedding"

    def _rows(self, which: str, split: str) -> list[dict[str, Any]]:
        fields = SFT_FIELDS if which == "tldr" else PREF_FIELDS
        kind = self.resolve_source()
        if kind == "hub":
            hub_id = SFT_HUB_ID if which == "tldr" else PREF_HUB_ID
            ds = self.load_hub(hub_id, split=split)
            rows = [{name: row[name] for name in fields} | {"_line": i + 1} for i, row in enumerate(ds)]
            self._note_hub(hub_id, f"split={split}", ds)
            return rows
        path = self.local_path(which, f"{split}.jsonl")
        if not path.exists():
            raise TaskError(f"tldr: missing {path} (expected the {which} {split} split as jsonl with fields "
                            f"{list(fields)})")
        self._note_source(SourceUsed("local", str(path), f"{which} split={split}", file_fingerprint([path])))
        return read_rows(path, fields)

    def sft_data(self, limit: int | None = None) -> list[SFTExample]:
        return [SFTExample(prompt=r["prompt"], completion=r["completion"], id=f"train:{r['_line']}")
                for r in limit_list(self._rows("tldr", "train"), limit)]

    def preference_data(self, limit: int | None = None) -> list[PreferencePair]:
        return [PreferencePair(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"],
                               id=f"pref-train:{r['_line']}")
                for r in limit_list(self._rows("tldr-preference", "train"), limit)]

    def eval_pairs(self, limit: int | None = None) -> list[PreferencePair]:
        return [PreferencePair(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"],
                               id=f"pref-validation:{r['_line']}")
                for r in limit_list(self._rows("tldr-preference", "validation"),
                                    self.max_eval_pairs if limit is None else limit)]

    def eval_prompts(self, limit: int | None = None) -> list[Prompt]:
        return [Prompt(id=f"{self.eval_split}:{r['_line']}", text=r["prompt"], reference=r["completion"])
                for r in limit_list(self._rows("tldr", self.eval_split), limit)]

    def train_prompts(self, limit: int | None = None) -> list[Prompt]:
        return [Prompt(id=f"train:{r['_line']}", text=r["prompt"], reference=r["completion"])
                for r in limit_list(self._rows("tldr", "train"), limit)]

    def score(self, samples: Sequence[Sample], pair_logps: Sequence[PairLogps] | None = None) -> Scores:
        if not samples:
            raise TaskError("tldr: no samples to score")
        if any(s.reference is None for s in samples):
            references = {p.id: p.reference for p in self.eval_prompts()}
        else:
            references = {}
        refs = []
        for s in samples:
            ref = s.reference if s.reference is not None else references.get(s.prompt_id)
            if ref is None:
                raise TaskError(f"tldr: sample for prompt {s.prompt_id!r} has no reference summary")
            refs.append(ref)
        completions = [s.completion.strip() for s in samples]
        refs = [r.strip() for r in refs]
        means, rows = rouge(completions, refs)
        per_sample: list[dict[str, Any]] = [{"prompt_id": s.prompt_id, "index": s.index, **row}
                                            for s, row in zip(samples, rows)]
        metrics: dict[str, float] = dict(means)
        missing: dict[str, str] = {}
        bleu, scope = self_bleu_by_prompt(samples)
        if bleu is None:
            missing["self_bleu"] = "needs at least two samples"
        else:
            metrics["self_bleu"] = bleu
        judge = self.judge
        judge_against_reference(judge, [s.prompt for s in samples], completions, refs, per_sample, metrics, missing,
                                similarity_metric="similarity_to_reference", reference_name="the reference")
        notes: dict[str, str] = {}
        per_pair = alignment_scores(pair_logps, metrics, missing, notes)
        details: dict[str, Any] = {"judge": judge.identity(), "judge_stats": judge.stats(),
                                   "self_bleu_scope": scope, "n_samples": len(samples),
                                   "n_pairs": len(pair_logps or [])}
        if missing:
            details["missing"] = missing
        if notes:
            details["notes"] = notes
        return Scores(metrics=metrics, per_sample=per_sample, details=details, per_pair=per_pair)
