"""Paper suites carry their published recipe (``recipe:``, validated against the suite), docs/paper_recipes.md is
generated from them, and ``pobench plan`` accepts every paper suite."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench import recipes
from bench.cli import main
from bench.config import ConfigError, load_suite, validate

REPO = Path(__file__).resolve().parents[2]
PAPER_SUITES = sorted((REPO / "configs" / "paper").glob("*.yaml"))
DOC = REPO / "docs" / "paper_recipes.md"


@pytest.mark.parametrize("path", PAPER_SUITES, ids=[p.stem for p in PAPER_SUITES])
def test_every_paper_suite_carries_its_recipe(path):
    suite = load_suite(path)
    assert suite.recipe is not None and "arXiv" in suite.recipe.paper
    settings = {v.setting for v in suite.recipe.values}
    assert "model" in settings and "evaluation" in settings
    assert any(s.startswith("learning rate") or s == "optimisation" for s in settings)
    assert recipes.recipe_problems(suite) == []


def test_the_recipes_document_is_generated_from_the_configs():
    block = recipes.BLOCK.search(DOC.read_text())
    assert block is not None, "docs/paper_recipes.md has no <!-- pobench:recipes --> block"
    assert block.group("body") == recipes.render(), (
        "docs/paper_recipes.md is stale: regenerate it with `pobench recipes --write docs/paper_recipes.md`")
    assert main(["recipes", "--check", str(DOC)]) == 0


def minimal_recipe(**value) -> dict:
    return {"name": "t", "methods": {"dpo": {"beta": 0.1}}, "train": {"lr": 1.0e-6},
            "recipe": {"paper": "P, arXiv 0000.00000", "values": [{"setting": "learning rate", **value}]}}


def test_a_difference_needs_a_reason_and_a_field_must_exist():
    assert validate(minimal_recipe(paper=1.0e-6, code=1.0e-6, field="train.lr")).recipe is not None
    with pytest.raises(ConfigError, match=r"recipe.values\[0\] \(learning rate\): pobench's 1e-06 differs from the "
                                          r"official code's 5e-07; say why in note"):
        validate(minimal_recipe(paper=1.0e-6, code=5.0e-7, field="train.lr"))
    assert validate(minimal_recipe(code=5.0e-7, field="train.lr", note="the paper's value")).recipe is not None
    with pytest.raises(ConfigError, match=r"field train.lrr: no field 'lrr'"):
        validate(minimal_recipe(field="train.lrr"))
    with pytest.raises(ConfigError, match="give exactly one of field"):
        validate(minimal_recipe(field="train.lr", pobench="1e-6"))


def test_recipe_fields_read_defaults_method_sections_and_products():
    suite = validate({
        "name": "t", "methods": {"tdpo2": {"beta": [0.1, 0.2], "train": {"lr": 2.0e-6}}},
        "train": {"batch_size": 8, "grad_accum": 4},
        "recipe": {"paper": "P", "values": [
            {"setting": "alpha", "field": "methods.tdpo2.alpha"},
            {"setting": "beta", "field": "methods.tdpo2.beta"},
            {"setting": "lr", "field": "methods.tdpo2.train.lr"},
            {"setting": "batch", "code": 32, "field": ["train.batch_size", "train.grad_accum"]},
            {"setting": "optimizer", "field": "train.optimizer"}]}})
    values = [recipes.pobench_value(suite, v) for v in suite.recipe.values]
    assert values == [0.5, [0.1, 0.2], 2.0e-6, {"factors": [8, 4], "product": 32}, "adamw"]
    assert recipes.format_value(values[3]) == "8 x 4 = 32"
    assert recipes.differs_from(suite, suite.recipe.values[3]) == []


def test_overrides_leave_the_recipe_alone_but_the_file_is_checked(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text("name: t\nmethods: {dpo: {}}\ntrain: {lr: 1.0e-6}\nrecipe:\n  paper: P\n  values:\n"
                    "    - {setting: learning rate, paper: 1.0e-6, field: train.lr}\n")
    suite = load_suite(path, ["train.lr=1e-3"])  # a tiny try-out run is not the recipe: not checked against it
    assert suite.train.lr == 1e-3 and suite.recipe is not None
    path.write_text(path.read_text().replace("paper: 1.0e-6", "paper: 2.0e-6"))
    with pytest.raises(ConfigError, match="differs from the paper's 2e-06"):
        load_suite(path, ["train.lr=1e-3"])


def test_the_recipe_does_not_change_the_config_hash():
    base = {"name": "t", "methods": {"dpo": {}}}
    with_recipe = {**base, "recipe": {"paper": "P", "values": [{"setting": "model", "field": "models.0.id"}]}}
    assert validate(with_recipe).hash() == validate(base).hash()


@pytest.mark.parametrize("path", PAPER_SUITES, ids=[p.stem for p in PAPER_SUITES])
def test_pobench_plan_accepts_every_paper_suite(path, tmp_path, capsys):
    assert main(["plan", str(path), "--work-dir", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    assert f"suite {load_suite(path).name} " in out and "work left:" in out
