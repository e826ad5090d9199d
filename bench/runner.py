"""Run a suite end to end: plan -> execute the stage DAG -> leaderboard files and run records.

The leaderboard files and run records are a stage's output like any other (:func:`write_report`):
``<work dir>/report/<key>/``, keyed by everything they are computed from (the runs read from the
work dir, the suite, the manifest but its time, the code and libraries that write them), and copied
into the results dir where its files differ. A re-run whose stages were all cached therefore
recomputes no statistics and draws no plot; a changed input (a stage computed again, a new commit,
an edited report module) gives a new key and new files.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable

from bench.config import SuiteConfig
from bench.executors import execute
from bench.manifest import build_manifest, package_versions
from bench.plan import Node, Plan, build_plan
from bench.stages import read_jsonl
from bench.store import CHECKSUMS, StageOutput, Store, atomic_write_bytes, atomic_write_json, file_sha256

log = logging.getLogger("pobench")
REPO_ROOT = Path(__file__).resolve().parent.parent
#: the report entry's version: bump it when the leaderboard files of the same runs change in a way the
#: code digest below does not see (as a stage's version re-keys its nodes)
REPORT_VERSION = "1"
#: the modules whose code writes the leaderboard files and run records: their source keys the report
#: entry, so an edit there (committed or not) writes the files again
REPORT_CODE = ("runner.py", "leaderboard.py", "stats.py", "report.py", "manifest.py", "store.py")
#: libraries whose versions can change the files' bytes beyond the manifest's packages (plots: matplotlib
#: and Pillow; t-intervals: scipy)
REPORT_LIBRARIES = ("matplotlib", "pillow", "scipy")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", text)


def primary_metrics(suite: SuiteConfig) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Each task's primary metric (its first metric with a direction) and every metric's info."""
    import tasks

    primary: dict[str, str] = {}
    info: dict[str, dict[str, Any]] = {}
    for name in suite.scored_tasks:
        cls = tasks.task_class(name)
        for metric in cls.metrics:
            info.setdefault(metric.name, {"higher_is_better": metric.higher_is_better,
                                          "description": metric.description})
            if name not in primary and metric.higher_is_better is True:
                primary[name] = metric.name
    for name in suite.eval_tasks:  # extra columns of every row, never a task's primary metric
        for metric in tasks.task_class(name).metrics:
            info.setdefault(metric.name, {"higher_is_better": metric.higher_is_better,
                                          "description": metric.description, "eval_task": name})
    info.setdefault("kl", {"higher_is_better": False,
                           "description": "KL(policy || reference) per sequence, nats (teacher forcing)"})
    return primary, info


def _chain(node: Node) -> list[Node]:
    """A node and everything upstream of it, upstream first."""
    seen: dict[tuple[str, str], Node] = {}

    def visit(n: Node) -> None:
        for dep in n.deps.values():
            visit(dep)
        seen.setdefault((n.stage, n.key), n)

    visit(node)
    return list(seen.values())


def add_evaluation(scores: dict[str, Any], results: dict[str, Any], eval_task: str) -> None:
    """Fold an ``evaluate`` stage's results into a run's scores: extra metrics (names are checked
    disjoint from the training task's at config time), their directions and standard errors."""
    clash = sorted(set(scores["metrics"]) & set(results["metrics"]))
    if clash:  # only metrics a task could not declare (e.g. an lm-eval group's) get here
        raise RuntimeError(f"eval task {eval_task!r} reports metric(s) {clash} that this row already has "
                           "(from its training task or another eval task); they would share one leaderboard column")
    scores["metrics"].update(results["metrics"])
    scores.setdefault("directions", {}).update(results.get("directions", {}))
    scores.setdefault("stderr", {}).update(results.get("stderr", {}))


