"""A run killed with SIGKILL mid-training resumes to the same weights and losses as an
uninterrupted run; two CPU processes (DDP over gloo) reach the one-process loss curve."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # tens of seconds per test: outside `tox -e fast`, run by CI

WORKER = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    import methods
    from bench.train import PreferenceTrainConfig, train_preference

    out, batch_size, steps, kill_at, method = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    lora = None
    if method.endswith("+lora"):  # LoRA: checkpoints hold the adapters (and mask heads), not the frozen base
        method, lora = method[:-len("+lora")], {"r": 4, "alpha": 8}
    pairs = [{"prompt": f"Review {i}: the movie was", "chosen": " great and fun" * (1 + i % 3),
              "rejected": " bad and dull" * (1 + i % 2)} for i in range(12)]
    if kill_at:
        def killer():  # SIGKILL ourselves as soon as the checkpoint of step kill_at is on disk
            target = os.path.join(out, "checkpoints", f"step-{kill_at}")
            while not os.path.exists(target):
                time.sleep(0.005)
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Thread(target=killer, daemon=True).start()
    config = PreferenceTrainConfig(model="tiny", steps=steps, batch_size=batch_size, lr=1e-3, warmup_steps=2,
                                   max_length=48, max_prompt_length=24, checkpoint_every=3, seed=7,
                                   tensorboard=False, progress_bar=False, lora=lora)
    result = train_preference(config, pairs, methods.get(method), out)
    print("RESULT " + json.dumps({"processes": result.extra["num_processes"], "resumed": result.resumed_from_step}))
""")


@pytest.fixture
def worker(tmp_path, monkeypatch, tmp_path_factory):
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    env = {**os.environ, "POBENCH_CACHE": str(tmp_path_factory.getbasetemp() / "resume-cache"),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return path, env


def run(cmd, env, check=True, timeout=240):
    # own session, so a hung launcher and its workers can be killed together
    popen = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        stdout, stderr = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        stdout, stderr = popen.communicate()
        raise AssertionError(f"{cmd} timed out:\n{stdout[-3000:]}\n{stderr[-3000:]}") from None
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def result_line(proc) -> dict:
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def curve(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def weights(run_dir) -> dict[str, torch.Tensor]:
    adapter = run_dir / "model" / "adapter_model.safetensors"  # a LoRA policy is saved as its adapter
    return load_file(str(adapter if adapter.is_file() else run_dir / "model" / "model.safetensors"))


# cached reference / online reference + mask heads / LoRA (checkpoints without the frozen base)
@pytest.mark.parametrize("method", ["dpo", "sparsepo", "sparsepo+lora"])
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, worker, method):
    script, env = worker
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run([sys.executable, str(script), str(straight), "4", "10", "0", method], env)

    killed = run([sys.executable, str(script), str(resumed), "4", "10", "6", method], env, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (resumed / "checkpoints" / "step-6").is_dir() and not (resumed / "result.json").exists()
    kept = torch.load(resumed / "checkpoints" / "step-6" / "pytorch_model.bin", weights_only=True)
    if method.endswith("+lora"):  # what training changes: adapters and mask heads, no frozen base weight
        assert kept and all("lora_" in k or not k.startswith("policy.") for k in kept), [k for k in kept if "lora_" not in k and k.startswith("policy.")][:5]
        assert any("lora_" in k for k in kept) and any(not k.startswith("policy.") for k in kept)
    else:
        assert any("embed_tokens" in k for k in kept)  # full fine-tuning: every weight
    finished = run([sys.executable, str(script), str(resumed), "4", "10", "0", method], env)
    assert result_line(finished)["resumed"] == 6

    assert curve(resumed) == curve(straight)  # every step logged once, identical losses
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    if method == "sparsepo":
        heads_a = torch.load(straight / "model" / "method_modules.pt")
        heads_b = torch.load(resumed / "model" / "method_modules.pt")
        for ha, hb in zip(heads_a, heads_b):
            for key in ha:
                assert torch.equal(ha[key], hb[key]), key


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_two_cpu_processes_match_one_process_with_the_same_global_batch(tmp_path, worker):
    script, env = worker
    one, two = tmp_path / "one", tmp_path / "two"
    single = run([sys.executable, str(script), str(one), "4", "4", "0", "dpo"], env)
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    double = run([torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(two), "2", "4", "0", "dpo"], env)
    assert result_line(single)["processes"] == 1
    # `accelerate launch --cpu --num_processes 2` can silently start one process: check the world size
    assert result_line(double)["processes"] == 2
    steps_one, losses_one = zip(*curve(one))
    steps_two, losses_two = zip(*curve(two))
    assert steps_one == steps_two == (1, 2, 3, 4)
    assert losses_two == pytest.approx(losses_one, abs=1e-5)
    assert len(set(round(x, 4) for x in losses_one)) > 1  # the curve moves
    a, b = weights(one), weights(two)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
