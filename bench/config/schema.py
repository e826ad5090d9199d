"""The suite schema (pydantic v2): what a suite YAML may say, with defaults and per-field help.

The training sections ARE the trainer's own configs (:mod:`bench.train.config`): ``train`` is a
:class:`PreferenceTrainConfig`, ``sft`` an :class:`SFTConfig` plus ``enabled``/``max_examples``.
Sections that belong to a plug-in are validated by that plug-in: ``generation.backend_options`` by
the backend (``bench.backends``), ``preparation.<step>`` by the preparation step
(``bench.stages.prep``), method hyperparameters by the method. The schema names no method.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, PrivateAttr, field_validator, model_validator

from bench.hashing import plain, stable_hash
from bench.train.config import PreferenceTrainConfig, Schema, SFTConfig, added_field

RESERVED_METHOD_KEYS = ("train", "generation", "label", "seeds")


class ModelConfig(Schema):
    """The base policy (and reference before SFT). ``id`` is resolved by ``bench.models.resolve_model``."""

    id: str = Field("smollm2-135m", description="short model id, hub repo id, or local directory")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="weights dtype for training (sampling dtype is generation.dtype)")
    revision: str | None = Field(None, description="hub revision (online only)")


class SuiteSection(BaseModel):
    """A trainer config as a suite section: the fields in ``filled_by_suite`` come from elsewhere in
    the suite (``model``/``seed`` from ``models``/``seeds``), so the section may not set them and
    they are not part of its stage keys."""

    filled_by_suite: ClassVar[dict[str, str]] = {"model": "models", "seed": "seeds"}

    @model_validator(mode="before")
    @classmethod
    def _not_filled_by_suite(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, source in cls.filled_by_suite.items():
                if key in data:
                    raise ValueError(f"{key}: set by the suite (from `{source}`); remove it from this section")
        return data

    def semantic(self) -> dict[str, Any]:
        return {k: v for k, v in super().semantic().items() if k not in self.filled_by_suite}


class SuiteTrainConfig(SuiteSection, PreferenceTrainConfig):
    """A suite's ``train:`` section: the trainer's preference config (``model``/``seed`` come from the suite)."""


class SuiteSFTConfig(SuiteSection, SFTConfig):
    """Optional supervised fine-tuning of the base model on the task's SFT data (the reference).

    The trainer's SFT config plus ``enabled`` and ``max_examples``; the prompt format (chat template,
    max prompt length) is the suite's ``train`` section's, so SFT, training, sampling and KL agree."""

    filled_by_suite: ClassVar[dict[str, str]] = {"model": "models", "seed": "seeds",
                                                 "chat_template": "train.chat_template",
                                                 "max_prompt_length": "train.max_prompt_length"}
    enabled: bool = Field(False, description="run SFT before preference optimisation")
    max_examples: int | None = Field(None, ge=1, description="cap on SFT examples (null = all)")

    def trainer_config(self, model: str, seed: int, prompt_fields: dict[str, Any]) -> SFTConfig:
        fields = {k: v for k, v in self.all_fields().items() if k not in ("enabled", "max_examples")}
        return SFTConfig.model_validate({**fields, **prompt_fields, "model": model, "seed": seed})


DRAWS_DESCRIPTION = ("how the hf backend seeds its draws: per_row = every (prompt, sample) row its own stream, so the "
    "samples do not depend on backend_options.batch_size or on which rows share a batch (up to float32 rounding "
    "of differently batched matmuls); per_batch = one stream per batch of rows (before 2026-12; pinned by suites "
    "whose committed results were drawn so). vLLM and servers seed each request either way")


class PrefDataConfig(Schema):
    """How preference pairs are obtained.

    ``dataset``: the task's own (chosen, rejected) pairs. ``sample_and_judge``: sample
    ``samples_per_prompt`` completions per train prompt from the reference, score them with the
    task's judge, keep best-vs-worst pairs whose score margin exceeds ``min_margin`` (``pairs: all``:
    every pair of samples, the higher-scored one chosen, as the DPO paper's IMDB experiment).
    ``pairwise_ranking``: rank the samples with the task's pairwise judge (BCR's iterative ranking).
    """

    source: Literal["task_default", "dataset", "sample_and_judge", "pairwise_ranking"] = "task_default"
    prompts: int | None = Field(128, ge=1, description="train prompts (or pairs for `dataset`); null = all")
    samples_per_prompt: int = Field(4, ge=2)
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, ge=0)
    min_margin: float = Field(0.2, ge=0, description="minimum judge-score margin between chosen and rejected")
    pairs: Literal["best_worst", "all"] = added_field(
        "best_worst", description="sample_and_judge: per prompt the best vs the worst sample, or all K(K-1)/2 "
        "pairs ordered by score (ties and gaps <= min_margin dropped)")
    data_seed: int = Field(0, description="seed of the data draw and of the reference samples (shared by every run)")
    draws: Literal["per_row", "per_batch"] = added_field("per_row", earlier="per_batch",
                                                         description=DRAWS_DESCRIPTION)

    @model_validator(mode="after")
    def _pairs_of_judged_samples(self) -> "PrefDataConfig":
        if self.pairs != "best_worst" and self.source in ("dataset", "pairwise_ranking"):
            raise ValueError(f"pairs: {self.pairs} pairs the judged samples of source sample_and_judge, "
                             f"not source {self.source}")
        return self


class GenerationConfig(Schema):
    """Evaluation sampling on held-out prompts (shared by the reference row and every policy)."""

    backend: str = Field("auto", description="a generation backend (`pobench backends`), or auto = vllm when "
                         "importable and, on a CPU, for stages of >= 32k sampled tokens (its ~29 s start-up is "
                         "repaid there), else hf")
    backend_options: dict[str, Any] = Field(default_factory=dict, description="the backend's own options, "
                                            "validated by it (hf: batch_size; openai: base_url, serve_python, "
                                            "api_key); they do not change what is sampled (hf's batch_size: with draws per_row)")
    prompts: int | None = Field(128, ge=1, description="held-out eval prompts; null = all")
    samples_per_prompt: int = Field(2, ge=1)
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, ge=0)
    dtype: Literal["bfloat16", "float32", "float16", "auto"] = "bfloat16"
    draws: Literal["per_row", "per_batch"] = added_field("per_row", earlier="per_batch",
                                                         description=DRAWS_DESCRIPTION)

    def semantic(self) -> dict[str, Any]:
        """What changes the samples: everything but the backend's own options (batch size, server address)."""
        return self.model_dump(exclude={"backend_options"})

    @model_validator(mode="after")
    def _backend(self) -> "GenerationConfig":
        from bench.backends import BackendError, available_backends, validate_backend_options

        allowed = ["auto", *available_backends()]
        if self.backend not in allowed:
            raise ValueError(f"backend: {self.backend!r} is not one of {allowed}")
        try:
            options = validate_backend_options(self.backend, self.backend_options)
        except BackendError as exc:
            raise ValueError(f"backend_options.{exc}") from None
        object.__setattr__(self, "backend_options", options)  # defaults filled in, no re-validation
        return self


