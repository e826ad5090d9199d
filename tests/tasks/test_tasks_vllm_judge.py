"""The pairwise LLM judge against a real `vllm serve` (SmolLM2-135M-Instruct, chat endpoint).

Runs where vLLM is importable (`tox -e vllm -- tests/tasks/test_tasks_vllm_judge.py`) or where
POBENCH_VLLM_PYTHON names the python of an environment that has it (e.g. .venv-vllm/bin/python);
skips elsewhere. Checks the mechanics end to end on a real server (chat template applied by vLLM,
answers parsed, both orders asked, counters consistent), not the quality of a 135M judge: measured
here, SmolLM2-135M answers by position (every comparison's orders disagree -> ties), which is why
the judge asks both orders.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

VLLM_PYTHON = os.environ.get("POBENCH_VLLM_PYTHON") or (sys.executable if importlib.util.find_spec("vllm") else None)


@pytest.mark.skipif(VLLM_PYTHON is None, reason="vLLM not importable here and POBENCH_VLLM_PYTHON unset: "
                    "run `tox -e vllm` or set POBENCH_VLLM_PYTHON=<python of a vLLM env>")
def test_pairwise_judge_on_a_real_vllm_server(tmp_path):
    from bench.backends.openai import VLLMServer
    from bench.models import resolve_model
    from tasks import judges
    from tasks.ranking import rank_and_pair
    from tasks.base import Sample

    model = resolve_model("smollm2-135m").path
    server = VLLMServer(VLLM_PYTHON, model, dtype="bfloat16", log_path=str(tmp_path / "vllm.log"))
    try:
        judge = judges.build(f"llm:{server.base_url}?model=pobench-model",
                             task_hint="Prefer the more helpful answer.")
        prompts = ["What is the capital of France?", "How many legs does a spider have?", "Name a primary colour."]
        good = ["The capital of France is Paris.", "A spider has eight legs.", "Red is a primary colour."]
        bad = ["asdf qwer zxcv", "I like turtles.", "The weather is nice."]
        verdicts = judge.compare(prompts, good, bad) + judge.compare(prompts, bad, good)
        assert set(verdicts) <= {0.0, 0.5, 1.0}
        stats = judge.stats()
        assert stats["comparisons"] == 6
        assert stats["a_wins"] + stats["b_wins"] + stats["order_disagreements"] + stats["unparsed"] == 6
        assert stats["unparsed"] < 6  # the server's answers are read as A/B
        # swapping the arguments mirrors every verdict (both orders are asked each time)
        assert verdicts[3:] == [1.0 - v for v in verdicts[:3]]
        samples = [Sample("q", prompts[0], text, i) for i, text in enumerate(good[:1] + bad)]
        _pairs, rankings = rank_and_pair(samples, judge)
        assert sorted(rankings[0].order) == [0, 1, 2, 3]
    finally:
        server.stop()
