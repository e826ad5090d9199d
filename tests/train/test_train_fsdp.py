"""accelerate's FSDP2 config (bench/accelerate/fsdp.yaml) for real: two CPU processes (gloo) shard the
tiny model with ``fully_shard`` and reach the one-process loss curve and saved weights (same global batch).

The environment of the workers is what ``accelerate launch --config_file bench/accelerate/fsdp.yaml``
exports (computed by accelerate itself from the file). accelerate (1.15) does not select FSDP on CPU:
``AcceleratorState`` only switches to ``DistributedType.FSDP`` inside its branch for GPU-like
distributed types (``accelerate/state.py``: ``elif self.distributed_type in [DistributedType.MULTI_GPU,
...]: ... if os.environ.get("ACCELERATE_USE_FSDP") ...``); MULTI_CPU is not in that list, so on CPU the
FSDP settings are silently ignored and the run is plain DDP. torch itself runs FSDP2 over gloo, and so
does accelerate's FSDP2 code once selected: the worker sets the state accelerate would have set on a
GPU machine (a test-only shim, a no-op where accelerate selects FSDP itself), and checks that the
model really was sharded (DTensor parameters, one FSDP unit per decoder layer).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train import test_train_resume as ddp
from tests.train.test_train_resume import curve, result_line

pytestmark = pytest.mark.slow  # ~15-20 s per two-process run on idle cores: outside `tox -e fast`, run by CI

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")

WORKER = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    import methods
    import bench.train.engine as engine
    from bench.train import LoraSettings, PreferenceTrainConfig, train_preference

    made = []

    def make_accelerator(config, output_dir, _original=engine.make_accelerator):
        accelerator = _original(config, output_dir)
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
        chosen = str(accelerator.distributed_type)
        fsdp_wanted = os.environ.get("ACCELERATE_USE_FSDP") == "true"
        if fsdp_wanted and accelerator.distributed_type == DistributedType.MULTI_CPU:
            # what AcceleratorState.__init__ does for MULTI_GPU: FSDP, with the plugin from the FSDP_* env
            accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
            accelerator.state.distributed_type = DistributedType.FSDP
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        made.append((accelerator, chosen))
        return accelerator

    engine.make_accelerator = make_accelerator

    out, batch_size, grad_accum, steps, method, lora, kill_at = sys.argv[1:8]
    if kill_at != "0" and os.environ.get("RANK") == "1":
        def killer():  # SIGKILL rank 1 as soon as the checkpoint of step kill_at is complete (torchrun ends rank 0)
            target = os.path.join(out, "checkpoints", f"step-{kill_at}")
            while not os.path.exists(target):
                time.sleep(0.005)
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Thread(target=killer, daemon=True).start()
    pairs = [{"prompt": f"Review {i}: the movie was", "chosen": " great and fun" * (1 + i % 3),
              "rejected": " bad and dull" * (1 + i % 2)} for i in range(12)]
    method, _, token_reference = method.partition(":")  # e.g. "sparsepo:online"
    config = PreferenceTrainConfig(model="tiny", steps=int(steps), batch_size=int(batch_size),
                                   grad_accum=int(grad_accum), lr=1e-3, warmup_steps=2, max_length=48,
                                   max_prompt_length=24, checkpoint_every=3, eval_at_steps=(2,), seed=7,
                                   lora=LoraSettings(r=4) if lora == "1" else None,
                                   token_reference=token_reference or "cached", tensorboard=False, progress_bar=False)
    result = train_preference(config, pairs, methods.get(method), out)
    accelerator, chosen = made[0]
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor
    module = accelerator._models[0]
    info = {"processes": result.extra["num_processes"], "accelerate_chose": chosen,
            "distributed_type": str(accelerator.distributed_type), "resumed": result.resumed_from_step,
            "fsdp_units": [n for n, m in module.named_modules() if isinstance(m, FSDPModule)],
            "dtensor_params": sum(isinstance(p, DTensor) for p in module.parameters()),
            "params": sum(1 for _ in module.parameters())}
    if accelerator.is_main_process:  # one line: the ranks share stdout, where two prints can interleave
        print("RESULT " + json.dumps(info), flush=True)
""")