class ScoreConfig(Schema):
    kl: bool = Field(True, description="KL(policy || reference) per sequence by teacher forcing")
    kl_budget: float = Field(5.0, ge=0, description="flag runs whose mean KL exceeds this many nats/seq")
    kl_batch_size: int = Field(32, ge=1)
    kl_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="teacher-forcing weights dtype (log-softmax always in float32)")
    kl_source: Literal["sampler", "teacher_forcing"] = Field(
        "sampler", description="sampler: the policy log-probs the backend returned with the sampled token ids, "
        "only the reference runs (samples without them are teacher-forced); teacher_forcing: both models "
        "re-score the decoded text")


class EvalConfig(Schema):
    """Model-evaluation tasks (``eval_tasks``): how every trained policy and the reference are evaluated."""

    limit: int | None = Field(None, ge=1, description="items per benchmark (e.g. per lm-eval task); null = all. "
                              "Limited results are not comparable with published numbers")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available, else cpu")
    gen_kwargs: dict[str, Any] = Field(default_factory=dict, description="generation overrides for evaluators "
                                       "that take them (lm-eval gen_kwargs, e.g. {max_gen_toks: 64}); {} = each "
                                       "benchmark's own")


class ReportConfig(Schema):
    """How the leaderboard compares methods: at matched KL, against a baseline, with a seed-aware bootstrap."""

    kl_levels: list[float] | None = Field(None, description="KL levels (nats/seq) at which reward is compared "
                                          "(reward@KL=k); null = 3 levels inside the range every method reaches")
    baseline_method: str | None = Field("dpo", description="contrasts of every configuration against this "
                                        "method at matched KL (Holm-adjusted); null = none")
    bootstrap_resamples: int = Field(2000, ge=100, description="hierarchical bootstrap resamples (seeds, then "
                                     "prompts shared by every method)")

    @field_validator("kl_levels")
    @classmethod
    def _positive_levels(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or any(k <= 0 for k in value)):
            raise ValueError("give positive KL levels (nats/seq), or null for the default")
        return sorted(value) if value else value


