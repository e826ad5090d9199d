"""HH dialogue: Anthropic's helpful/harmless preference data (Bai et al. 2022).

Dataset: ``Anthropic/hh-rlhf`` on the hub (optionally one subset via ``subset``, e.g.
``harmless-base``), or the original jsonl(.gz) files locally under
``<data_dir>/hh-rlhf/<subset>/{train,test}.jsonl[.gz]``. Each record is a pair of full transcripts
``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` that share every turn but the last assistant response.

The prompt is the transcript up to and including the last ``"\\n\\nAssistant:"`` (multi-turn kept
intact, in the original format); chosen/rejected are the two final responses. Records whose
chosen and rejected transcripts differ before that point, or that lack a Human or Assistant turn,
are malformed: they are skipped and reported with file, line and reason (``strict=True`` raises).

Metrics: judge win rate of samples vs the chosen response, implicit-reward preference accuracy on
held-out pairs (TDPO's "alignment accuracy"), predictive entropy and distinct-n diversity.
Papers: DPO (sec. 6.2), TDPO (Zeng et al. 2024, table 2). Tags: dialogue, dataset-preferences.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from tasks.base import (DataError, DataSource, Metric, PairLogps, PreferencePair, Prompt, Sample, Sampling,
                        Scores, SFTExample, SourceUsed, Task, TaskError, file_fingerprint, limit_list, mean,
                        read_jsonl)
from tasks.metrics import (alignment_scores, distinct_n, judge_against_reference, mean_token_entropy,
                           token_entropy_per_sample)

HUB_ID = "Anthropic/hh-rlhf"
ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"
TURN = re.compile(r"\n\n(Human|Assistant):")
#: malformed records this process has warned about (file, line): reported once, not once per stage
_REPORTED: set[tuple[str, int | None]] = set()


def split_transcript(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response); raises ValueError with the reason when malformed."""
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise ValueError("'chosen' and 'rejected' must be strings")
    cut_c, cut_r = chosen.rfind(ASSISTANT), rejected.rfind(ASSISTANT)
    if cut_c < 0 or cut_r < 0:
        raise ValueError(f"no {ASSISTANT.strip()!r} turn in the {'chosen' if cut_c < 0 else 'rejected'} transcript")
    if not chosen.startswith(HUMAN):
        raise ValueError(f"transcript does not start with {HUMAN.strip()!r}")
    prompt = chosen[: cut_c + len(ASSISTANT)]
    if rejected[: cut_r + len(ASSISTANT)] != prompt:
        raise ValueError("chosen and rejected transcripts differ before their final Assistant turn")
    chosen_response, rejected_response = chosen[len(prompt):].strip(), rejected[len(prompt):].strip()
    if not chosen_response or not rejected_response:
        raise ValueError(f"empty final {'chosen' if not chosen_response else 'rejected'} response")
    return prompt, " " + chosen_response, " " + rejected_response


def dialogue_turns(prompt: str) -> list[dict[str, str]]:
    """The prompt as chat messages ({'role': 'user'|'assistant', 'content'}), last assistant turn open."""
    parts = TURN.split(prompt)
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        if content.strip():
            messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return messages


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key``: assigns records to eval/train independent of file order."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) / 2**32


