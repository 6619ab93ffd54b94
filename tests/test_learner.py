"""The learner on a tiny random llama with the real SmolLM2 tokenizer, in float32 for exactness."""

import pytest
import torch

from rlvr.training.algorithms import AGGREGATIONS, LOSSES, ObjectiveSpec
from rlvr.training.advantages import make_batch
from rlvr.core.config import AlgorithmConfig, LearnerConfig, LoraConfig
from rlvr.core.contract import Batch
from rlvr.training.learner import Learner, pack, plan_micro_batches, split_groups
from rlvr.training.models import add_lora, load_model
from rlvr.training.synthetic import synthetic_groups


def _policy(name="tiny-random-llama", seed=0):
    torch.manual_seed(seed)  # LoRA A is drawn from the global generator: two policies of one seed are equal
    model = add_lora(load_model(name, dtype=torch.float32), LoraConfig(rank=4, alpha=8))
    with torch.no_grad():  # LoRA B starts at zero; make the adapter matter so gradients reach every weight
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model


def _learner(model, spec=ObjectiveSpec(), demonstrations=None, **cfg):
    cfg = LearnerConfig(precision="fp32", **{"shared_prefix": False, **cfg})  # the packed path (see test_shared_prefix)
    return Learner(model, cfg, spec, temperature=0.7, total_steps=10, norm_tokens=64, demonstrations=demonstrations)


def _batch(num_groups=3, group_size=4, turns=2, seed=0, vocab=1000):
    groups = synthetic_groups(num_groups, group_size, prompt_tokens=24, completion_tokens=40, vocab_size=vocab,
                              turns=turns, seed=seed)
    return make_batch(groups, AlgorithmConfig())[0]


def test_pack_respects_the_budget_and_keeps_every_item():
    lengths = [50, 30, 30, 20, 90, 120]
    bins = pack(lengths, capacity=100)
    assert sorted(i for b in bins for i in b) == list(range(6))
    for b in bins:
        assert sum(lengths[i] for i in b) <= 100 or len(b) == 1
    assert [5] in bins  # longer than the budget: alone


def test_rows_are_as_long_as_the_longest_trajectory():
    lengths = [120, 60, 50, 40, 30, 20, 100]
    plan = plan_micro_batches(lengths, micro_batch_tokens=250)
    rows = [row for micro in plan for row in micro]
    assert sorted(i for row in rows for i in row) == list(range(7))
    assert all(sum(lengths[i] for i in row) <= 120 for row in rows)
    assert len(rows) == 4 and all(len(micro) <= 2 for micro in plan)  # 250 // 120 = 2 rows per micro-batch


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-qwen2"])
def test_packed_logprobs_equal_one_sequence_at_a_time(name):
    model = _policy(name)
    learner = _learner(model, micro_batch_tokens=10_000)
    batch = _batch()
    [mb] = learner.micro_batches(batch)  # everything packed into one row
    with torch.no_grad():
        packed = learner.completion_logprobs(mb)
        assert sorted(mb.indices) == list(range(len(batch.trajectories))) and mb.input_ids.shape[0] > 1
        for i, t in zip(range(len(mb.indices)), (batch.trajectories[j] for j in mb.indices)):
            ids = torch.tensor([t.prompt_ids + t.completion_ids])
            logits = model(input_ids=ids).logits[0, len(t.prompt_ids) - 1 : -1].float() / 0.7
            expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(t.completion_ids)[:, None])[:, 0]
            scored = torch.tensor(t.loss_mask, dtype=torch.bool)  # the LM head runs only where the loss looks
            assert (~scored).any() and scored.any()
            got = packed[i, : len(t.completion_ids)]
            torch.testing.assert_close(got[scored], expected[scored], atol=1e-5, rtol=1e-5)
            assert (got[~scored] == 0).all()