def collect_runs(plan: Plan, store: Store) -> list[dict[str, Any]]:
    runs = []
    for cell in plan.cells:
        out = store.get("score", cell.score.key)
        if out is None:
            continue
        scores = json.loads((out.path / "scores.json").read_text())
        stages = {}
        sources = {}
        evaluations = {}
        skipped = {}  # stage -> malformed records its task skipped (strict: false), so reports can show them
        for node in _chain(cell.score):
            done = store.get(node.stage, node.key, full=False)  # reads its record only (not the weights)
            record = done.record if done else {}
            stages[f"{node.stage}:{node.label}"] = {"key": node.key, "seconds": record.get("seconds"),
                                                    **({"peak_rss_mb": record["peak_rss_mb"]}
                                                       if record.get("peak_rss_mb") is not None else {}),
                                                    **({"finished_at": round(record["finished_at"], 1)}
                                                       if record.get("finished_at") is not None else {})}
            source = (record.get("task_record") or {}).get("data_source")
            if source and node.stage in ("sft", "prefdata", "generate"):
                sources[node.stage] = source
            if (record.get("task_record") or {}).get("skipped_records"):
                skipped[node.stage] = record["task_record"]["skipped_records"]
        if (scores.get("task_record") or {}).get("skipped_records"):
            skipped["score"] = scores["task_record"]["skipped_records"]
        for name, node in cell.evals.items():
            done = store.get(node.stage, node.key)
            stages[f"{node.stage}:{node.label}"] = {"key": node.key,
                                                    "seconds": done.record.get("seconds") if done else None}
            if done is None:  # not evaluated yet: its columns stay empty (check reports them missing)
                continue
            results = json.loads((done.path / "results.json").read_text())
            add_evaluation(scores, results, name)
            source = (results.get("task_record") or {}).get("data_source")
            if source:
                sources[f"evaluate:{name}"] = source
            evaluations[name] = {"key": node.key, "metrics": results["metrics"], "stderr": results.get("stderr", {}),
                                 "task_record": results.get("task_record"), "given_as": results.get("given_as"),
                                 "details": {k: v for k, v in (results.get("details") or {}).items()
                                             if k != "stderr"}}
        trained = store.get("train", cell.train.key, full=False) if cell.train is not None else None
        train = {"steps": trained.record.get("steps"), "hparams": trained.record.get("hparams")} if trained else None
        generated = store.get("generate", cell.score.deps["samples"].key)
        samples = read_jsonl(generated.path / "samples.jsonl") if generated is not None else []
        runs.append({"row_id": cell.row_id, "task": cell.task, "model": cell.model, "method": cell.method,
                     "label": cell.label, "hparams": cell.hparams, "seed": cell.seed, "step": cell.step,
                     "scores": scores, "samples": samples, "run_key": cell.score.key, "stages": stages,
                     "data_sources": sources, "evaluations": evaluations,
                     **({"train": train} if train else {}),
                     **({"skipped_records": skipped} if skipped else {})})
    return runs


def make_leaderboard(plan: Plan, store: Store) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    runs = collect_runs(plan, store)
    return leaderboard_from_runs(plan.suite, runs), runs


