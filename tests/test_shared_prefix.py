"""The shared-prefix learner path equals the plain path: log-probs, loss and LoRA gradients."""

import pytest
import torch

from rlvr.training.algorithms import ObjectiveSpec
from rlvr.training.advantages import make_batch
from rlvr.core.config import AlgorithmConfig, LearnerConfig, LoraConfig
from rlvr.training.learner import Learner, plan_shared_prefix
from rlvr.training.models import add_lora, load_model
from rlvr.training.synthetic import synthetic_groups


def _policy(name):
    torch.manual_seed(0)
    model = add_lora(load_model(name, dtype=torch.float32), LoraConfig(rank=4, alpha=8))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model


def _batch(turns=2, prompt_tokens=48, completion_tokens=40, vocab=1000):
    # two groups of 4 with different completion lengths; with turns=2 each has masked tool-result tokens
    groups = synthetic_groups(2, 4, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                              vocab_size=vocab, turns=turns, seed=5)
    return make_batch(groups, AlgorithmConfig())[0]


def _grads_and_logprobs(model, batch, shared, budget, spec):
    learner = Learner(model, LearnerConfig(precision="fp32", shared_prefix=shared, micro_batch_tokens=budget), spec,
                      temperature=0.8, norm_tokens=64)
    model.zero_grad(set_to_none=True)
    micro = learner.micro_batches(batch)
    assert all((mb.prompt is not None) == shared for mb in micro)
    learner._fill_fixed_logprobs(micro)
    totals = learner.backward(micro, learner.batch_counts(batch))
    with torch.no_grad():
        logprobs = {}
        for mb in micro:
            lp = learner.completion_logprobs(mb)
            for row, i in enumerate(mb.indices):
                logprobs[i] = lp[row, : mb.lengths[row]]
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return totals, grads, logprobs, len(micro)


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-qwen2"])
@pytest.mark.parametrize("budget", [10_000, 80])  # whole groups per micro-batch / a group split across several
def test_shared_prefix_equals_plain(name, budget):
    batch = _batch()
    assert any(m == 0 for t in batch.trajectories for m in t.loss_mask)  # masked tool tokens inside completions
    spec = ObjectiveSpec(loss="grpo", aggregation="token-mean", beta=0.05)
    model = _policy(name)
    plain = _grads_and_logprobs(model, batch, False, 10_000, spec)
    shared = _grads_and_logprobs(model, batch, True, budget, spec)
    if budget == 80:
        assert shared[3] > 2  # completions of one group spread over several micro-batches
    assert shared[0]["loss"] == pytest.approx(plain[0]["loss"], abs=1e-6, rel=1e-5)
    assert shared[0]["kl"] == pytest.approx(plain[0]["kl"], abs=1e-6, rel=1e-4)
    for i in plain[2]:
        torch.testing.assert_close(shared[2][i], plain[2][i], atol=2e-5, rtol=1e-5)
    for n in plain[1]:
        assert plain[1][n].abs().sum() > 0, n
        torch.testing.assert_close(shared[1][n], plain[1][n], atol=1e-6, rtol=1e-4)


def test_shared_prefix_on_smollm2():
    batch = _batch(turns=3, prompt_tokens=64, completion_tokens=48, vocab=49152)
    model = _policy("smollm2-135m-instruct")
    spec = ObjectiveSpec(loss="gspo", aggregation="seq-mean-token-mean", clip_low=3e-4, clip_high=4e-4)
    plain = _grads_and_logprobs(model, batch, False, 10_000, spec)
    shared = _grads_and_logprobs(model, batch, True, 100, spec)
    for i in plain[2]:
        torch.testing.assert_close(shared[2][i], plain[2][i], atol=1e-4, rtol=1e-4)
    for n in plain[1]:
        torch.testing.assert_close(shared[1][n], plain[1][n], atol=1e-5, rtol=1e-3)


def test_plan_uses_the_shared_path_only_where_it_pays():
    batch = _batch(prompt_tokens=48)
    shared, plain = plan_shared_prefix(batch, 10_000)
    assert len(shared) == 2 and plain == []
    short_prompt = _batch(prompt_tokens=2, completion_tokens=80)  # saves 3 * 2 tokens of ~240: not worth it
    shared, plain = plan_shared_prefix(short_prompt, 10_000)
    assert shared == [] and plain == list(range(8))


def test_shared_rows_hold_one_completion_and_micro_batches_similar_lengths():
    from rlvr.training.learner import SIMILAR_LENGTHS

    batch = _batch(prompt_tokens=48, completion_tokens=60)
    for budget in (10_000, 120):
        shared, _ = plan_shared_prefix(batch, budget)
        for group in shared:
            rows = [row for micro in group for row in micro]
            assert all(len(row) == 1 for row in rows)
            for micro in group:
                lengths = [len(batch.trajectories[row[0]].completion_ids) for row in micro]
                assert lengths == sorted(lengths) and max(lengths) <= SIMILAR_LENGTHS * min(lengths)
                assert len(micro) * max(lengths) <= budget or len(micro) == 1
        assert sorted(row[0] for group in shared for micro in group for row in micro) == list(range(8))
