"""The KL reference after an SFT start: the starting policy (the init adapter loaded a second time as a
frozen PEFT adapter, no second model copy), or the base model with algorithm.reference=base."""

import pytest
import torch
from test_learner import _batch, _policy

from rlvr.core.config import load_config
from rlvr.training.learner import build_learner
from rlvr.training.models import REFERENCE_ADAPTER, AdapterState


@pytest.fixture(scope="module")
def init_adapter(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "adapter"
    AdapterState.of(_policy(), 0).save(path)  # an "SFT result": a LoRA adapter with non-zero B
    return str(path)


def _learner(init_adapter, *overrides):
    return build_learner(load_config(None, ["model.name=tiny-random-llama", f"model.init_adapter={init_adapter}",
                                            "algorithm.beta=0.1", "learner.precision=fp32", "learner.device=cpu",
                                            "learner.lr=1e-2", *overrides]))


def _lora_b(model, adapter):
    return {n: p.detach().clone() for n, p in model.named_parameters() if f"lora_B.{adapter}." in n}


def test_kl_is_exactly_zero_at_step_zero_when_starting_from_an_adapter(init_adapter):
    learner = _learner(init_adapter)
    assert set(learner.model.peft_config) == {"default", REFERENCE_ADAPTER}
    frozen = _lora_b(learner.model, REFERENCE_ADAPTER)
    assert all(not p.requires_grad for n, p in learner.model.named_parameters() if REFERENCE_ADAPTER in n)
    first = learner.step(_batch())
    assert first["learner/kl"] == 0.0  # the policy IS the reference before its first update
    # the step trained the default adapter only; the reference stayed the starting policy
    assert all(torch.equal(frozen[n], p) for n, p in _lora_b(learner.model, REFERENCE_ADAPTER).items())
    assert learner.model.active_adapter == "default" and all(p.requires_grad for p in learner.params)
    assert learner.step(_batch(seed=1))["learner/kl"] > 0.0
    # the adapter handed to engines and checkpoints is the trained one, without the reference copy
    assert not any(REFERENCE_ADAPTER in k for k in learner.adapter_state().tensors)


def test_reference_base_is_the_model_without_adapter(init_adapter):
    learner = _learner(init_adapter, "algorithm.reference=base")
    assert set(learner.model.peft_config) == {"default"}
    assert learner.step(_batch())["learner/kl"] > 0.0  # the SFT adapter differs from the base model
