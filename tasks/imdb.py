"""IMDB sentiment control (the DPO paper's controlled-sentiment-generation protocol).

Dataset: ``stanfordnlp/imdb`` (Maas et al., ACL 2011) on the hub, the original ``aclImdb`` files
locally (an extracted ``aclImdb/`` folder or ``aclImdb*.tar.gz`` under ``<data_dir>/imdb``), or
built-in review openings written by this project (``tasks/data/imdb_openings.txt``).
Paper: Rafailov et al. 2023, "Direct Preference Optimization", section 6.1.

Prompts are review prefixes of 2-8 words (the built-in openings: 2-12 words, split into train and
eval by explicit sections of the file), or with ``prefix_unit: tokens`` of 2-8 tokens of
``prefix_tokenizer`` (the DPO paper's protocol, GPT-2 BPE); the policy continues the review and the reward is the
sentiment of prefix + continuation. Preference pairs are generated: k samples per prompt from the
reference, scored by the sentiment judge, best vs worst when their gap exceeds ``margin``.
Metrics: mean reward, KL(pi||ref) per sequence, distinct-1/2, mean token entropy.
Tags: sentiment, generated-preferences, kl-frontier.
"""
from __future__ import annotations

import functools
import json
import random
import tarfile
from pathlib import Path
from typing import Any, Sequence

from tasks.base import (DataError, DataSource, Metric, PairLogps, Prompt, Sample, Sampling, Scores,
                        SFTExample, SourceUsed, Task, TaskError, builtin_data_dir, file_fingerprint,
                        limit_list, mean)
from tasks.judges import SentimentJudge, clean_review
from tasks.metrics import distinct_n, mean_token_entropy

HUB_ID = "stanfordnlp/imdb"
OPENINGS_FILE = "imdb_openings.txt"
LABELLED_SAMPLE = "imdb_test_sample1000.derived.jsonl"

Review = tuple[str, str, int]  # (id, raw text, label 1=pos 0=neg)


def _label_of_path(name: str) -> int | None:
    parts = name.split("/")
    return {"pos": 1, "neg": 0}.get(parts[-2]) if len(parts) >= 2 else None


@functools.lru_cache(maxsize=4)
def read_aclimdb(root: str, split: str) -> tuple[Review, ...]:
    """Reviews of one split from an extracted ``aclImdb`` folder or an ``aclImdb*.tar.gz`` in ``root``.

    Ids are ``<split>/<pos|neg>/<file stem>`` (the file stem is ``<id>_<rating>``), sorted."""
    base = Path(root)
    reviews: list[Review] = []
    folder = base / "aclImdb" / split
    if folder.is_dir():
        for label_name, label in (("neg", 0), ("pos", 1)):
            for path in sorted((folder / label_name).glob("*.txt")):
                try:
                    text = path.read_text(encoding="utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(path, None, f"not UTF-8 text (byte {exc.start + 1}); save the review as UTF-8 "
                                    "or remove it") from None
                except OSError as exc:
                    raise DataError(path, None, f"cannot read the review ({exc.strerror or exc})") from None
                reviews.append((f"{split}/{label_name}/{path.stem}", text, label))
        return tuple(sorted(reviews))
    archives = sorted(base.glob("aclImdb*.tar.gz"))
    if not archives:
        raise TaskError(f"no aclImdb folder or aclImdb*.tar.gz in {base}")
    for archive in archives:
        with tarfile.open(archive) as tar:
            for member in tar:
                name = member.name
                if not (member.isfile() and name.endswith(".txt") and f"/{split}/" in f"/{name}"):
                    continue
                label = _label_of_path(name)
                if label is None or name.split("/")[-2] not in ("pos", "neg"):
                    continue
                handle = tar.extractfile(member)
                try:
                    text = handle.read().decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{archive}::{name}", None, f"not UTF-8 ({exc})") from exc
                stem = name.split("/")[-1][:-4]
                reviews.append((f"{split}/{name.split('/')[-2]}/{stem}", text, label))
    return tuple(sorted(reviews))


def review_prefix(text: str, key: str, seed: int, min_words: int = 2, max_words: int = 8) -> str:
    """The first k words of a review, k uniform in [min_words, max_words] drawn from (seed, key)."""
    words = clean_review(text).split()
    k = random.Random(f"{seed}:{key}").randint(min_words, max_words)
    return " ".join(words[:k])