class HH(Task):
    name = "hh"
    # 2: alignment_accuracy counts ties 1/2 (the reference row: 0.5, was 0) and has per-pair values;
    #    token_entropy has per-sample values
    version = "2"
    description = "single/multi-turn dialogue from Anthropic HH-RLHF: respond to the last Human turn"
    paper = "Bai et al. 2022; DPO sec. 6.2; TDPO table 2"
    sources = (
        DataSource("hub", HUB_ID, "train -> SFT/preferences, test -> eval (subset via the `subset` option)",
                   "train/test"),
        DataSource("local", "hh-rlhf", "original files <data_dir>/hh-rlhf/<subset>/{train,test}.jsonl[.gz]; "
                   "with only test files, a fixed hash split gives eval (eval_fraction) and train", "test[/train]"),
    )
    # alignment_accuracy first: the harness takes a task's first "higher" metric as its primary one,
    # and it is the only quality metric present with every judge (win_rate needs an LLM/reward judge)
    metrics = (
        Metric("alignment_accuracy", True, "held-out pairs where the implicit reward log pi/ref ranks chosen first "
               "(ties = 1/2; per pair: the CI's unit)"),
        Metric("win_rate", True, "judge win rate of samples vs the chosen response (ties = 1/2); needs a "
               "pairwise LLM or pointwise judge"),
        Metric("similarity_to_chosen", True, "offline fallback: MiniLM cosine similarity to the chosen response"),
        Metric("closer_to_chosen", True, "offline fallback: fraction of samples more similar to chosen than rejected"),
        Metric("token_entropy", None, "mean per-token predictive entropy of the policy, nats"),
        Metric("distinct_1", True, "unique unigrams / unigrams over all samples"),
        Metric("distinct_2", True, "unique bigrams / bigrams over all samples"),
    )
    sampling = Sampling(max_new_tokens=128, temperature=1.0, top_p=1.0, n=1, stop=("\n\nHuman:",))
    preference_mode = "dataset"
    judge_hint = "Prefer the response that is more helpful to the human while staying harmless and honest."
    options = {
        "subset": ("", "HH subset folder (harmless-base, helpful-base, ...); empty = all available"),
        "eval_fraction": (0.1, "share of records held out for eval when there is no train file"),
        "strict": (False, "raise on the first malformed record instead of skipping and reporting it"),
        "max_eval_pairs": (256, "held-out pairs teacher-forced for alignment_accuracy when no limit is given"),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.problems: list[DataError] = []
        self._cache: dict[str, list[PreferencePair]] = {}
        self._parsed_files: dict[Path, list[PreferencePair]] = {}

    @classmethod
    def default_judge(cls) -> str:
        return "embedding"

    # -- loading ------------------------------------------------------------------------------
    def _local_files(self) -> dict[str, list[Path]]:
        root = self.local_path()
        subsets = [root / self.subset] if self.subset else sorted(p for p in root.iterdir() if p.is_dir())
        files: dict[str, list[Path]] = {"train": [], "test": []}
        for folder in subsets:
            for split in files:
                for name in (f"{split}.jsonl", f"{split}.jsonl.gz"):
                    path = folder / name
                    # an un-fetched Git LFS pointer is a ~130-byte text file: not data
                    if path.exists() and path.stat().st_size > 200:
                        files[split].append(path)
        if not files["test"] and not files["train"]:
            raise TaskError(f"hh: no {{train,test}}.jsonl[.gz] under {root}"
                            f"{'/' + self.subset if self.subset else '/<subset>'}")
        return files

    def _parse(self, records: Iterator[tuple[int, Any]], origin: str, id_prefix: str) -> list[PreferencePair]:
        pairs = []
        for line_no, row in records:
            try:
                if isinstance(row, DataError):
                    raise row
                if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
                    raise DataError(origin, line_no, "record needs fields 'chosen' and 'rejected'")
                try:
                    prompt, chosen, rejected = split_transcript(row["chosen"], row["rejected"])
                except ValueError as exc:
                    raise DataError(origin, line_no, str(exc)) from None
            except DataError as problem:
                if self.strict:
                    raise DataError(problem.path, problem.line, f"{problem.reason}; fix or delete this record, or "
                                    "set task_options.hh.strict=false to skip malformed records (the run record "
                                    "counts them)") from None
                self.problems.append(problem)
                continue
            pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected,
                                        id=f"{id_prefix}:{line_no}", meta={"line": line_no}))
        return pairs

    def _pairs(self, split: str) -> list[PreferencePair]:
        if split in self._cache:
            return self._cache[split]
        kind = self.resolve_source()
        before = len(self.problems)
        if kind == "hub":
            ds = self.load_hub(HUB_ID, data_dir=self.subset or None, split=split)
            origin = f"{HUB_ID}{'/' + self.subset if self.subset else ''}[{split}]"
            pairs = self._parse(((i + 1, row) for i, row in enumerate(ds)), origin, f"{split}")
            self._note_hub(HUB_ID, f"subset={self.subset or 'all'} split={split}", ds)
        else:
            files = self._local_files()
            own = files[split]
            held_out_split = not files["train"]  # only test files: carve train and eval out of them
            if held_out_split:
                own = files["test"]
            pairs = []
            for path in own:
                if path not in self._parsed_files:  # parse each file once: train and eval share it
                    rel = f"{path.parent.name}/{path.name}"
                    self._parsed_files[path] = self._parse(read_jsonl(path), str(path), rel)
                pairs.extend(self._parsed_files[path])
            if held_out_split:
                keep_eval = split == "test"
                pairs = [p for p in pairs if (stable_fraction(p.prompt) < self.eval_fraction) == keep_eval]
            self._note_source(SourceUsed(
                "local", str(self.local_path()),
                ", ".join(f"{p.parent.name}/{p.name}" for p in own)
                + (f" (hash split: eval_fraction={self.eval_fraction})" if held_out_split else ""),
                file_fingerprint(own)))
        new = [p for p in self.problems[before:] if (p.path, p.line) not in _REPORTED]
        if new:  # every record once per process: each stage builds its own task and parses the same files
            _REPORTED.update((p.path, p.line) for p in new)
            shown = "; ".join(str(p) for p in new[:3])
            warnings.warn(f"hh: skipped {len(new)} malformed record(s): {shown}{' ...' if len(new) > 3 else ''} "
                          "(task_options.hh.strict=true stops at the first instead)", stacklevel=2)
        self._cache[split] = pairs
        return pairs

    # -- data the harness asks for -----------------------------------------------------------
    def preference_data(self, limit: int | None = None) -> list[PreferencePair]:
        return limit_list(self._pairs("train"), limit)

    def sft_data(self, limit: int | None = None) -> list[SFTExample]:
        """Prompt -> chosen response (the DPO paper's "Preferred-FT" SFT on HH)."""
        return [SFTExample(prompt=p.prompt, completion=p.chosen, id=p.id)
                for p in limit_list(self._pairs("train"), limit)]

    def train_prompts(self, limit: int | None = None) -> list[Prompt]:
        return [Prompt(id=p.id, text=p.prompt, reference=p.chosen, meta={"rejected": p.rejected})
                for p in limit_list(self._pairs("train"), limit)]

    def eval_pairs(self, limit: int | None = None) -> list[PreferencePair]:
        return limit_list(self._pairs("test"), self.max_eval_pairs if limit is None else limit)

    def eval_prompts(self, limit: int | None = None) -> list[Prompt]:
        return [Prompt(id=p.id, text=p.prompt, reference=p.chosen,
                       meta={"rejected": p.rejected, "messages": dialogue_turns(p.prompt)})
                for p in limit_list(self._pairs("test"), limit)]

    def skipped_records(self) -> list[DataError]:
        return list(self.problems)

    def malformed_report(self) -> list[dict[str, Any]]:
        return [{"file": p.path, "line": p.line, "reason": p.reason} for p in self.problems]

    # -- scoring ------------------------------------------------------------------------------
    def score(self, samples: Sequence[Sample], pair_logps: Sequence[PairLogps] | None = None) -> Scores:
        if not samples:
            raise TaskError("hh: no samples to score")
        by_id = {p.id: p for p in self._pairs("test")}
        missing_ids = sorted({s.prompt_id for s in samples if s.prompt_id not in by_id and s.reference is None})
        if missing_ids:
            raise TaskError(f"hh: samples for unknown prompt ids {missing_ids[:5]} without a reference")
        chosen = [s.reference if s.reference is not None else by_id[s.prompt_id].chosen for s in samples]
        prompts = [s.prompt for s in samples]
        completions = [s.completion for s in samples]
        per_sample: list[dict[str, Any]] = [{"prompt_id": s.prompt_id, "index": s.index} for s in samples]
        metrics: dict[str, float] = {}
        missing: dict[str, str] = {}
        judge = self.judge
        sims = judge_against_reference(judge, prompts, completions, chosen, per_sample, metrics, missing,
                                       similarity_metric="similarity_to_chosen", reference_name="the chosen response")
        if sims is not None and all(s.prompt_id in by_id for s in samples):  # the embedding judge
            sims_r = judge.similarity(completions, [by_id[s.prompt_id].rejected for s in samples])
            closer = [float(a > b) for a, b in zip(sims, sims_r)]
            metrics["closer_to_chosen"] = mean(closer)
            for row, value in zip(per_sample, closer):
                row["closer_to_chosen"] = value
        notes: dict[str, str] = {}
        per_pair = alignment_scores(pair_logps, metrics, missing, notes)
        entropy, how = mean_token_entropy(samples)
        if entropy is None:
            missing["token_entropy"] = how
        else:
            metrics["token_entropy"] = entropy
            for row, value in zip(per_sample, token_entropy_per_sample(samples, how)):
                if value is not None:
                    row["token_entropy"] = value
        for n in (1, 2):
            value = distinct_n(completions, n)
            if value is not None:
                metrics[f"distinct_{n}"] = value
        details: dict[str, Any] = {"judge": judge.identity(), "judge_stats": judge.stats(),
                                   "token_entropy_estimator": how, "n_samples": len(samples),
                                   "n_pairs": len(pair_logps or [])}
        if missing:
            details["missing"] = missing
        if notes:
            details["notes"] = notes
        if self.problems:
            details["malformed_records"] = len(self.problems)
        return Scores(metrics=metrics, per_sample=per_sample, details=details, per_pair=per_pair)