def fsdp_env() -> dict[str, str]:
    """The variables ``accelerate launch --config_file bench/accelerate/fsdp.yaml`` exports to its workers."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        ["--config_file", str(ROOT / "bench" / "accelerate" / "fsdp.yaml"), "--num_processes", "2", "worker.py"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def fsdp_unavailable() -> str | None:
    if not os.path.exists(TORCHRUN):
        return "torchrun not installed"
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        return "this torch build has no torch.distributed / gloo"
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401  FSDP2
    except ImportError:
        return f"torch {torch.__version__} has no FSDP2 (torch.distributed.fsdp.fully_shard)"
    try:
        from accelerate.state import PartialState  # noqa: F401
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin  # noqa: F401
    except ImportError as exc:
        return f"accelerate lacks what the CPU shim sets: {exc}"
    return None


@pytest.fixture
def fsdp_worker(tmp_path, tmp_path_factory):
    reason = fsdp_unavailable()
    if reason:
        pytest.skip(reason)
    path = tmp_path / "fsdp_worker.py"
    path.write_text(WORKER)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env = {**base, "POBENCH_CACHE": str(tmp_path_factory.getbasetemp() / "fsdp-cache"),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return path, env


def saved(model_dir: Path) -> dict[str, torch.Tensor]:
    """The saved policy's weights: the file of full weights, or a LoRA policy (saved as its adapter)
    merged into its base as every stage loads it."""
    if (model_dir / "adapter_config.json").is_file():
        from bench.models import load_model

        return {k: v.detach() for k, v in load_model(str(model_dir))[0].state_dict().items()}
    return load_file(str(model_dir / "model.safetensors"))


def run(cmd, env, check=True):
    # a two-process FSDP run takes ~15 s on 2 idle cores, minutes when they are shared with other jobs
    return ddp.run(cmd, env, check=check, timeout=900)


def two_processes(script, *args) -> list[str]:
    return [TORCHRUN, "--standalone", "--nproc_per_node", "2", str(script), *map(str, args)]


@pytest.mark.parametrize("method,lora", [("dpo", False), ("sparsepo:online", True), ("tdpo2", True)],
                         ids=["dpo-full", "sparsepo-lora-online", "tdpo2-lora"])
def test_fsdp2_on_two_cpu_processes_matches_one_process(tmp_path, fsdp_worker, method, lora):
    """DPO, full fine-tuning (cached reference log-probs): 2 processes x batch 2. SparsePO with LoRA (reference
    forward every step through the sharded policy with adapters off, trainable mask heads) and TDPO2 with LoRA
    (KL from the cached reference summary, the policy's output-layer inputs hooked under FSDP): 2 processes x
    batch 1 x grad_accum 2 (FSDP2's ``set_requires_gradient_sync`` via ``accelerator.no_sync``). All: global
    batch 4 as one process with batch 4, 4 steps, a sharded checkpoint at step 3, the policy saved at step 2
    (``eval_at_steps``) and at the end.

    SparsePO runs with the reference online here: from the cache its losses differ by up to 5.6e-5 between
    the two (measured), not 1e-5. Its mask head's gradient is exactly 0 where the policy still equals the
    reference when both models run in the same batch; the cache was computed in other batches, so there it
    is float32 rounding (~1e-7), which Adam's normalised first step turns into moves of up to lr, different
    for batch 4 and batch 1."""
    script, env = fsdp_worker
    one, two = tmp_path / "one", tmp_path / "two"
    flag = "1" if lora else "0"
    single = run([sys.executable, str(script), str(one), "4", "1", "4", method, flag, "0"], env)
    per_process = ["1", "2"] if lora else ["2", "1"]
    sharded = run(two_processes(script, two, *per_process, "4", method, flag, "0"), {**env, **fsdp_env()})

    info = result_line(sharded)
    assert result_line(single)["processes"] == 1 and info["processes"] == 2
    # on CPU accelerate itself picks DDP over gloo (the shim above); where it picks FSDP the shim is a no-op
    assert info["accelerate_chose"] in ("DistributedType.MULTI_CPU", "DistributedType.FSDP")
    assert info["distributed_type"] == "DistributedType.FSDP"
    assert info["dtensor_params"] == info["params"]  # every parameter sharded
    assert any(u.endswith("layers.0") for u in info["fsdp_units"]), info["fsdp_units"]  # one unit per layer
    assert any(u.endswith("layers.1") for u in info["fsdp_units"]), info["fsdp_units"]

    steps_one, losses_one = zip(*curve(one))
    steps_two, losses_two = zip(*curve(two))
    assert steps_one == steps_two == (1, 2, 3, 4)
    assert losses_two == pytest.approx(losses_one, abs=1e-5)
    assert len(set(round(x, 4) for x in losses_one)) > 1  # the curve moves
    grad_one = [json.loads(x)["grad_norm"] for x in (one / "metrics.jsonl").read_text().splitlines()]
    grad_two = [json.loads(x)["grad_norm"] for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert grad_two == pytest.approx(grad_one, rel=1e-4)  # clipping saw the real (sharded) gradients

    # full weights (or the LoRA adapter), gathered on rank 0, in the same layout (tied lm_head saved once), loadable
    for name in ("model", "policies/step-2"):
        a, b = saved(one / name), saved(two / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=key)
    from bench.models import load_model

    model = load_model(str(two / "model"))[0]  # transformers' from_pretrained, with a LoRA adapter merged
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    torch.testing.assert_close(model.get_input_embeddings().weight.detach(),
                               saved(one / "model")["model.embed_tokens.weight"], atol=1e-5, rtol=1e-4)
    if method.startswith("sparsepo"):  # SparsePO's mask heads: trainable method modules outside the policy, sharded too
        heads_a = torch.load(one / "model" / "method_modules.pt")
        heads_b = torch.load(two / "model" / "method_modules.pt")
        for ha, hb in zip(heads_a, heads_b, strict=True):
            assert ha.keys() == hb.keys()
            for key in ha:
                assert type(hb[key]) is torch.Tensor, key  # gathered, not a DTensor shard
                torch.testing.assert_close(hb[key], ha[key], atol=1e-5, rtol=1e-4, msg=key)


def test_fsdp2_run_killed_after_a_sharded_checkpoint_resumes_to_the_same_result(tmp_path, fsdp_worker):
    """fsdp.yaml's SHARDED_STATE_DICT checkpoints (model, optimizer: one shard per process) load back: a run
    whose rank 1 is SIGKILLed after the step-3 checkpoint resumes and ends as the uninterrupted run."""
    script, env = fsdp_worker
    env = {**env, **fsdp_env()}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(two_processes(script, straight, 2, 1, 5, "dpo", 0, 0), env)
    killed = run(two_processes(script, resumed, 2, 1, 5, "dpo", 0, 3), env, check=False)
    assert killed.returncode != 0 and (resumed / "checkpoints" / "step-3").is_dir()
    assert not (resumed / "result.json").exists()
    assert (resumed / "checkpoints" / "step-3" / "pytorch_model_fsdp_0").is_dir()  # sharded, not a full copy
    finished = run(two_processes(script, resumed, 2, 1, 5, "dpo", 0, 0), env)
    assert result_line(finished)["resumed"] == 3
    assert curve(resumed) == curve(straight)
    a, b = saved(straight / "model"), saved(resumed / "model")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