class ExecutorConfig(Schema):
    kind: Literal["local", "ray"] = "local"
    jobs: int = added_field(1, ge=1, description="local: stages run at once, each in a worker process of its own "
                            "(1 = one after the other, in this process); a stage starts when its inputs are done")
    threads: int | None = added_field(None, ge=1, description="local with jobs > 1: torch threads of every stage "
                                      "(null = the machine's cores / jobs). Fixed per stage, not by what else runs: "
                                      "the thread count changes float32 rounding, so results depend on it")
    address: str | None = Field(None, description="ray: cluster address (null = start a local cluster)")
    num_cpus: float = Field(1.0, ge=0, description="ray: CPUs requested per grid cell")
    num_gpus: float = Field(0.0, ge=0, description="ray: GPUs requested per grid cell")


class PaperValue(Schema):
    """A published number shown as its own labelled leaderboard row (never mixed with ours)."""

    method: str = Field(description="row label, e.g. 'dpo (paper)'")
    metric: str = Field(description="metric name as in the leaderboard")
    value: float = Field(description="the published value")
    source: str = Field(description="citation: paper, table")
    task: str | None = Field(None, description="task name (default: the suite's first task)")
    note: str = Field("", description="e.g. 'GPT-2-large, not comparable in scale'")


class RecipeValue(Schema):
    """One setting of a published recipe: the paper's value, the official code's, where pobench's value is
    read from, and why it differs. ``docs/paper_recipes.md`` is generated from these (``pobench recipes``)."""

    setting: str = Field(description="what is set, e.g. 'learning rate'")
    paper: Any = Field(None, description="the value the paper states (null: not stated, or not read here)")
    code: Any = Field(None, description="the official code's value (null: no code, or not read here)")
    field: str | list[str] | None = Field(None, description="dotted path(s) of pobench's value in this suite "
                                          "(models.0.id, train.lr, methods.dpo.beta, methods.sparsepo.train.lr, "
                                          "task_options.imdb.judge, ...); a list is multiplied (batch_size x "
                                          "grad_accum)")
    pobench: Any = Field(None, description="pobench's value in words, where no field holds it")
    note: str = Field("", description="why pobench differs from the paper or the code (required when it does), "
                      "or where a value comes from")

    @model_validator(mode="after")
    def _one_source_of_pobench_value(self) -> "RecipeValue":
        if (self.field is None) == (self.pobench is None):
            raise ValueError(f"{self.setting}: give exactly one of field (a dotted path into this suite) and pobench")
        return self


class Recipe(Schema):
    """The published recipe a paper suite reproduces, setting by setting (validated against the suite)."""

    paper: str = Field(description="citation with the arXiv id and the sections/tables read")
    code: str = Field("", description="the official code: repository and what was read there ('' = none public)")
    values: list[RecipeValue] = Field(description="model, data, optimizer, schedule, lr, batch, epochs, lengths, "
                                      "method hyperparameters, LoRA, evaluation")


class MethodSpec(Schema):
    """One method of the suite: hyperparameter grid plus optional per-method overrides (validated)."""

    name: str
    grid: dict[str, list[Any]]
    train: SuiteTrainConfig
    generation: GenerationConfig
    label: str | None = None
    #: the suite's seeds this method runs with (None: all of them); a subset, so the reference pairs with it
    seeds: list[int] | None = None

    def hyperparameter_points(self) -> list[dict[str, Any]]:
        """The Cartesian product of the grid, in file order (one dict per training run)."""
        points: list[dict[str, Any]] = [{}]
        for key, values in self.grid.items():
            points = [{**p, key: v} for p in points for v in values]
        return points