def leaderboard_from_runs(suite: SuiteConfig, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The leaderboard of ``runs`` (from the work dir, or read back from committed records)."""
    return board_from_inputs(board_inputs(suite, runs))


def board_inputs(suite: SuiteConfig, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the leaderboard of ``runs`` is computed from: the runs in their canonical order (each
    with its training filled in), the suite's settings of the report and the manifest, as the keyword
    arguments of :func:`bench.leaderboard.build_leaderboard` (plus ``suite_name`` and ``runs``)."""
    # one canonical order, so a board rebuilt from records equals the one built from the work dir
    runs = sorted(runs, key=lambda r: (r["task"], r["model"], r["method"] != "reference", r["row_id"],
                                       -1 if r.get("step") is None else r["step"], r["seed"]))
    for run in runs:
        if run["method"] != "reference" and not run.get("train"):
            run["train"] = train_of_config(suite, run)
    primary, info = primary_metrics(suite)
    data_sources: dict[str, Any] = {}
    for run in runs:
        record = run["scores"].get("task_record") or {}
        if record.get("data_source"):
            data_sources[run["task"]] = record["data_source"]  # what the evaluation prompts came from
        for stage, source in run.get("data_sources", {}).items():
            if stage != "generate":
                data_sources[f"{run['task']}:{stage}"] = source  # preference / SFT data
    manifest = build_manifest(suite.hash(), suite.seeds, data_sources,
                              extra={"suite_source": suite.source, "suite": suite.to_dict()})
    paper = [{"task": p.task or suite.tasks[0], "method": p.method, "metric": p.metric, "value": p.value,
              "source": p.source, "note": p.note} for p in suite.paper_reference]
    return {"suite_name": suite.name, "runs": runs, "manifest": manifest, "config_hash": suite.hash(),
            "primary": primary, "metric_info": info, "paper_rows": paper, "kl_budget": suite.score.kl_budget,
            "kl_levels": suite.report.kl_levels, "baseline_method": suite.report.baseline_method,
            "n_boot": suite.report.bootstrap_resamples}


def board_from_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The leaderboard computed from :func:`board_inputs` (statistics, matched-KL comparisons), with the
    compute summary, its paths made portable."""
    from bench.leaderboard import build_leaderboard

    arguments = {k: v for k, v in inputs.items() if k not in ("suite_name", "runs")}
    board = build_leaderboard(inputs["suite_name"], inputs["runs"], **arguments)
    board["compute"] = compute_summary(inputs["runs"])
    return portable(board)


def compute_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What producing the board cost: every stage of the runs counted once (by key; a stage shared by
    several rows, like the preference data, is one stage), with the seconds its record kept and the
    largest peak resident memory, in total and per stage kind. A re-run that found stages cached keeps
    the seconds of the run that computed them."""
    seen: dict[str, dict[str, Any]] = {}
    for run in runs:
        for name, stage in (run.get("stages") or {}).items():
            if stage.get("seconds") is not None:
                seen.setdefault(f"{name.split(':', 1)[0]}/{stage['key']}", stage)
    by_stage: dict[str, dict[str, Any]] = {}
    for ident, stage in seen.items():
        kind = by_stage.setdefault(ident.split("/", 1)[0], {"count": 0, "seconds": 0.0})
        kind["count"] += 1
        kind["seconds"] = round(kind["seconds"] + stage["seconds"], 1)
        if stage.get("peak_rss_mb") is not None:
            kind["peak_rss_mb"] = max(kind.get("peak_rss_mb", 0.0), stage["peak_rss_mb"])
    peaks = [k["peak_rss_mb"] for k in by_stage.values() if "peak_rss_mb" in k]
    return {"stages": len(seen), "stage_seconds": round(sum(s["seconds"] for s in seen.values()), 1),
            "peak_rss_mb": max(peaks) if peaks else None, "by_stage": dict(sorted(by_stage.items())),
            **({"span_seconds": span} if (span := stage_span(list(seen.values()))) is not None else {})}


def stage_span(stages: list[dict[str, Any]]) -> float | None:
    """Seconds from the first stage's start to the last one's end (records with ``finished_at`` and
    ``seconds``; None when one lacks them). Below the sum of the stages' seconds when stages ran side
    by side (``executor.jobs``); above it when the run paused and was resumed."""
    if not stages or any(s.get("finished_at") is None or s.get("seconds") is None for s in stages):
        return None
    return round(max(s["finished_at"] for s in stages) - min(s["finished_at"] - s["seconds"] for s in stages), 1)


def train_of_config(suite: SuiteConfig, run: dict[str, Any]) -> dict[str, Any]:
    """A run's training as its suite configured it (records written before runs kept their train
    stage's steps and full hyperparameters): ``steps`` (None when epoch-based: known once trained)
    and the method's hyperparameters with its defaults."""
    from bench.plan import full_hparams, method_label

    spec = next((s for s in suite.method_specs if s.name == run["method"]
                 and method_label(s, run.get("hparams") or {}) == run["label"]), None)
    try:
        hparams = full_hparams(run["method"], run.get("hparams") or {})
    except Exception:  # a method no longer installed: what the record has
        hparams = dict(run.get("hparams") or {})
    return {"steps": (spec.train.steps or None) if spec else None, "hparams": hparams}


def suite_of_results(out_dir: Path) -> SuiteConfig:
    """The suite a committed ``results/<suite>/leaderboard.json`` was produced with (its manifest)."""
    from bench.config import validate
    from bench.leaderboard import load_leaderboard

    board = load_leaderboard(out_dir)
    data = board.get("manifest", {}).get("suite")
    if not data:
        raise ValueError(f"{out_dir}/leaderboard.json: its manifest has no suite configuration to rebuild from")
    suite = validate(data, source=f"{out_dir}/leaderboard.json (manifest.suite)")
    suite._source = board["manifest"].get("suite_source", suite.source)
    return suite


def rebuild_from_records(out_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every number of ``results/<suite>/`` recomputed from its committed run records and samples alone."""
    from bench.leaderboard import load_leaderboard

    runs = read_run_records(out_dir)
    if not runs:
        raise FileNotFoundError(f"{out_dir}/runs: no run records to rebuild from")
    board = leaderboard_from_runs(suite_of_results(out_dir), runs)
    board["manifest"] = load_leaderboard(out_dir)["manifest"]  # where and how the runs were produced
    return board, runs


def portable_roots() -> dict[str, Path]:
    """The folders :func:`portable` rewrites paths under, by tag (this machine's, from its environment)."""
    import os

    from bench.models import cache_dir
    from tasks.base import shared_data_dir

    roots = {"": REPO_ROOT}
    shared = shared_data_dir()
    if shared is not None:
        roots["<shared-data>/"] = Path(shared)
    roots["<cache>/"] = cache_dir()
    roots["<work-dir>/"] = Path(os.environ.get("POBENCH_WORK_DIR") or "runs").resolve()
    roots["<tmp>/"] = Path(os.environ.get("TMPDIR", "/tmp"))
    return roots


def portable(value: Any, roots: dict[str, Path] | None = None) -> Any:
    """``value`` with this machine's absolute paths rewritten for committed files: under the
    repository -> relative; under the shared data / cache / work dir -> ``<shared-data>/...`` etc.;
    any other absolute path -> ``<abs>/<name>``."""
    if roots is None:
        roots = portable_roots()
    if isinstance(value, dict):
        return {k: portable(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, roots) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        path = Path(value)
        for tag, root in sorted(roots.items(), key=lambda kv: -len(str(kv[1]))):
            try:
                rel = path.resolve().relative_to(Path(root).resolve())
            except ValueError:
                continue
            return f"{tag}{rel}" if str(rel) != "." else (tag.rstrip("/") or ".")
        return f"<abs>/{path.name}"
    return value


def run_name(run: dict[str, Any]) -> str:
    """A run's file name stem under ``results/<suite>/runs/`` (one per row, seed and evaluated step)."""
    step = f"__step{run['step']}" if run.get("step") is not None else ""
    return _safe(f"{run['task']}__{run['model']}__{run['label']}__s{run['seed']}{step}")


def evidence_rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per sample: what was generated (prompt, completion) and every per-sample value the
    judges and the KL estimate gave it, so anyone can re-judge or recompute a CI from the file."""
    samples, per_sample = run.get("samples") or [], run["scores"].get("per_sample") or []
    if per_sample and len(per_sample) != len(samples):
        raise RuntimeError(f"{run_name(run)}: {len(per_sample)} per-sample scores for {len(samples)} samples")
    rows = []
    for i, sample in enumerate(samples):
        values = per_sample[i] if per_sample else {}
        if values and str(values.get("prompt_id", sample["prompt_id"])) != str(sample["prompt_id"]):
            raise RuntimeError(f"{run_name(run)}: per-sample score {i} is for prompt {values.get('prompt_id')}, "
                               f"the sample for {sample['prompt_id']}")
        rows.append({**{k: sample[k] for k in ("prompt_id", "index", "prompt", "completion") if k in sample},
                     "scores": {k: v for k, v in values.items() if k not in ("prompt_id", "index")}})
    return rows


def write_run_records(runs: list[dict[str, Any]], out_dir: Path, manifest: dict[str, Any]) -> None:
    """Per leaderboard run under ``<out_dir>/runs/``: ``<name>.json`` (its record: identity, metrics,
    stage keys, data sources, ``per_pair`` values of the metrics computed on held-out pairs) and
    ``<name>.samples.jsonl.gz`` (the evidence: every completion with its per-sample scores and KL).
    Files of runs no longer in the suite are deleted so the folder matches the board. No absolute
    path of this machine goes in (``pobench leaderboard`` rebuilds from these)."""
    short_manifest = {k: v for k, v in manifest.items() if k != "suite"}
    written = set()
    for run in runs:
        record = {k: v for k, v in run.items() if k not in ("scores", "samples")}
        record["metrics"] = run["scores"]["metrics"]
        record["directions"] = run["scores"].get("directions", {})
        record["stderr"] = run["scores"].get("stderr", {})
        record["notes"] = run["scores"].get("notes", {})
        record["task_record"] = run["scores"].get("task_record")
        if run["scores"].get("per_pair"):  # per held-out pair values (alignment_accuracy): not per sample
            record["per_pair"] = run["scores"]["per_pair"]
        record["manifest"] = short_manifest
        name = run_name(run)
        atomic_write_json(out_dir / "runs" / f"{name}.json", portable(record))
        lines = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in evidence_rows(run))
        # mtime 0: the same samples give the same bytes (diffs of committed results show real changes only)
        atomic_write_bytes(out_dir / "runs" / f"{name}.samples.jsonl.gz", gzip.compress(lines.encode(), mtime=0))
        written |= {f"{name}.json", f"{name}.samples.jsonl.gz"}
    for stale in [*(out_dir / "runs").glob("*.json"), *(out_dir / "runs").glob("*.samples.jsonl.gz")]:
        if stale.name not in written:
            stale.unlink()


def read_run_records(out_dir: Path) -> list[dict[str, Any]]:
    """The runs of a committed ``results/<suite>/`` (records + samples), as :func:`collect_runs` gives them."""
    runs = []
    for path in sorted((out_dir / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        evidence = path.with_name(path.name[:-len(".json")] + ".samples.jsonl.gz")
        if not evidence.is_file():
            raise FileNotFoundError(f"{evidence}: the samples of run {path.name} are missing")
        rows = [json.loads(line) for line in gzip.decompress(evidence.read_bytes()).decode().split("\n") if line]
        samples = [{k: r[k] for k in ("prompt_id", "index", "prompt", "completion") if k in r} for r in rows]
        per_sample = [{"prompt_id": r["prompt_id"], "index": r.get("index", 0), **r.get("scores", {})} for r in rows]
        scores = {"metrics": record.pop("metrics"), "directions": record.pop("directions", {}),
                  "stderr": record.pop("stderr", {}), "notes": record.pop("notes", {}),
                  "task_record": record.pop("task_record", None), "per_sample": per_sample}
        if record.get("per_pair"):
            scores["per_pair"] = record.pop("per_pair")
        record.pop("manifest", None)
        runs.append({**record, "scores": scores, "samples": samples})
    return runs


def run_suite(suite: SuiteConfig, progress: Callable[[str], None] | None = None,
              mode: str | None = None) -> dict[str, Any]:
    """Plan, execute and report ``suite``. What a person sees (:mod:`bench.progress`): ``mode`` "bar"
    (a terminal), "plain" (a log: lines only) or "quiet" (errors and the final line); default: bar
    when stderr is a terminal, else plain. ``progress``: a callback that gets every line instead (no bars)."""
    from bench.progress import RunDisplay, choose_mode, node_id

    started = time.time()
    with RunDisplay(mode or choose_mode(), callback=progress) as display:
        plan = build_plan(suite)
        store = Store(suite.resolved_work_dir())
        display.plan(plan, {node_id(n) for n in plan.nodes if store.status(n.stage, n.key) == "done"})
        display.line(f"[pobench] suite {suite.name}: {len(plan.cells)} runs, {len(plan.nodes)} stage nodes, "
                     f"work dir {store.root}, executor {suite.executor.kind}")
        display.line(f"[pobench] {display.work_summary()}")
        fallback = builtin_data_note(plan)
        if fallback:
            display.line(fallback)

        def on_node(node: Node, status: str, seconds: float) -> None:
            if status == "start":
                display.stage_started(node)
            else:
                display.stage_finished(node, status, seconds)

        try:
            summary = execute(plan, store, on_node)
        except BaseException as exc:
            display.stage_failed(exc)
            raise
        board, written = write_report(suite, collect_runs(plan, store), store, suite.resolved_results_dir())
        wall = time.time() - started
        display.line(f"[pobench] done in {wall:.1f}s ({summary['computed']} stages computed, {summary['cached']} "
                     f"cached); leaderboard: {written['md']}", always=True)
    return {"plan": plan, "board": board, "written": written, "wall_s": wall, **summary}


def report_key(inputs: dict[str, Any]) -> str:
    """The key of the report entry of :func:`board_inputs` ``inputs``: those inputs (the runs with their
    scores, samples and stage records' seconds, the suite, the manifest: git state, packages, hardware),
    the folders paths are made portable against, :data:`REPORT_VERSION`, the source of :data:`REPORT_CODE`
    and the versions of :data:`REPORT_LIBRARIES`. The board's ``created_at`` is the one field of the
    files that computing them again with the same key changes."""
    code = hashlib.sha256()
    for name in REPORT_CODE:
        code.update(name.encode() + b"\0" + (Path(__file__).parent / name).read_bytes() + b"\0")
    from bench.hashing import stable_hash

    return stable_hash({"stage": "report", "version": REPORT_VERSION, "code": code.hexdigest(),
                        "libraries": package_versions(REPORT_LIBRARIES),
                        "roots": {tag: str(path) for tag, path in portable_roots().items()}, "inputs": inputs})


def write_report(suite: SuiteConfig, runs: list[dict[str, Any]], store: Store,
                 results_dir: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The leaderboard files (``bench.report.write_all``) and run records (:func:`write_run_records`) of
    ``runs`` in ``results_dir``; returns the board and name -> path of the leaderboard files.

    They are computed into the work dir's ``report/<key>/`` entry (:func:`report_key`), which the store
    writes atomically and checks like any stage output, and copied from there into ``results_dir``
    file by file where a file differs (:func:`publish_report`). A re-run of the same runs finds the entry
    and rewrites nothing; the files are those it wrote when it was computed (their ``created_at`` too)."""
    inputs = board_inputs(suite, runs)
    computed: dict[str, Any] = {}

    def compute(out: Path) -> dict[str, Any]:
        from bench.report import write_all

        board = board_from_inputs(inputs)
        written = write_all(board, out)
        write_run_records(runs, out, board["manifest"])
        computed["board"] = board
        return {"suite": suite.name, "written": {name: path.relative_to(out).as_posix()
                                                 for name, path in written.items()}}

    entry, _ = store.run("report", report_key(inputs), compute, label=f"report {suite.name}",
                         inputs={"label": f"report {suite.name}", "runs": [run["run_key"] for run in inputs["runs"]]})
    record = entry.record
    publish_report(entry, results_dir, record)
    board = computed.get("board") or json.loads((entry.path / "leaderboard.json").read_text())
    return board, {name: results_dir / rel for name, rel in record["written"].items()}


def publish_report(entry: StageOutput, results_dir: Path, record: dict[str, Any] | None = None) -> None:
    """Make ``results_dir`` hold the report entry's files: each one whose size or sha256 differs from the
    entry's is written (atomically); run records and samples under ``runs/`` that the entry does not have
    are deleted, so the folder matches the board (as :func:`write_run_records` leaves it)."""
    record = record if record is not None else entry.record
    files = record[CHECKSUMS]["files"]
    for rel, (size, digest) in files.items():
        target = results_dir / rel
        try:
            same = target.stat().st_size == size and file_sha256(target) == digest
        except OSError:
            same = False
        if not same:
            atomic_write_bytes(target, (entry.path / rel).read_bytes())
    runs_dir = results_dir / "runs"
    for stale in [*runs_dir.glob("*.json"), *runs_dir.glob("*.samples.jsonl.gz")]:
        if f"runs/{stale.name}" not in files:
            stale.unlink()


def builtin_data_note(plan: Plan) -> str | None:
    """One line naming the tasks that run on pobench's built-in material instead of their dataset,
    and why (pinned by ``task_options.<task>.source``, or a fallback: no hub and no local files)."""
    from bench.plan import data_sources
    from tasks.base import is_offline, shared_data_dir

    notes = []
    for task, source in data_sources(plan).items():
        if source.get("kind") != "builtin":
            continue
        options = plan.suite.task_options.get(task, {})
        if options.get("source") == "builtin":
            why = f"task_options.{task}.source: builtin"
        else:
            where = options.get("data_dir") or shared_data_dir()
            why = (f"fallback: {'offline' if is_offline() else 'no hub source'} and no local files under {where}; "
                   f"point POBENCH_SHARED_DATA or task_options.{task}.data_dir at them")
        notes.append(f"{task} ({source.get('location')}; {why})")
    return f"[pobench] built-in material, not the task's dataset: {'; '.join(notes)}" if notes else None


def rescore_records(results_dir: Path, judge: str, out_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Re-judge the committed samples of ``results_dir`` with ``judge`` (a judge spec) into ``out_dir``:
    each task scores the same completions again; each sample keeps its stored KL. The new folder has
    its own records and samples, so it can be rebuilt and checked like any other."""
    import tasks
    from tasks.base import Sample

    suite = suite_of_results(results_dir)
    data = suite.to_dict()
    data["name"] = out_dir.name
    data["results_dir"] = str(out_dir)
    data["task_options"] = {name: {**data["task_options"].get(name, {}), "judge": judge} for name in suite.scored_tasks}
    from bench.config import validate

    rescored_suite = validate(data, source=f"{suite.source} rescored with judge {judge}")
    runs = read_run_records(results_dir)
    built: dict[str, Any] = {}
    for run in runs:
        task = built.get(run["task"])
        if task is None:
            task = built[run["task"]] = tasks.get(run["task"], **rescored_suite.task_options.get(run["task"], {}))
        old = run["scores"]
        samples = [Sample(prompt_id=s["prompt_id"], prompt=s["prompt"], completion=s["completion"],
                          index=s.get("index", 0), kl=values.get("kl"))
                   for s, values in zip(run["samples"], old["per_sample"])]
        scores = task.score(samples, pair_logps=None)
        # what the judge cannot recompute from text (KL, token entropy from the sampler's log-probs,
        # metrics of held-out pairs) is carried over from the stored run
        metrics = {**{k: v for k, v in old["metrics"].items() if k not in scores.metrics}, **scores.metrics}
        per_sample = [{**{k: v for k, v in before.items() if k not in row}, **row}
                      for row, before in zip(scores.per_sample, old["per_sample"])]
        directions = {**old.get("directions", {}), **{m.name: m.higher_is_better for m in task.metrics}}
        directions.setdefault("kl", False)
        run["scores"] = {**old, "metrics": metrics, "per_sample": per_sample, "directions": directions,
                         # the samples' data source is the stored run's (re-judging reads no data)
                         "task_record": {**task.record(), "rescored_from": str(results_dir),
                                         **({"data_source": (old.get("task_record") or {}).get("data_source")}
                                            if (old.get("task_record") or {}).get("data_source")
                                            and not task.record().get("data_source") else {})}}
    board = leaderboard_from_runs(rescored_suite, runs)
    write_run_records(runs, out_dir, board["manifest"])
    return board, runs