def review_token_prefix(text: str, key: str, seed: int, tokenizer: Any, min_tokens: int = 2,
                        max_tokens: int = 8) -> str:
    """The text of the first k tokens of the (cleaned) review, k uniform in [min_tokens, max_tokens] drawn
    from (seed, key): a prefix of the review's text that may end inside a word (the DPO paper's IMDB
    prompts). A cut inside a multi-byte character is moved back one token at a time until the decoded
    text is a prefix of the review."""
    clean = clean_review(text)
    ids = tokenizer(clean, add_special_tokens=False)["input_ids"]
    k = min(random.Random(f"{seed}:{key}").randint(min_tokens, max_tokens), len(ids))
    while k > 0:
        prefix = tokenizer.decode(ids[:k], clean_up_tokenization_spaces=False)
        if clean.startswith(prefix):
            return prefix
        k -= 1
    return ""


@functools.lru_cache(maxsize=2)
def prefix_tokenizer_for(name: str) -> Any:
    """``gpt2``: the GPT-2 BPE shipped with pobench (offline; GPT-2-large's tokenizer); else a tokenizer
    id or directory for ``transformers.AutoTokenizer``."""
    if name == "gpt2":
        from bench.models import gpt2_tokenizer

        return gpt2_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _opening_key(text: str) -> str:
    return text.rstrip(" ,:;.?!").lower()


