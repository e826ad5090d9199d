"""Errors are for people: every failure pobench anticipates ends with ONE line naming the file/line/field
and what to do, exit code 2, no traceback (``--debug`` shows it). One test per message, through the
command line's main function (and a real ``pobench`` process where the environment matters)."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tasks.hh as hh_module
from bench.cli import main
from bench.stages.data import no_pairs_message
from tasks.base import shared_data_dir

REPO = Path(__file__).resolve().parents[2]
GOOD = {"chosen": "\n\nHuman: what is a good movie?\n\nAssistant: a helpful answer",
        "rejected": "\n\nHuman: what is a good movie?\n\nAssistant: go away"}
SHARED = shared_data_dir()  # before the fixture below points POBENCH_SHARED_DATA elsewhere


def good(i: int) -> bytes:
    """A well-formed HH record with its own prompt (the eval/train split hashes prompts)."""
    return json.dumps({k: v.replace("good movie", f"good movie from {1950 + i}") for k, v in GOOD.items()}).encode()


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Each test reports its own malformed records; --data-dir's POBENCH_SHARED_DATA is undone afterwards."""
    monkeypatch.setattr(hh_module, "_REPORTED", set())
    monkeypatch.setenv("POBENCH_SHARED_DATA", str(tmp_path / "no-shared-data"))
    monkeypatch.setenv("POBENCH_WORK_DIR", str(tmp_path / "work"))


def pobench(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code: int, err: str, *parts: str) -> str:
    """The run ended with exactly one error line, exit code 2, no traceback; it holds every part."""
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith(("pobench: error", "pobench: config error"))]
    assert len(errors) == 1 and errors[0] == lines[-1], err[-3000:]
    for part in parts:
        assert part in errors[0], (part, errors[0])
    return errors[0]


def hh_suite(tmp_path: Path, **options) -> Path:
    """A tiny HH suite (tiny random model, its pairs from the data set) that reads local files."""
    task = {"source": "local", "judge": "sentiment:vader", "eval_fraction": 0.3, "max_eval_pairs": 4, **options}
    path = tmp_path / "hh.yaml"
    path.write_text(json.dumps({
        "name": "hh-errors", "models": [{"id": "tiny"}], "tasks": ["hh"], "task_options": {"hh": task},
        "methods": {"dpo": {}}, "reference_row": False, "seeds": [0],
        "prefdata": {"source": "dataset", "prompts": 8},
        "train": {"steps": 1, "batch_size": 2, "peft": "full", "chat_template": False, "checkpoint_every": 0},
        "generation": {"backend": "hf", "prompts": 2, "samples_per_prompt": 1, "max_new_tokens": 4,
                       "dtype": "float32"}}))
    return path


def hh_data(tmp_path: Path, lines: list[bytes], name: str = "test.jsonl") -> tuple[Path, Path]:
    """``<data>/hh-rlhf/tiny/<name>`` with ``lines`` (padded with good records past the 200-byte LFS-pointer size)."""
    data = tmp_path / "data"
    folder = data / "hh-rlhf" / "tiny"
    folder.mkdir(parents=True)
    body = b"\n".join([*lines, *(good(i) for i in range(16))]) + b"\n"
    path = folder / name
    path.write_bytes(gzip.compress(body) if name.endswith(".gz") else body)
    return data, path


def run_args(tmp_path: Path, suite: Path | str, *overrides: str, data_dir: Path | None = None) -> list[str]:
    return ["run", str(suite), *overrides, "--work-dir", str(tmp_path / "work"), "--results-dir",
            str(tmp_path / "results"), *(["--data-dir", str(data_dir)] if data_dir else [])]


# ------------------------------------------------------------------------------------------------
# (a) a task whose data is not available offline


def test_hub_source_while_offline_says_what_to_set(capsys, tmp_path):
    code, _, err = pobench(capsys, *run_args(tmp_path, hh_suite(tmp_path, source="hub")))
    one_error(code, err, "pobench: error in prefdata hh: task 'hh' (task_options.hh.source: hub): the hub is off "
                         "(HF_HUB_OFFLINE is set)", "set task_options.hh.source to local and pass "
                         "`pobench run --data-dir DIR`", "DIR/hh-rlhf/")


