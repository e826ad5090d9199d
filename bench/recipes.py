"""Published recipes of the paper suites, and docs/paper_recipes.md generated from them.

Every ``configs/paper/*.yaml`` carries a ``recipe:`` section (:class:`bench.config.schema.Recipe`): per
setting the paper's value, the official code's value, the dotted field of the suite that holds pobench's
value (or pobench's value in words) and a note. The loader checks each recipe against its suite
(:func:`recipe_problems`): every field exists, and a note says why wherever pobench's value differs from
the paper's or the code's. The document is a pure function of the YAML files: :func:`render` writes the
tables, :func:`update` rewrites the marked block of a document (``<!-- pobench:recipes -->`` ...
``<!-- /pobench:recipes -->``) like :mod:`bench.readme` does for results, and a test fails when the
document and the configs disagree (``pobench recipes --write docs/paper_recipes.md`` regenerates it).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from bench.hashing import plain

if TYPE_CHECKING:
    from bench.config.schema import RecipeValue, SuiteConfig

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = REPO / "configs" / "paper"
BLOCK = re.compile(r"(<!-- pobench:recipes -->\n)(?P<body>.*?)(<!-- /pobench:recipes -->)", re.S)
UNKNOWN = "?"


class RecipeFieldError(KeyError):
    """A recipe names a field its suite does not have."""


# ----------------------------------------------------------------------------------------------
# pobench's value of a recipe setting

def field_value(suite: "SuiteConfig", path: str) -> Any:
    """The value of dotted ``path`` in the validated suite, defaults included. ``methods.<name>.<hp>`` is
    the method's grid value (a list when it sweeps) or its default; ``methods.<name>.train.<field>`` /
    ``.generation.<field>`` the method's effective section; list items by index (``models.0.id``)."""
    parts = path.split(".")
    if parts[0] == "methods":
        if len(parts) < 3:
            raise RecipeFieldError(f"{path}: give methods.<name>.<hyperparameter> or methods.<name>.train.<field>")
        spec = next((s for s in suite.method_specs if s.name == parts[1]), None)
        if spec is None:
            raise RecipeFieldError(f"{path}: the suite has no method {parts[1]!r}")
        if parts[2] in ("train", "generation"):
            return _walk(getattr(spec, parts[2]), parts[3:], path)
        if parts[2] in spec.grid:
            values = spec.grid[parts[2]]
            value = values[0] if len(values) == 1 else values
        else:
            import methods

            defaults = methods.method_class(spec.name).hyperparameters
            if parts[2] not in defaults:
                raise RecipeFieldError(f"{path}: {parts[2]!r} is not a hyperparameter of {spec.name!r}")
            value = defaults[parts[2]].default
        return _walk(value, parts[3:], path)
    return _walk(suite, parts, path)


def _walk(value: Any, parts: list[str], path: str) -> Any:
    for part in parts:
        if isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, BaseModel) and part in type(value).model_fields:
            value = getattr(value, part)
        elif isinstance(value, dict):  # a task option left at its default
            raise RecipeFieldError(f"{path}: {part!r} is not set (set it in the suite to name it in the recipe)")
        else:
            raise RecipeFieldError(f"{path}: no field {part!r}")
    return plain(value)


def pobench_value(suite: "SuiteConfig", value: "RecipeValue") -> Any:
    """pobench's value of one recipe setting: its field(s) in the suite (a list of fields multiplied), or its words."""
    if value.field is None:
        return value.pobench
    if isinstance(value.field, str):
        return field_value(suite, value.field)
    factors = [field_value(suite, f) for f in value.field]
    product = math.prod(factors) if all(isinstance(f, (int, float)) for f in factors) else None
    return {"factors": factors, "product": product}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def same(ours: Any, theirs: Any) -> bool:
    """Whether pobench's value equals a stated one: numbers within 1e-9 relative, strings ignoring case
    and surrounding space, lists item by item; a multiplied field compares by its product."""
    if isinstance(ours, dict) and "product" in ours:
        ours = ours["product"]
    a, b = _number(ours), _number(theirs)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)):
        return len(ours) == len(theirs) and all(same(x, y) for x, y in zip(ours, theirs))
    if isinstance(ours, str) and isinstance(theirs, str):
        return ours.strip().lower() == theirs.strip().lower()
    return ours == theirs


