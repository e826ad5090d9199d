"""TIS-DPO's preparation step (``Method.preparation = "tis_weights"``): token weights from a contrastive pair.

``dpo_contrastive`` (the paper's main recipe): pi_plus = DPO on the pairs, pi_minus = DPO on the
swapped pairs ("reverse DPO"), both ordinary ``train`` nodes on the cell's data, recipe and seed.
pi_plus therefore IS the suite's own DPO run whenever the suite trains DPO with the same beta,
recipe and seed (same node key): it is computed once. ``prompt_contrastive``: one model under a
good vs a bad system prompt, no training. The weights are computed by
:func:`bench.train.tis.estimate_tis_weights` (``methods.tis_dpo`` for the transforms).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from bench.stages import StageContext, reference_path
from bench.stages.data import load_pairs
from bench.stages.prep import PreparationStep, PrepRequest
from bench.stages.train import trainer_config
from bench.store import StageOutput, atomic_write_jsonl
from bench.train.config import Schema, added_field

if TYPE_CHECKING:
    from bench.plan import Node


class TISWeightOptions(Schema):
    """``preparation.tis_weights`` of a suite."""

    estimator: Literal["dpo_contrastive", "prompt_contrastive"] = Field(
        "dpo_contrastive", description="DPO vs reverse-DPO models (official code) or good/bad system prompts")
    beta: float = Field(0.1, gt=0, description="DPO beta of the contrastive pair (shared with the suite's DPO "
                        "run when equal)")
    transform: Literal["rank", "clip", "exp", "uniform"] = Field(
        "rank", description="raw scores -> weights (uniform: every weight 1, EOS included - TIS-DPO is then "
        "DPO; the pipeline check)")
    transform_options: dict[str, Any] = Field(default_factory=dict, description="e.g. {low: 0.7, high: 1.3}; "
                                              "rank: decimals, ties (average | position); clip: clip_low, "
                                              "clip_high")
    # Default flipped to the official details (issue 12): true is keyed, so results cached under the
    # earlier default (no rounding, averaged ties, clip +-1) are never reused; false keeps earlier keys.
    official_transform: bool = added_field(
        True, earlier=False, description="the official code's transform details under transform_options: rank - scores "
        "rounded to 2 decimals, ties broken by position; clip - clipped at +-1.5 (false: pobench's first "
        "reading - no rounding, tied ranks averaged, clip at +-1)")

    def effective_transform_options(self) -> dict[str, Any]:
        """``transform_options`` over the official code's values when ``official_transform`` is set."""
        from methods.tis_dpo import OFFICIAL_TRANSFORM_OPTIONS

        base = OFFICIAL_TRANSFORM_OPTIONS[self.transform] if self.official_transform else {}
        return {**base, **self.transform_options}


class TISWeights(PreparationStep):
    name = "tis_weights"
    version = "1"
    options_model = TISWeightOptions

    def plan(self, request: PrepRequest) -> dict[str, "Node"]:
        options: TISWeightOptions = request.options  # type: ignore[assignment]
        if options.estimator != "dpo_contrastive":
            return {}
        dpo = {"beta": options.beta}
        return {"pi_plus": request.train_node("dpo", dpo),
                "pi_minus": request.train_node("dpo", dpo, swap_pairs=True)}

    def run(self, ctx: StageContext, node: "Node", inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
        from bench.train import TISWeightConfig, estimate_tis_weights

        p = node.params
        options = TISWeightOptions.model_validate(p.options)
        run = p.run
        config = TISWeightConfig(train=trainer_config(run.train, reference_path(run.model, inputs), run.seed),
                                 estimator=options.estimator, beta=options.beta, transform=options.transform,
                                 transform_options=options.effective_transform_options())
        models = None
        if options.estimator == "dpo_contrastive":
            models = (inputs["pi_plus"].record["model_path"], inputs["pi_minus"].record["model_path"])
        weighted = estimate_tis_weights(config, load_pairs(inputs["prefdata"]), ctx.trainer_dir(node),
                                        contrastive_models=models)
        atomic_write_jsonl(out / "pairs.jsonl", weighted)
        return {"pairs": len(weighted), "estimator": options.estimator, "transform": options.transform}