@pytest.mark.parametrize("aggregation", list(AGGREGATIONS))
@pytest.mark.parametrize("loss", list(LOSSES))
def test_micro_batch_gradients_equal_full_batch_gradient(loss, aggregation):
    batch = _batch()
    spec = ObjectiveSpec(loss=loss, aggregation=aggregation, beta=0.05)
    grads = []
    for budget in (10_000, 150):  # one micro-batch vs several
        model = _policy()
        learner = _learner(model, spec, micro_batch_tokens=budget)
        micro = learner.micro_batches(batch)
        learner._fill_fixed_logprobs(micro)
        learner.backward(micro, learner.batch_counts(batch))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        assert (len(micro) == 1) == (budget == 10_000)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n in grads[0]:
        assert grads[0][n].abs().sum() > 0, n
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-4)


def test_reference_logprobs_are_the_base_model_without_a_copy():
    model = _policy()
    learner = _learner(model)
    [mb] = learner.micro_batches(_batch(num_groups=1, group_size=2))
    base = load_model("tiny-random-llama", dtype=torch.float32)
    base_learner = _learner(add_lora(base, LoraConfig(rank=4)))  # fresh LoRA: B = 0, same as the base
    with torch.no_grad():
        ref = learner.completion_logprobs(mb, adapter=False)
        policy = learner.completion_logprobs(mb)
        torch.testing.assert_close(ref, base_learner.completion_logprobs(mb), atol=1e-5, rtol=1e-5)
    assert (ref - policy).abs().max() > 1e-3


def test_step_improves_the_objective_and_runs_k_epochs():
    batch = _batch(seed=3)
    model = _policy()
    learner = _learner(model, ObjectiveSpec(beta=0.01), lr=5e-3, epochs=2, micro_batch_tokens=300)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def objective():  # sum_t A_t log pi(y_t): what the policy gradient pushes up
        with torch.no_grad():
            return sum((learner.completion_logprobs(mb) * mb.advantages * mb.mask).sum().item()
                       for mb in learner.micro_batches(batch))

    start = objective()
    for _ in range(5):
        last = learner.step(batch)
    assert objective() > start + 1.0
    assert learner.steps_done == 5 and learner.scheduler.last_epoch == 10  # K=2 optimiser steps per step
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    assert 0 <= last["learner/clip_frac"] <= 1 and last["learner/kl"] >= 0
    assert last["learner/tokens"] == batch.num_tokens


