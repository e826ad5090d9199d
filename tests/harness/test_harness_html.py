"""The static leaderboard page renders in headless Chromium (skips when Debian's chromium is absent)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from bench.leaderboard import build_leaderboard
from bench.report import write_all

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000"]


def board():
    prompts = [f"p{i}" for i in range(12)]
    runs = []
    for label, method, beta, shift, kl in (("reference", "reference", None, 0.0, 0.0), ("dpo(beta=0.1)", "dpo", 0.1, 0.2, 2.0),
                                           ("dpo(beta=0.5)", "dpo", 0.5, 0.1, 0.8), ("ipo", "ipo", None, 0.05, 0.4)):
        per_sample = [{"prompt_id": p, "index": 0, "reward": 0.1 + shift + 0.03 * (i % 4), "kl": kl}
                      for i, p in enumerate(prompts)]
        runs.append({"row_id": f"imdb/m/{label}", "task": "imdb", "model": "m", "method": method, "label": label,
                     "hparams": {"beta": beta} if beta else {}, "seed": 0, "run_key": label,
                     "scores": {"metrics": {"reward": sum(r["reward"] for r in per_sample) / 12, "kl": kl},
                                "per_sample": per_sample, "directions": {"reward": True, "kl": False}}})
    return build_leaderboard("html-test", runs, manifest={"git": {"sha": "abc"}}, config_hash="h",
                             primary={"imdb": "reward"}, metric_info={"reward": {"higher_is_better": True},
                                                                      "kl": {"higher_is_better": False}},
                             paper_rows=[{"task": "imdb", "method": "dpo (paper)", "metric": "reward", "value": 0.9,
                                          "source": "example"}], kl_budget=5.0)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium)")
def test_leaderboard_page_renders_in_chromium(tmp_path):
    from PIL import Image

    written = write_all(board(), tmp_path / "out")
    url = written["html"].resolve().as_uri()
    shot = tmp_path / "shot.png"
    common = FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([CHROMIUM, *common, f"--screenshot={shot}", "--window-size=1400,1600", url],
                   check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 1600)
    colors = image.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 200, "the screenshot is (nearly) blank: the page did not render"
    dom = subprocess.run([CHROMIUM, *common, "--dump-dom", url], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert 'data-images-loaded="2"' in dom, "the embedded plots did not decode"
    assert dom.count("<tr class=\"measured\">") == 3 and "<tr class=\"paper\">" in dom
