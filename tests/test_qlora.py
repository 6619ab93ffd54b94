"""QLoRA (model.quantization=4bit): an NF4 base under the learner, SFT and DPO, on CPU through bitsandbytes;
the rollout engines serve the unquantised base with the learner's adapter, and TIS corrects the gap."""

import json
import math
import sys

import pytest
import torch

pytest.importorskip("bitsandbytes")

from rlvr.core.config import effective_tis_cap, load_config  # noqa: E402
from rlvr.core.contract import Batch, Trajectory  # noqa: E402
from rlvr.training.learner import Learner, load_policy  # noqa: E402
from rlvr.training.algorithms import ObjectiveSpec  # noqa: E402

MODEL = "tiny-random-llama"


def _config(*overrides):
    return load_config(None, [f"model.name={MODEL}", "logging.wandb=disabled", "model.lora.rank=4",
                              "learner.precision=fp32", *overrides])


def _batch():
    g = torch.Generator().manual_seed(0)
    trajectories = [Trajectory(id=f"t/{i}", task_id="t", group_id="t", prompt_ids=torch.randint(10, 400, (8,), generator=g).tolist(),
                               completion_ids=torch.randint(10, 400, (6,), generator=g).tolist(), loss_mask=[1, 1, 0, 1, 1, 1],
                               logprobs=[0.0] * 6, reward=float(i % 2)) for i in range(4)]
    return Batch(trajectories=trajectories, advantages=[[1.0 if i % 2 else -1.0] * 6 for i in range(4)])


def test_a_4bit_learner_matches_the_full_precision_one_closely_and_trains():
    import bitsandbytes as bnb

    quantized = load_policy(_config("model.quantization=4bit"))
    full = load_policy(_config())
    layers = [m for m in quantized.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.quant_type == "nf4" and m.weight.quant_state.nested for m in layers)
    assert not isinstance(quantized.get_base_model().lm_head, bnb.nn.Linear4bit)
    batch = _batch()
    learners = [Learner(model, _config().learner, ObjectiveSpec()) for model in (quantized, full)]
    with torch.no_grad():
        logps = [torch.cat([l.completion_logprobs(mb) for mb in l.micro_batches(batch)]) for l in learners]
    mask = torch.tensor([t.loss_mask for t in batch.trajectories], dtype=torch.bool)
    difference = (logps[0] - logps[1]).abs()[mask].mean().item()
    assert 0 < difference < 0.05  # NF4 rounding moves log-probs a little, not a lot
    before = {n: p.detach().clone() for n, p in quantized.named_parameters() if p.requires_grad}
    metrics = learners[0].step(batch)
    assert math.isfinite(metrics["learner/loss"]) and metrics["learner/grad_norm"] > 0
    assert any(not torch.equal(before[n], p) for n, p in quantized.named_parameters() if p.requires_grad)


def test_4bit_gradients_equal_those_of_the_dequantised_model_after_a_no_grad_pass():
    """The learner's no-grad passes (old policy, reference) run first; bitsandbytes' CPU fast path would
    repack the weights there and backpropagate wrongly afterwards. The gradients must stay those of a full
    precision model holding the dequantised weights."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    quantized, full = load_policy(_config("model.quantization=4bit")), load_policy(_config())
    modules = dict(quantized.named_modules())
    with torch.no_grad():
        for name, module in full.named_modules():
            if isinstance(modules.get(name), bnb.nn.Linear4bit):
                weight = modules[name].weight
                module.weight.copy_(dequantize_4bit(weight.data, weight.quant_state).to(module.weight.dtype))
        same = dict(full.named_parameters())
        for name, p in quantized.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
                same[name].copy_(p)
    batch, grads = _batch(), []
    for model in (quantized, full):
        learner = Learner(model, _config().learner, ObjectiveSpec())
        with torch.no_grad():
            for mb in learner.micro_batches(batch):
                learner.completion_logprobs(mb)
        model.train()
        learner.backward(learner.micro_batches(batch), learner.batch_counts(batch))
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[1].items():
        torch.testing.assert_close(grads[0][name], grad, rtol=0.02, atol=1e-3 * grad.abs().max().item())


def test_rl_on_a_4bit_learner_runs_with_its_own_engine_model_and_tis(tmp_path):
    from rlvr.loop import train

    # a random model solves nothing: reward its first sampled token, so the groups are not flat and the
    # learner runs its trajectories (it leaves out those without advantage)
    (tmp_path / "first_token.py").write_text(
        "def first_token(trajectory, task):\n    return float(trajectory.completion_ids[0])\n")
    cfg = _config(f"output_dir={tmp_path}", "model.quantization=4bit", "steps=1", "data.tasks_per_step=2",
                  "rollout.group_size=2", "rollout.max_new_tokens=8", "rollout.max_turns=1", "eval.every=0",
                  f"rewards.functions=[{{name: '{tmp_path}/first_token.py:first_token'}}]")
    assert effective_tis_cap(cfg) == 2.0 and effective_tis_cap(_config()) is None
    run = train(cfg)
    assert (run.path / "adapter" / "adapter_config.json").exists()
    metrics = json.loads(run.metrics_file.read_text().splitlines()[-1])
    assert metrics["learner/zero_advantage_trajectories"] < 4 and metrics["learner/tis_weight"] > 0


def test_4bit_without_bitsandbytes_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match=r"model.quantization=4bit needs bitsandbytes: pip install 'rlvr\[qlora\]'"):
        load_policy(_config("model.quantization=4bit"))