def differs_from(suite: "SuiteConfig", value: "RecipeValue") -> list[str]:
    """``paper`` / ``code``: the stated values pobench's differs from (unknown ones are not compared)."""
    ours = pobench_value(suite, value)
    return [name for name, theirs in (("paper", value.paper), ("code", value.code))
            if theirs is not None and not same(ours, theirs)]


def recipe_problems(suite: "SuiteConfig") -> list[str]:
    """What is wrong with a suite's recipe: fields that do not exist, differences without a note."""
    if suite.recipe is None:
        return []
    problems = []
    for i, value in enumerate(suite.recipe.values):
        where = f"recipe.values[{i}] ({value.setting})"
        try:
            differs = differs_from(suite, value)
        except RecipeFieldError as exc:
            problems.append(f"{where}: field {exc.args[0]}")
            continue
        if differs and not value.note.strip():
            ours = format_value(pobench_value(suite, value))
            stated = ", ".join(f"the {'official code' if d == 'code' else d}'s {format_value(getattr(value, d))}"
                               for d in differs)
            problems.append(f"{where}: pobench's {ours} differs from {stated}; say why in note")
    return problems


# ----------------------------------------------------------------------------------------------
# the document

def format_value(value: Any) -> str:
    if value is None:
        return UNKNOWN
    if isinstance(value, dict) and "factors" in value:
        text = " x ".join(format_value(f) for f in value["factors"])
        return text + (f" = {format_value(value['product'])}" if value["product"] is not None else "")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_suite(path: Path, suite: "SuiteConfig") -> str:
    recipe = suite.recipe
    rel = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name
    lines = [f"### `{rel}`: {suite.description or suite.name}", ""]
    if recipe is None:
        return "\n".join(lines + ["No recipe recorded.", ""])
    lines.append(f"Paper: {recipe.paper}")
    lines.append("")
    lines.append(f"Official code: {recipe.code or 'none public'}")
    lines.append("")
    lines.append("| setting | paper | official code | pobench | differs from | note |")
    lines.append("|---|---|---|---|---|---|")
    for value in recipe.values:
        ours = format_value(pobench_value(suite, value))
        if value.field is not None:
            fields = [value.field] if isinstance(value.field, str) else value.field
            ours += " (" + " x ".join(f"`{f}`" for f in fields) + ")"
        differs = differs_from(suite, value)
        lines.append("| " + " | ".join(_cell(c) for c in (
            value.setting, format_value(value.paper), format_value(value.code), ours,
            ", ".join("code" if d == "code" else "paper" for d in differs), value.note)) + " |")
    lines.append("")
    return "\n".join(lines)


def render(paths: list[Path] | None = None) -> str:
    """The generated block: one table per paper suite (sorted by file name)."""
    from bench.config import load_suite

    paths = sorted(Path(p).resolve() for p in (paths if paths is not None else PAPER_CONFIGS.glob("*.yaml")))
    parts = [render_suite(path, load_suite(path)) for path in paths]
    return "\n".join(parts).rstrip() + "\n"


def update(path: Path, body: str | None = None) -> bool:
    """Rewrite the recipes block of ``path``; True when the file changed."""
    text = path.read_text()
    if not BLOCK.search(text):
        raise ValueError(f"{path}: no <!-- pobench:recipes --> ... <!-- /pobench:recipes --> block")
    body = render() if body is None else body
    new = BLOCK.sub(lambda m: m.group(1) + body + m.group(3), text)
    if new != text:
        path.write_text(new)
    return new != text
