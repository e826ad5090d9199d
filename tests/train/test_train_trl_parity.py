"""Our DPO loss and gradients equal TRL's DPOTrainer on the same tiny model and batch."""
from __future__ import annotations

import copy

import pytest
import torch

import methods
from bench.models import tiny_model
from bench.train import PreferenceTrainConfig
from bench.prompts import PromptFormat
from bench.train.data import collate, tokenize_rows
from bench.train.policy import FrozenReference
from bench.train.preference import PreferenceModule

trl = pytest.importorskip("trl", reason="TRL is the reference implementation (pip install 'pobench[test]')")
datasets = pytest.importorskip("datasets")

PAIRS = [
    {"prompt": "The movie was", "chosen": " wonderful, I loved every minute.", "rejected": " boring."},
    {"prompt": "Honestly, the plot", "chosen": " kept me guessing", "rejected": " made no sense at all and dragged on"},
    {"prompt": "I would rate it", "chosen": " ten out of ten", "rejected": " two out of ten, sadly"},
    {"prompt": "The acting", "chosen": " was superb", "rejected": " was wooden and flat"},
]


def _perturbed(seed: int):
    """A tiny model whose policy differs from the reference (so rewards and margins are non-zero)."""
    policy, tokenizer = tiny_model(seed=seed)
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for p in policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return policy, reference, tokenizer


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_and_gradients_match_trl(tmp_path, monkeypatch, beta):
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "cache"))
    policy, reference, tokenizer = _perturbed(seed=0)
    trl_policy, trl_reference = copy.deepcopy(policy), copy.deepcopy(reference)

    config = PreferenceTrainConfig(max_length=64, max_prompt_length=32)
    examples, _ = tokenize_rows(PAIRS, tokenizer, response_keys=("chosen", "rejected"), max_length=64,
                                prompt_format=PromptFormat(False, 32))
    batch = collate(examples, tokenizer.pad_token_id)
    ref = FrozenReference(reference, lora=False)
    ref.model = reference.eval()
    ours = PreferenceModule(policy, methods.get("dpo", beta=beta), ref, "online", config)
    our_out = ours(batch, {})
    our_out.loss.backward()

    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, bf16=False, use_cpu=True,
                         per_device_train_batch_size=len(PAIRS), report_to=[], max_length=None,
                         gradient_checkpointing=False, precompute_ref_log_probs=False)
    trainer = trl.DPOTrainer(model=trl_policy, ref_model=trl_reference, args=args,
                             train_dataset=datasets.Dataset.from_list(PAIRS), processing_class=tokenizer)
    # the same token ids on both sides: TRL's own collator over our tokenisation
    inputs = trainer.data_collator([{"prompt_ids": e.prompt, "chosen_ids": e.responses[0],
                                     "rejected_ids": e.responses[1]} for e in examples])
    assert torch.equal(inputs["input_ids"], batch.input_ids)
    trl_model = trainer.model
    trl_model.train()
    trl_loss = trainer.compute_loss(trl_model, inputs)
    trl_loss.backward()

    assert abs(float(our_out.loss) - float(trl_loss)) < 1e-5
    assert float(our_out.loss) != pytest.approx(0.6931471, abs=1e-4)  # the perturbation is visible
    ours_grads = dict(policy.named_parameters())
    compared = 0
    for name, param in trl_model.named_parameters():
        assert param.grad is not None, name
        torch.testing.assert_close(ours_grads[name].grad, param.grad, atol=1e-5, rtol=1e-4, msg=name)
        compared += 1
    assert compared == len(ours_grads)