def read_openings(path: str) -> dict[str, tuple[str, ...]]:
    """The ``[train]`` and ``[eval]`` sections of the built-in openings file.

    ``#`` lines and blank lines are skipped; an opening outside a section, an unknown section or an
    opening given twice (case-insensitive, trailing punctuation ignored) is a DataError."""
    sections: dict[str, list[str]] = {"train": [], "eval": []}
    seen: dict[str, int] = {}
    current = None
    with open(path, encoding="utf-8") as handle:
        for line_no, raw in enumerate(handle, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("[") and line.endswith("]"):
                current = line[1:-1].strip()
                if current not in sections:
                    raise DataError(path, line_no, f"unknown section {line!r} (expected [train] or [eval])")
                continue
            if current is None:
                raise DataError(path, line_no, "opening before any [train] or [eval] section")
            key = _opening_key(line)
            if key in seen:
                raise DataError(path, line_no, f"opening {line!r} repeats line {seen[key]}")
            seen[key] = line_no
            sections[current].append(line)
    return {name: tuple(lines) for name, lines in sections.items()}


class IMDB(Task):
    name = "imdb"
    version = "2"  # 2: 930 built-in openings in explicit [train]/[eval] sections (was 148, alternating lines)
    description = "continue IMDB review prefixes with positive sentiment (DPO paper protocol)"
    paper = "Rafailov et al. 2023 (DPO), sec. 6.1"
    sources = (
        DataSource("hub", HUB_ID, "train split -> SFT and preference prompts, test split -> eval prompts",
                   "train/test"),
        DataSource("local", "imdb", "original aclImdb files: <data_dir>/imdb/aclImdb/ or aclImdb*.tar.gz "
                   "(with only the test split, it is split 50/50 into eval and train prompts)", "test[/train]"),
        DataSource("builtin", f"tasks/data/{OPENINGS_FILE}", "930 movie-review openings written by pobench, "
                   "461 train / 469 eval, no text shared and none a prefix of the other split's "
                   "(prompts only: no SFT data)", "[train] / [eval] sections of the file"),
    )
    metrics = (
        Metric("reward", True, "mean sentiment reward of prefix + continuation (judge's scale)"),
        Metric("kl", False, "KL(pi||ref) per sequence, nats: sum over tokens of log pi - log ref"),
        Metric("distinct_1", True, "unique unigrams / unigrams over all samples"),
        Metric("distinct_2", True, "unique bigrams / bigrams over all samples"),
        Metric("token_entropy", None, "mean per-token predictive entropy of the policy, nats"),
    )
    sampling = Sampling(max_new_tokens=32, temperature=1.0, top_p=1.0, n=1)
    preference_mode = "generated"
    judge_hint = "Prefer the review text that is more positive about the movie."
    options = {
        "margin": (0.2, "minimum reward gap for a best-vs-worst pair"),
        "seed": (0, "seed of the prompt shuffle and of the prefix lengths"),
        "min_words": (2, "shortest review prefix, words"),
        "max_words": (8, "longest review prefix, words"),
        "prefix_unit": ("words", "review prefixes measured in words (min_words..max_words) or tokens "
                        "(min_tokens..max_tokens of prefix_tokenizer, the DPO paper's); reviews only, not the "
                        "built-in openings"),
        "min_tokens": (2, "shortest review prefix, tokens (prefix_unit: tokens)"),
        "max_tokens": (8, "longest review prefix, tokens (prefix_unit: tokens)"),
        "prefix_tokenizer": ("gpt2", "tokenizer that counts prefix tokens: gpt2 (the GPT-2 BPE, offline) or a "
                             "tokenizer id / directory"),
        "sft_words": (64, "SFT completions are the review continued for at most this many words"),
        "judge_accuracy_reviews": (None, "labelled reviews used to report the judge's accuracy with every score "
                                   "(None: 1000 for VADER, 200 for a HF classifier; 0: off)"),
    }

    PREFIX_UNITS = ("words", "tokens")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.prefix_unit not in self.PREFIX_UNITS:
            raise TaskError(f"imdb: prefix_unit must be one of {list(self.PREFIX_UNITS)}, got {self.prefix_unit!r}")
        low, high = ((self.min_words, self.max_words) if self.prefix_unit == "words"
                     else (self.min_tokens, self.max_tokens))
        if not 1 <= low <= high:
            raise TaskError(f"imdb: prefix lengths must satisfy 1 <= min <= max ({self.prefix_unit}), "
                            f"got {low}..{high}")

    @classmethod
    def default_judge(cls) -> str:
        return "sentiment:auto"

    def _prefix(self, text: str, key: str) -> str:
        if self.prefix_unit == "tokens":
            return review_token_prefix(text, key, self.seed, prefix_tokenizer_for(self.prefix_tokenizer),
                                       self.min_tokens, self.max_tokens)
        return review_prefix(text, key, self.seed, self.min_words, self.max_words)

    # -- loading ------------------------------------------------------------------------------
    def _reviews(self, split: str) -> list[Review]:
        kind = self.resolve_source()
        if kind == "hub":
            cache = self.__dict__.setdefault("_hub_reviews", {})
            if split not in cache:  # SFT, prompts and judge accuracy all read the same split
                ds = self.load_hub(HUB_ID, split=split)
                cache[split] = [(f"{split}/{i}", row["text"], int(row["label"])) for i, row in enumerate(ds)]
                self._note_hub(HUB_ID, f"split={split}", ds)
            return cache[split]
        if kind == "local":
            root = self.local_path()
            test = list(read_aclimdb(str(root), "test"))
            has_train = (root / "aclImdb" / "train").is_dir()
            files = sorted(root.glob("aclImdb*.tar.gz"))
            self._note_source(SourceUsed("local", str(root), "aclImdb test" + (" + train" if has_train else
                                         " (split 50/50 into eval/train prompts)"),
                                         file_fingerprint(files) if files else ""))
            if has_train:
                return test if split == "test" else list(read_aclimdb(str(root), "train"))
            shuffled = test[:]
            random.Random(self.seed).shuffle(shuffled)
            half = len(shuffled) // 2
            return shuffled[:half] if split == "test" else shuffled[half:]
        raise TaskError("built-in IMDB material has openings only, not reviews")

    def _openings(self, part: str) -> list[Prompt]:
        """The built-in openings of one section (``train`` or ``eval``) of ``imdb_openings.txt``, in file order."""
        path = builtin_data_dir() / OPENINGS_FILE
        sections = read_openings(str(path))
        self._note_source(SourceUsed("builtin", str(path), "review openings written by pobench",
                                     file_fingerprint([path])))
        return [Prompt(id=f"opening/{part}/{i}", text=text) for i, text in enumerate(sections[part])]

    def _prompts(self, split: str, limit: int | None) -> list[Prompt]:
        if self.resolve_source() == "builtin":
            return limit_list(self._openings("eval" if split == "test" else "train"), limit)
        reviews = self._reviews(split)
        order = list(range(len(reviews)))
        random.Random(f"{self.seed}:{split}").shuffle(order)
        prompts = []
        for i in order:
            rid, text, label = reviews[i]
            prefix = self._prefix(text, rid)
            if prefix:
                prompts.append(Prompt(id=rid, text=prefix, meta={"label": label}))
            if limit is not None and len(prompts) >= limit:
                break
        return prompts

    def eval_prompts(self, limit: int | None = None) -> list[Prompt]:
        return self._prompts("test", limit)

    def prompt_count(self, split: str) -> int | None:
        """The built-in openings' section sizes (461 train / 469 eval); review counts are known only once read."""
        if self.resolve_source() != "builtin":
            return None
        return len(read_openings(str(builtin_data_dir() / OPENINGS_FILE))["eval" if split == "eval" else "train"])

    def train_prompts(self, limit: int | None = None) -> list[Prompt]:
        return self._prompts("train", limit)

    def sft_data(self, limit: int | None = None) -> list[SFTExample]:
        """Review prefix -> the review's own continuation (the DPO paper fine-tunes on IMDB reviews)."""
        if self.resolve_source() == "builtin":
            raise TaskError("imdb: the built-in openings have no SFT data; use the hub or --data-dir "
                            "with aclImdb files, or skip the SFT stage")
        reviews = {r[0]: r[1] for r in self._reviews("train")}
        examples = []
        for prompt in self._prompts("train", limit):
            if self.prefix_unit == "tokens":  # the prefix may end inside a word: continue from its last character
                after = clean_review(reviews[prompt.id])[len(prompt.text):]
                rest = after.split()[: self.sft_words]
                completion = (" " if after[:1].isspace() else "") + " ".join(rest)
            else:
                rest = clean_review(reviews[prompt.id]).split()[len(prompt.text.split()):][: self.sft_words]
                completion = " " + " ".join(rest)
            if rest:
                examples.append(SFTExample(prompt=prompt.text, completion=completion, id=prompt.id))
        return examples

    # -- labelled reviews: how good is the reward? ---------------------------------------------
    def labelled_reviews(self, limit: int | None = 1000) -> tuple[list[str], list[int], str]:
        """(texts, labels, where from) for measuring the sentiment scorer's accuracy.

        Prefers the 1,000-review balanced sample ``imdb/imdb_test_sample1000.derived.jsonl`` in the
        data dir; otherwise a seeded balanced draw from the test split of the resolved source."""
        if self.local_root() is not None and self.resolve_source() == "local":
            sample = self.local_path(LABELLED_SAMPLE)
            if sample.exists():
                texts, labels = [], []
                with open(sample, encoding="utf-8") as handle:
                    for line_no, line in enumerate(handle, 1):
                        try:
                            row = json.loads(line)
                            texts.append(row["text"])
                            labels.append(int(row["label"]))
                        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                            raise DataError(sample, line_no, f"bad labelled review row: {exc!r}") from exc
                return limit_list(texts, limit), limit_list(labels, limit), str(sample)
        reviews = self._reviews("test")
        rng = random.Random(self.seed)
        pos = [r for r in reviews if r[2] == 1]
        neg = [r for r in reviews if r[2] == 0]
        per_class = (limit or len(reviews)) // 2
        chosen = rng.sample(neg, min(per_class, len(neg))) + rng.sample(pos, min(per_class, len(pos)))
        return [r[1] for r in chosen], [r[2] for r in chosen], str(self.source_used.location)

    def judge_accuracy(self, limit: int | None = 1000) -> dict[str, Any]:
        judge = self.judge
        if not isinstance(judge, SentimentJudge):
            raise TaskError(f"imdb: judge accuracy needs a sentiment judge, got {judge!r}")
        texts, labels, origin = self.labelled_reviews(limit)
        return {"judge": judge.identity(), "reviews": origin, **judge.accuracy(texts, labels)}

    def _judge_accuracy_for_record(self) -> dict[str, Any]:
        """The judge's accuracy on labelled reviews, measured once per task object for the run record."""
        if getattr(self, "_accuracy_record", None) is None:
            n = self.judge_accuracy_reviews
            if n is None:
                n = 1000 if getattr(self.judge, "model", None) == "vader" else 200
            if n == 0:
                self._accuracy_record = {"skipped": "judge_accuracy_reviews=0"}
            else:
                try:
                    self._accuracy_record = self.judge_accuracy(limit=n)
                except TaskError as exc:
                    self._accuracy_record = {"unavailable": str(exc)}
        return self._accuracy_record

    # -- scoring ------------------------------------------------------------------------------
    def score(self, samples: Sequence[Sample], pair_logps: Sequence[PairLogps] | None = None) -> Scores:
        if not samples:
            raise TaskError("imdb: no samples to score")
        rewards = self.reward(samples)
        kls = [s.sequence_kl() for s in samples]
        per_sample = [{"prompt_id": s.prompt_id, "index": s.index, "reward": r, "kl": k,
                       "words": len(s.completion.split())} for s, r, k in zip(samples, rewards, kls)]
        metrics: dict[str, float] = {"reward": mean(rewards)}
        missing: dict[str, str] = {}
        kl = mean(k for k in kls if k is not None)
        if kl is not None and all(k is not None for k in kls):
            metrics["kl"] = kl
        else:
            missing["kl"] = "samples lack logprobs/ref_logprobs (or kl) for every sample"
        completions = [s.completion for s in samples]
        for n in (1, 2):
            value = distinct_n(completions, n)
            if value is None:
                missing[f"distinct_{n}"] = "no n-grams in completions"
            else:
                metrics[f"distinct_{n}"] = value
        entropy, how = mean_token_entropy(samples)
        if entropy is None:
            missing["token_entropy"] = how
        else:
            metrics["token_entropy"] = entropy
        details = {"judge": self.judge.identity(), "judge_accuracy": self._judge_accuracy_for_record(),
                   "token_entropy_estimator": how, "n_samples": len(samples)}
        if missing:
            details["missing"] = missing
        return Scores(metrics=metrics, per_sample=per_sample, details=details)
