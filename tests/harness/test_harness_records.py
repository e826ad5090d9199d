"""Run records and per-sample files round-trip exactly (what `pobench leaderboard` and `check` read)."""
from __future__ import annotations

from bench.runner import read_run_records, write_run_records


def test_records_round_trip_with_unicode_line_separators(tmp_path):
    # completions are model output: U+2028, U+0085 and form feeds are text, not line breaks of the file
    odd = "fine\u2028film\x85really\x0cgood"
    run = {"row_id": "imdb/tiny/dpo", "task": "imdb", "model": "tiny", "method": "dpo", "label": "dpo",
           "hparams": {"beta": 0.1}, "seed": 0, "step": 3, "run_key": "k",
           "samples": [{"prompt_id": "p0", "index": 0, "prompt": "The movie", "completion": odd},
                       {"prompt_id": "p1", "index": 0, "prompt": "A", "completion": " ok"}],
           "scores": {"metrics": {"reward": 0.25, "kl": 0.5}, "directions": {"reward": True, "kl": False},
                      "per_sample": [{"prompt_id": "p0", "index": 0, "reward": 0.5, "kl": 1.0},
                                     {"prompt_id": "p1", "index": 0, "reward": 0.0, "kl": 0.0}]}}
    write_run_records([run], tmp_path, {"git": {}})
    (back,) = read_run_records(tmp_path)
    assert back["samples"][0]["completion"] == odd and back["step"] == 3
    assert back["scores"]["per_sample"] == run["scores"]["per_sample"]
    assert back["scores"]["metrics"] == run["scores"]["metrics"]