class SuiteConfig(Schema):
    name: str = Field(description="suite name: a run writes its leaderboard to <work_dir>/results/<name>/ "
                      "(committed ones: results/<name>/)")
    description: str = ""
    models: list[ModelConfig] = Field(default_factory=lambda: [ModelConfig()])
    tasks: list[str] = Field(default_factory=lambda: ["imdb"])
    task_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="task name -> keyword arguments of tasks.get (source, judge, data_dir "
        "and the task's own options)")
    eval_tasks: list[str] = Field(default_factory=list, description="model-evaluation tasks (evaluation = model, "
                                  "e.g. reasoning) run on every trained policy and the reference; their metrics "
                                  "are extra columns")
    transfer_tasks: list[str] = added_field([], description="sample-scored tasks every policy trained on the "
                                            "suite's one training task (and the reference) is also sampled and "
                                            "scored on, as rows of their own (e.g. trained on MBPP pairs, scored "
                                            "on HumanEval); generation and score settings as for the training task")
    methods: dict[str, Any] = Field(default_factory=dict, description="method name -> {hyperparameter: value | "
                                    "[values], train: {...}, generation: {...}, label: ..., seeds: [a subset of "
                                    "the suite's seeds]}")
    reference_row: bool = Field(True, description="add the reference policy as a leaderboard row")
    seeds: list[int] = Field(default_factory=lambda: [0])
    sft: SuiteSFTConfig = Field(default_factory=SuiteSFTConfig)
    prefdata: PrefDataConfig = Field(default_factory=PrefDataConfig)
    preparation: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="options of the preparation steps methods declare "
        "(`pobench methods` shows which), e.g. {tis_weights: {estimator: dpo_contrastive}}")
    train: SuiteTrainConfig = Field(default_factory=SuiteTrainConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    paper_reference: list[PaperValue] = Field(default_factory=list)
    recipe: Recipe | None = added_field(None, description="the published recipe this suite reproduces (paper suites): "
                                        "paper, official code and pobench values per setting, with the reasons for "
                                        "every difference; docs/paper_recipes.md is generated from it")
    work_dir: str | None = Field(None, description="cache of stage outputs (default: $POBENCH_WORK_DIR or ./runs)")
    results_dir: str | None = Field(None, description="where leaderboards go (default: <work_dir>/results/<name>, "
                                    "so a run never replaces the committed results/<name>/ it is checked against; "
                                    "publish with --results-dir results/<name>)")

    # filled by the loader
    _source: str = PrivateAttr("<dict>")
    _method_specs: list[MethodSpec] = PrivateAttr(default_factory=list)

    @field_validator("models", "seeds", "tasks", "eval_tasks", "transfer_tasks", mode="before")
    @classmethod
    def _one_is_a_list(cls, value: Any) -> Any:
        """``models: {id: ...}``, ``seeds: 0`` and ``tasks: imdb`` are lists of one."""
        return [value] if value is not None and not isinstance(value, list) else value

    @property
    def source(self) -> str:
        return self._source

    @property
    def method_specs(self) -> list[MethodSpec]:
        return self._method_specs

    @property
    def scored_tasks(self) -> list[str]:
        """Every task whose samples make leaderboard rows: the training tasks, then the transfer tasks."""
        return [*self.tasks, *self.transfer_tasks]

    def to_dict(self) -> dict[str, Any]:
        """The validated configuration as plain data (what is hashed and stored in manifests)."""
        return plain(self.model_dump(mode="json", exclude={
            "train": set(SuiteTrainConfig.filled_by_suite), "sft": set(SuiteSFTConfig.filled_by_suite)}))

    def hash(self) -> str:
        """What the results depend on: everything but where files go, which executor runs the stages and
        the recipe (documentation of where the values come from)."""
        return stable_hash({k: v for k, v in self.to_dict().items()
                            if k not in ("work_dir", "results_dir", "executor", "recipe")})

    def resolved_work_dir(self) -> Path:
        return Path(self.work_dir or os.environ.get("POBENCH_WORK_DIR") or "runs").expanduser()

    def resolved_results_dir(self) -> Path:
        return Path(self.results_dir) if self.results_dir else self.resolved_work_dir() / "results" / self.name
