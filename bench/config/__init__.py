"""Suite configuration: the schema (:mod:`bench.config.schema`) and the loader with command-line
overrides (:mod:`bench.config.loader`); keys are hashed by :mod:`bench.hashing`.

    suite = load_suite("default", ["train.steps=5", "methods=dpo,ipo", "seeds=[0,1]"])
"""
from bench.config.loader import (COMMON_TASK_ARGUMENTS, ConfigError, apply_override, deep_update, effective_section,
                                 field_help, load_raw, load_suite, model_evaluation_tasks, parse_override,
                                 resolve_suite_path, validate)
from bench.config.schema import (EvalConfig, ExecutorConfig, GenerationConfig, MethodSpec, ModelConfig, PaperValue,
                                 PrefDataConfig, ScoreConfig, SuiteConfig, SuiteSFTConfig, SuiteTrainConfig)
from bench.hashing import stable_hash

__all__ = ["ConfigError", "SuiteConfig", "SuiteTrainConfig", "SuiteSFTConfig", "ModelConfig", "PrefDataConfig",
           "GenerationConfig", "ScoreConfig", "EvalConfig", "ExecutorConfig", "PaperValue", "MethodSpec",
           "load_suite", "load_raw", "validate", "parse_override", "apply_override", "deep_update",
           "effective_section", "field_help", "resolve_suite_path", "model_evaluation_tasks",
           "COMMON_TASK_ARGUMENTS", "stable_hash"]