def test_an_empty_batch_skips_the_update_but_counts_the_step():
    """Every group filtered as flat (algorithm.filter_zero_variance): no optimiser step, the version moves on."""
    model = _policy()
    learner = _learner(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert learner.step(Batch(trajectories=[], advantages=[])) == {"learner/skipped": 1.0}
    assert learner.steps_done == 1 and learner.scheduler.last_epoch == 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_mini_batches_take_one_optimiser_step_per_slice_of_groups():
    """learner.mini_batches=2: two optimiser steps per batch, each on half the groups; the first is exactly a
    one-step learner's step on that half (same gradient normalisation, the same fresh Adam)."""
    batch = _batch(num_groups=4, seed=5)
    halves = split_groups(batch, 2)
    assert [[t.group_id for t in h.trajectories] for h in halves] == [
        [t.group_id for t in batch.trajectories[:8]], [t.group_id for t in batch.trajectories[8:]]]
    assert len(split_groups(batch, 9)) == 4
    assert [len(h.trajectories) for h in split_groups(_batch(num_groups=5), 2)] == [8, 12]
    split, whole = _policy(), _policy()
    learner = _learner(split, lr=1e-2, mini_batches=2)
    after_each = []
    learner.optimizer.register_step_post_hook(lambda *_: after_each.append(
        {n: p.detach().clone() for n, p in split.named_parameters() if p.requires_grad}))
    learner.step(batch)
    _learner(whole, lr=1e-2).step(halves[0])
    assert len(after_each) == 2 and learner.scheduler.last_epoch == 2
    for name, p in whole.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(after_each[0][name], p.detach(), rtol=1e-5, atol=1e-7)
            assert not torch.equal(after_each[1][name], after_each[0][name])


def test_saved_adapter_is_standard_peft_and_state_dict_restores_the_optimizer(tmp_path):
    from peft import PeftModel

    batch = _batch(num_groups=1)
    learner = _learner(_policy(), lr=1e-3)
    learner.step(batch)
    learner.adapter_state().save(tmp_path / "adapter")
    [mb] = learner.micro_batches(batch)
    with torch.no_grad():
        expected = learner.completion_logprobs(mb)
        reloaded = PeftModel.from_pretrained(load_model("tiny-random-llama", dtype=torch.float32), tmp_path / "adapter",
                                             is_trainable=True)
        torch.testing.assert_close(_learner(reloaded).completion_logprobs(mb), expected)

    other = _learner(_policy(seed=1), lr=1e-3)
    other.load_state_dict(learner.state_dict())
    assert other.steps_done == 1
    with torch.no_grad():
        torch.testing.assert_close(other.completion_logprobs(mb), expected)
    a, b = learner.optimizer.state_dict()["state"], other.optimizer.state_dict()["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)


def test_bf16_autocast_matches_fp32_loosely():
    model = _policy()
    batch = _batch(num_groups=1, group_size=2)
    fp32 = _learner(model)
    bf16 = Learner(model, LearnerConfig(precision="bf16"), ObjectiveSpec(), temperature=0.7)
    [mb] = fp32.micro_batches(batch)
    with torch.no_grad():
        a, b = fp32.completion_logprobs(mb), bf16.completion_logprobs(mb)
    assert a.dtype == b.dtype == torch.float32  # log-probs always in float32
    assert (a - b).abs().mean() < 0.05


def test_the_first_mini_batch_needs_no_old_policy_pass():
    """No update has happened before the first mini-batch, so its old log-probs are its log-probs: the step
    skips that forward pass (and only that one) and updates exactly as with it."""
    batch = _batch(num_groups=4, seed=5)
    models, passes = [_policy(), _policy()], []
    for model, skip in zip(models, (True, False)):
        learner = _learner(model, lr=1e-2, mini_batches=2)
        if not skip:  # the same learner computing every old-policy pass
            fill = learner._fill_fixed_logprobs
            learner._fill_fixed_logprobs = lambda micro, first=False: fill(micro, first=False)
        forward = learner.completion_logprobs
        counted = []
        learner.completion_logprobs = lambda mb, **kw: counted.append(torch.is_grad_enabled()) or forward(mb, **kw)
        learner.step(batch)
        passes.append(counted.count(False))
    assert passes[0] == passes[1] // 2 > 0  # half the old-policy passes: the second mini-batch's
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_chunked_head_logprobs_and_gradients_equal_log_softmax(monkeypatch):
    """The fused head against log_softmax on full logits: values and the hidden states' gradient, over several
    chunks (the gradient is computed in the forward pass). A trainable head is refused."""
    from rlvr.training import learner
    from rlvr.training.learner import LinearLogprob

    torch.manual_seed(0)
    n, hidden_size, vocab = 2 * 40 + 5, 16, 50
    monkeypatch.setattr(learner, "LOGIT_CHUNK_ELEMENTS", 40 * vocab)  # three chunks, the last a short one
    hidden = torch.randn(n, hidden_size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, dtype=torch.float64)
    targets = torch.randint(0, vocab, (n,))
    upstream = torch.randn(n, dtype=torch.float64)

    fused = LinearLogprob.logprobs(hidden, weight, targets, 0.7)
    (fused_grad,) = torch.autograd.grad((fused * upstream).sum(), [hidden])
    expected = torch.log_softmax(hidden @ weight.T / 0.7, -1).gather(-1, targets[:, None])[:, 0]
    (expected_grad,) = torch.autograd.grad((expected * upstream).sum(), [hidden])
    torch.testing.assert_close(fused.double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused_grad.double(), expected_grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the old-policy and reference passes: no gradient work at all
        torch.testing.assert_close(LinearLogprob.logprobs(hidden, weight, targets, 0.7).double(), expected.detach(),
                                   rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="frozen LM head"):
        LinearLogprob.logprobs(hidden, weight.requires_grad_(), targets, 0.7)


def test_gradient_checkpointing_gives_the_same_gradients():
    """Recomputing each layer in backward changes memory, not the gradient (the plain path, fp32)."""
    batch, model = _batch(num_groups=2, group_size=3), _policy()
    grads = []
    for checkpointing in (False, True):  # the second learner turns it on for the same model
        learner = _learner(model, gradient_checkpointing=checkpointing)
        learner.model.train()
        learner.optimizer.zero_grad(set_to_none=True)
        learner.backward(learner.micro_batches(batch), learner.batch_counts(batch))
        grads.append({n: p.grad.clone() for n, p in learner.model.named_parameters() if p.requires_grad})
        assert learner.decoder.layers[0].gradient_checkpointing is checkpointing
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_lora_on_the_lm_head_is_refused():
    """The fused head reads the head's frozen weight: a LoRA there would be ignored, so it is an error."""
    model = add_lora(load_model("tiny-random-llama", dtype=torch.float32),
                     LoraConfig(rank=4, alpha=8, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="target_modules"):
        _learner(model)


def _flatten_group(batch: Batch, group: int) -> Batch:
    """The batch with one group's advantages set to zero everywhere (as GRPO gives a group of equal rewards)."""
    ids = list(dict.fromkeys(t.group_id for t in batch.trajectories))
    return Batch(trajectories=batch.trajectories, advantages=[
        [0.0] * len(a) if t.group_id == ids[group] else a for t, a in zip(batch.trajectories, batch.advantages)])


@pytest.mark.parametrize("loss", ["grpo", "cispo", "gspo"])
def test_trajectories_without_advantage_are_not_run_and_the_update_is_the_same(loss):
    """Without a KL term a zero-advantage trajectory adds exactly zero gradient: the learner leaves it out of
    its passes but keeps it in the loss's denominators, so both steps (the second mini-batch entirely flat:
    Adam's momentum still moves the weights) match the learner that runs everything."""
    batch = _flatten_group(_flatten_group(_batch(num_groups=4, seed=5), 0), 2)
    batch = _flatten_group(batch, 3)  # mini-batch 2 (groups 2 and 3) has no advantage at all
    models, runs = [_policy(), _policy()], []
    for model, skip in zip(models, (True, False)):
        learner = _learner(model, ObjectiveSpec(loss=loss), lr=1e-2, mini_batches=2)
        learner.skip_zero_advantage = skip
        forward = learner.completion_logprobs
        counted = []
        learner.completion_logprobs = lambda mb, **kw: counted.append(mb.input_ids.shape[0]) or forward(mb, **kw)
        runs.append((learner.step(_batch(num_groups=4, seed=6)), learner.step(batch), counted))
    (_, skipped, rows_skip), (_, full, rows_full) = runs
    assert skipped["learner/zero_advantage_trajectories"] == 12 and full["learner/zero_advantage_trajectories"] == 0
    assert sum(rows_skip) < sum(rows_full)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert skipped["learner/loss"] == pytest.approx(full["learner/loss"], rel=1e-5, abs=1e-8)


def test_a_kl_term_keeps_every_trajectory():
    """beta > 0: the KL term's gradient does not vanish with the advantage, so nothing is skipped."""
    learner = _learner(_policy(), ObjectiveSpec(beta=0.1))
    assert not learner.skip_zero_advantage
    metrics = learner.step(_flatten_group(_batch(num_groups=2), 0))
    assert metrics["learner/zero_advantage_trajectories"] == 0


def _with_exact_logprobs(model, batch: Batch, temperature: float = 0.7) -> Batch:
    """The batch with each trajectory's behaviour log-probs replaced by the model's own, one sequence at a time."""
    trajectories = []
    with torch.no_grad():
        for t in batch.trajectories:
            ids = torch.tensor([t.prompt_ids + t.completion_ids])
            logits = model(input_ids=ids).logits[0, len(t.prompt_ids) - 1:-1].float() / temperature
            logp = torch.log_softmax(logits, -1).gather(-1, ids[0, len(t.prompt_ids):, None])[:, 0]
            trajectories.append(t.model_copy(update={"logprobs": [float(v) * m for v, m in zip(logp, t.loss_mask)]}))
    return Batch(trajectories=trajectories, advantages=batch.advantages)


def test_rollout_old_logprobs_take_the_engines_and_skip_the_old_policy_pass():
    """learner.old_logprobs=rollout: the old policy is the behaviour log-probs, so no old-policy pass runs; when
    those equal the policy's own (a same-precision engine), the update is the recomputing learner's."""
    models = [_policy(), _policy()]
    batch = _with_exact_logprobs(models[0], _batch(num_groups=4, seed=5))
    passes = []
    for model, mode in zip(models, ("rollout", "recompute")):
        learner = _learner(model, lr=1e-2, mini_batches=2, old_logprobs=mode)
        forward, counted = learner.completion_logprobs, []
        learner.completion_logprobs = lambda mb, **kw: counted.append(torch.is_grad_enabled()) or forward(mb, **kw)
        learner.step(batch)
        passes.append(counted.count(False))
    assert passes[0] == 0 < passes[1]
    # equal up to float32 summation order (one sequence at a time against packed; it differs by CPU kernel: an
    # AVX2 CPU left one weight of 512 2.8e-6 apart), a thousandth of one Adam step at lr 1e-2
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    learner = _learner(_policy(), lr=1e-2, mini_batches=2, old_logprobs="rollout")
    metrics = learner.step(_batch(num_groups=4, seed=5))  # synthetic behaviour log-probs, far from the policy's
    assert metrics["learner/behaviour_logp_abs_diff"] == 0.0 and metrics["learner/is_ratio_mean"] == 1.0


def test_the_demonstration_term_adds_coef_times_their_nll_gradient_to_each_update():
    """algorithm.sft_coef (PPO-ptx): an update's gradient is the policy loss's plus coef x the demonstrations'
    mean NLL's, and learner/demonstration_nll is that mean, computed one sequence at a time here."""
    from rlvr.training.algorithms import nll_objective
    from rlvr.training.learner import DemonstrationLoss

    batch, examples = _batch(num_groups=2, seed=1), _batch(num_groups=2, seed=7).trajectories
    demonstrations = DemonstrationLoss(examples, coef=0.5, batch_size=3, seed=0)
    drawn = demonstrations.draw(step=0, mini_batch=0)
    with_term, alone = _policy(), _policy()
    learner = _learner(with_term, demonstrations=demonstrations)
    grads = []
    learner.optimizer.register_step_pre_hook(lambda *_: grads.append(
        {n: p.grad.clone() for n, p in with_term.named_parameters() if p.requires_grad}))
    metrics = learner.step(batch)

    plain = _learner(alone)
    micro = plain.micro_batches(batch)
    plain._fill_fixed_logprobs(micro, first=True)
    plain.backward(micro, plain.batch_counts(batch))
    policy_grads = {n: p.grad.clone() for n, p in alone.named_parameters() if p.requires_grad}
    alone.zero_grad(set_to_none=True)
    plain.backward(plain.micro_batches(drawn), plain.batch_counts(drawn),
                   objective=lambda counts, logp, mb: nll_objective(counts, logp, mb.mask))
    for name, p in alone.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[0][name], policy_grads[name] + 0.5 * p.grad, rtol=1e-4, atol=1e-7)

    nll, tokens = 0.0, 0
    with torch.no_grad():
        for t in drawn.trajectories:
            ids = torch.tensor([t.prompt_ids + t.completion_ids])
            logits = alone(input_ids=ids).logits[0, len(t.prompt_ids) - 1:-1].float() / 0.7
            logp = torch.log_softmax(logits, -1).gather(-1, ids[0, len(t.prompt_ids):, None])[:, 0]
            nll -= float((logp * torch.tensor(t.loss_mask)).sum())
            tokens += sum(t.loss_mask)
    assert metrics["learner/demonstration_nll"] == pytest.approx(nll / tokens, rel=1e-5)


def test_demonstrations_are_drawn_per_step_and_mini_batch_the_same_in_a_resumed_process():
    from rlvr.training.learner import DemonstrationLoss

    examples = _batch(num_groups=3, seed=2).trajectories
    draw = DemonstrationLoss(examples, coef=1.0, batch_size=4, seed=3).draw
    ids = lambda batch: [t.id for t in batch.trajectories]  # noqa: E731
    assert ids(draw(5, 1)) == ids(DemonstrationLoss(examples, coef=1.0, batch_size=4, seed=3).draw(5, 1))
    assert len(set(ids(draw(5, 1)))) == 4 and ids(draw(5, 1)) != ids(draw(6, 1)) != ids(draw(6, 0))
    assert len(DemonstrationLoss(examples[:2], coef=1.0, batch_size=4, seed=3).draw(0, 0).trajectories) == 2