def test_no_data_offline_names_the_folder_it_looked_in(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = pobench(capsys, *run_args(tmp_path, hh_suite(tmp_path, source="auto"), data_dir=empty))
    one_error(code, err, "task 'hh': no data available offline (the hub (Anthropic/hh-rlhf) is off: HF_HUB_OFFLINE "
                         f"is set; no hh-rlhf/ under {empty})", "pass `pobench run --data-dir DIR`")


def test_data_dir_must_be_a_directory(capsys, tmp_path):
    code, _, err = pobench(capsys, *run_args(tmp_path, hh_suite(tmp_path), data_dir=tmp_path / "nope"))
    one_error(code, err, f"pobench: error: --data-dir {tmp_path / 'nope'}: not a directory")


# ------------------------------------------------------------------------------------------------
# (b) a data file that is not UTF-8 or cannot be read, found through --data-dir


def test_non_utf8_line_names_file_line_and_byte(capsys, tmp_path):
    latin1 = json.dumps(GOOD).encode().replace(b"good movie", b"caf\xe9 movie")
    data, path = hh_data(tmp_path, [json.dumps(GOOD).encode(), json.dumps(GOOD).encode(), latin1])
    code, _, err = pobench(capsys, *run_args(tmp_path, hh_suite(tmp_path), data_dir=data))
    byte = latin1.index(0xE9) + 1
    one_error(code, err, f"pobench: error in prefdata hh: {path}:3: not UTF-8 text (byte {byte} of the line is "
                         "b'\\xe9'); save the file as UTF-8")


def test_truncated_gzip_names_the_file(capsys, tmp_path):
    many = [json.dumps({**GOOD, "chosen": GOOD["chosen"] + f" number {i * 7919 % 1000}"}).encode() for i in range(300)]
    data, path = hh_data(tmp_path, many, name="test.jsonl.gz")
    path.write_bytes(path.read_bytes()[:-40])  # an interrupted download
    code, _, err = pobench(capsys, *run_args(tmp_path, hh_suite(tmp_path), data_dir=data))
    one_error(code, err, f"pobench: error in prefdata hh: {path}", "cannot read the file (Compressed file ended",
              "is complete (a truncated download?)")


def test_non_utf8_imdb_review_names_the_file(capsys, tmp_path):
    reviews = tmp_path / "data" / "imdb" / "aclImdb" / "test"
    for label in ("pos", "neg"):
        (reviews / label).mkdir(parents=True)
        for i in range(3):
            (reviews / label / f"{i}_7.txt").write_text(f"A {label} review number {i} of a film I saw.")
    bad = reviews / "neg" / "2_1.txt"
    bad.write_bytes(b"A review in Latin-1: caf\xe9 cr\xe8me, not UTF-8.")
    code, _, err = pobench(capsys, *run_args(tmp_path, "smoke", "task_options.imdb.source=local",
                                             data_dir=tmp_path / "data"))
    one_error(code, err, f"pobench: error in prefdata imdb: {bad}: not UTF-8 text (byte 25)")


# ------------------------------------------------------------------------------------------------
# (c) and (d): malformed records, strict or not


def test_strict_malformed_record_names_file_and_line(capsys, tmp_path):
    data, path = hh_data(tmp_path, [json.dumps(GOOD).encode()] * 3 + [b"{not json"])
    code, _, err = pobench(capsys, *run_args(tmp_path, hh_suite(tmp_path, strict=True), data_dir=data))
    one_error(code, err, f"pobench: error in prefdata hh: {path}:4: invalid JSON (Expecting property name enclosed "
                         "in double quotes at column 2); fix or delete this record, or set task_options.hh.strict=false")


@pytest.mark.slow
def test_skipped_records_warn_once_and_are_counted_in_stage_and_run_records(capsys, tmp_path):
    data, path = hh_data(tmp_path, [json.dumps(GOOD).encode(), b"{not json", json.dumps({"chosen": "x"}).encode()])
    code, _, err = pobench(capsys, *run_args(tmp_path, hh_suite(tmp_path), data_dir=data))
    assert code == 0, err[-3000:]
    warned = [line for line in err.splitlines() if "malformed record" in line and not line.startswith("[pobench]")]
    assert warned == [f"pobench: warning: hh: skipped 2 malformed record(s): {path}:2: invalid JSON (Expecting "
                      f"property name enclosed in double quotes at column 2); {path}:3: record needs fields 'chosen' "
                      "and 'rejected' (task_options.hh.strict=true stops at the first instead)"]
    prefdata = json.loads(next((tmp_path / "work" / "prefdata").glob("*/record.json")).read_text())
    assert prefdata["task_record"]["skipped_records"] == 2
    assert [e["line"] for e in prefdata["task_record"]["skipped_examples"]] == [2, 3]
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*.json")]
    assert record["skipped_records"] == {"prefdata": 2, "generate": 2, "score": 2}


# ------------------------------------------------------------------------------------------------
# (e) unknown ids: the override (or the file) and the field, with what is available


@pytest.mark.parametrize("override, message", [
    ("methods=nosuch", "override methods=nosuch: methods.nosuch: unknown method 'nosuch'; available: ['dpo',"),
    ("tasks=[nosuch]", "override tasks=[nosuch]: tasks[0]: unknown task 'nosuch'; available: ['imdb',"),
    ("task_options.imdb.judge=nosuch:x", "override task_options.imdb.judge=nosuch:x: task_options.imdb.judge: "
                                         "unknown judge 'nosuch' in 'nosuch:x'; judges: sentiment"),
    ("generation.backend=nosuch", "override generation.backend=nosuch: generation.backend: 'nosuch' is not one of "
                                  "['auto', 'hf', 'vllm', 'openai']"),
])
def test_unknown_ids_name_the_override_field_and_the_choices(capsys, tmp_path, override, message):
    code, _, err = pobench(capsys, *run_args(tmp_path, "smoke", override))
    one_error(code, err, f"pobench: config error: {message}")


def test_unknown_method_in_a_file_names_the_file(capsys, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text((REPO / "configs" / "smoke.yaml").read_text().replace("  cdpo: {}", "  cdp0: {}"))
    code, _, err = pobench(capsys, *run_args(tmp_path, suite))
    one_error(code, err, f"pobench: config error: {suite}: methods.cdp0: unknown method 'cdp0'; available:")


# ------------------------------------------------------------------------------------------------
# (f) a model that cannot be loaded offline


def test_model_not_available_offline_names_the_model_and_what_to_do(capsys, tmp_path):
    code, _, err = pobench(capsys, *run_args(tmp_path, "smoke", "models=[{id: nosuch-org/nosuch-model}]"))
    one_error(code, err, "pobench: error in prefdata imdb: model 'nosuch-org/nosuch-model' (the suite's models[].id) "
                         "cannot be loaded offline: the hub is off (HF_HUB_OFFLINE is set) and the model is not in "
                         "the Hugging Face cache", "`huggingface-cli download nosuch-org/nosuch-model`")


def test_unreachable_hub_is_detected_at_once_instead_of_retried(tmp_path):
    """HF_HUB_OFFLINE unset and no network: without the check the hub client retried every file 5 times
    with backoff (48 s measured here for one model) before a connection error with a traceback."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
           and "proxy" not in k.lower()}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *run_args(tmp_path, "smoke",
                           "models=[{id: nosuch-org/nosuch-model}]")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert "pobench: the Hugging Face hub (127.0.0.1:9) is not reachable (Connection refused): working offline" \
        in proc.stderr
    one_error(proc.returncode, proc.stderr, "model 'nosuch-org/nosuch-model' (the suite's models[].id) cannot be "
                                            "loaded offline: the hub is off (HF_HUB_OFFLINE is set)")
    assert "Retrying in" not in proc.stderr  # the hub client's backoff messages (no wall-clock bound: shared machine)


# ------------------------------------------------------------------------------------------------
# (g) no usable preference pairs: advice that fits what was seen


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "mbpp" / "mbpp.jsonl").is_file(), reason="needs ../shared/data/mbpp")
def test_no_pairs_when_every_sample_fails_does_not_advise_lowering_a_zero_margin(capsys, tmp_path, monkeypatch):
    """With the reference-solution fallback off (on by default: then these samples pair with the references,
    tests/harness/test_harness_suite_code.py), the task names the option instead of a margin or sample count."""
    monkeypatch.setenv("POBENCH_SHARED_DATA", str(SHARED))
    suite = tmp_path / "mbpp.yaml"
    suite.write_text(json.dumps({
        "name": "mbpp-nopairs", "models": [{"id": "tiny"}], "tasks": ["mbpp"],
        "task_options": {"mbpp": {"source": "local", "reference_fallback": False}}, "methods": {"dpo": {}},
        "reference_row": False,
        "prefdata": {"source": "sample_and_judge", "prompts": 2, "samples_per_prompt": 2, "max_new_tokens": 4,
                     "min_margin": 0.0},
        "train": {"steps": 1, "batch_size": 2, "peft": "full", "chat_template": False, "checkpoint_every": 0},
        "generation": {"backend": "hf", "prompts": 2, "max_new_tokens": 4}}))
    code, _, err = pobench(capsys, *run_args(tmp_path, suite))
    line = one_error(code, err, "pobench: error in prefdata mbpp: prefdata for task 'mbpp': no usable preference pair",
                     "4 samples of 2 MBPP train problem(s) run against their tests",
                     "in 2 problem(s) no sample passed; set task_options.mbpp.reference_fallback: true")
    assert "min_margin" not in line and "samples_per_prompt to 2" not in line


def test_no_pairs_below_the_margin_advises_the_margin_with_the_gap_seen(capsys, tmp_path):
    # VADER scores lie in [-1, 1]: no gap can exceed a margin of 2.5
    code, _, err = pobench(capsys, *run_args(tmp_path, "smoke", "prefdata.min_margin=2.5", "prefdata.prompts=3"))
    one_error(code, err, "pobench: error in prefdata imdb: prefdata for task 'imdb': no usable preference pair",
              "12 samples of 3 prompts scored by sentiment:vader", "the largest score gap within a prompt is",
              "not above prefdata.min_margin=2.5; lower prefdata.min_margin below")


def test_no_pairs_message_for_each_cause():
    from types import SimpleNamespace

    from bench.config.schema import PrefDataConfig
    from tasks.base import Sample

    task = SimpleNamespace(name="t", judge=SimpleNamespace(label="j"), skipped_records=lambda: [1, 2])
    cfg = PrefDataConfig(min_margin=0.5, prompts=2, samples_per_prompt=2)
    samples = [Sample(prompt_id=p, prompt="x", completion=c) for p in "ab" for c in ("u", "v")]
    same = no_pairs_message(task, "sample_and_judge", cfg, samples, [0.3, 0.3, 0.7, 0.7])
    assert "every prompt's samples got the same score (2 distinct scores, equal within each prompt)" in same
    assert "min_margin" not in same
    small = no_pairs_message(task, "sample_and_judge", cfg, samples, [0.3, 0.4, 0.7, 0.6])
    assert "largest score gap within a prompt is 0.1, not above prefdata.min_margin=0.5" in small
    assert "(2 malformed records were skipped)" in no_pairs_message(task, "dataset", cfg, None, None)


# ------------------------------------------------------------------------------------------------
# --debug


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(capsys, tmp_path, where):
    args = run_args(tmp_path, hh_suite(tmp_path, source="hub"))
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    with pytest.raises(Exception, match=r"task 'hh' \(task_options.hh.source: hub\): the hub is off"):
        main(args)
