"""rlvr dpo: the preference losses by hand and against TRL's DPOTrainer (loss and gradients on the same batch),
pairs from scored groups, per-call credit at the first divergence, pairs from a file, and a run end to end."""

import json
import math

import pytest
import torch

from rlvr.core.config import ConfigError, LearnerConfig, LoraConfig, load_config
from rlvr.core.contract import Batch, Group, Task, Trajectory
from rlvr.stages.dpo import first_divergence, micro_batch_rows, pairs_from_groups
from rlvr.training.algorithms import BatchCounts, ObjectiveSpec, dpo_sigmoid, ipo, preference_objective

MODEL = "tiny-random-llama"


def _trajectory(name: str, completion: list[int], mask: list[int], reward: float | None = 1.0,
                prompt: list[int] | None = None) -> Trajectory:
    return Trajectory(id=name, task_id="t", group_id="t", prompt_ids=prompt or [5, 6, 7], completion_ids=completion,
                      loss_mask=mask, logprobs=[0.0] * len(completion), reward=reward)


def test_preference_losses_by_hand():
    z = torch.tensor([0.0, 2.0, -1.0])
    torch.testing.assert_close(dpo_sigmoid(z, 0.5), torch.tensor([math.log(2), math.log(1 + math.exp(-1)),
                                                                 math.log(1 + math.exp(0.5))]))
    torch.testing.assert_close(ipo(z, 0.5), torch.tensor([1.0, 1.0, 4.0]))
    # two pairs, rows chosen, rejected, chosen, rejected; the masked token (0) never counts
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -9.0], [-1.0, -1.0], [-0.5, -0.5]])
    ref = torch.tensor([[-1.5, -2.0], [-2.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    # log-ratios: chosen 0.5, rejected -1 -> z 1.5; chosen 0, rejected 1 -> z -1
    loss, metrics = preference_objective("sigmoid", 1.0, 2, logp, ref, mask)
    torch.testing.assert_close(loss, torch.tensor((math.log(1 + math.exp(-1.5)) + math.log(1 + math.exp(1.0))) / 2))
    assert {k: round(v.item(), 4) for k, v in metrics.items()} == {
        "rewards/chosen": 0.5, "rewards/rejected": 0.0, "rewards/margin": 0.5, "rewards/accuracy": 1.0}


def test_pairs_from_groups_take_best_against_worst_with_a_margin():
    rewards = [0.0, 1.0, 0.6, 0.2, None, 0.9]
    group = Group(id="t", task=Task(id="t", env="calculator", prompt="p"),
                  trajectories=[_trajectory(f"t/{i}", [1], [1], r) for i, r in enumerate(rewards)])
    pairs = pairs_from_groups([group], margin=0.5)
    assert [(c.id, r.id) for c, r in pairs] == [("t/1", "t/0"), ("t/5", "t/3")]  # the middle one (0.6) unpaired
    assert [(c.id, r.id) for c, r in pairs_from_groups([group], margin=0.8)] == [("t/1", "t/0")]
    assert pairs_from_groups([group], margin=1.5) == []


def test_first_divergence_keeps_the_turn_where_the_pair_first_differs():
    # completion: turn 1 [1, 2], tool result [3] (masked), turn 2, ...; they differ inside turn 2
    chosen = _trajectory("c", [1, 2, 3, 10, 11, 4, 12], [1, 1, 0, 1, 1, 0, 1])
    rejected = _trajectory("r", [1, 2, 3, 10, 99, 98, 4, 13, 14], [1, 1, 0, 1, 1, 1, 0, 1, 1], reward=0.0)
    c, r = first_divergence((chosen, rejected))
    assert c.loss_mask == [0, 0, 0, 1, 1, 0, 0] and r.loss_mask == [0, 0, 0, 1, 1, 1, 0, 0, 0]
    # a tool result differs first (a transient failure): the next assistant turn on each side
    chosen = _trajectory("c", [1, 2, 3, 10], [1, 1, 0, 1])
    rejected = _trajectory("r", [1, 2, 8, 20, 21], [1, 1, 0, 1, 1], reward=0.0)
    c, r = first_divergence((chosen, rejected))
    assert c.loss_mask == [0, 0, 0, 1] and r.loss_mask == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="do not share a prompt"):
        first_divergence((chosen, _trajectory("x", [1], [1], prompt=[9])))


def test_micro_batches_keep_pairs_whole():
    pairs = [(_trajectory("c", [1] * n, [1] * n), _trajectory("r", [1] * n, [1] * n)) for n in (5, 5, 30)]
    assert micro_batch_rows(pairs, budget=20) == [[[0], [1]], [[2], [3]], [[4], [5]]]
    assert micro_batch_rows(pairs, budget=40) == [[[0], [1], [2], [3]], [[4], [5]]]


def test_the_dpo_loss_and_gradients_are_trls_on_the_same_batch(tmp_path):
    """On two multi-turn pairs (tool results masked), TRL's DPOTrainer loss with our masks as its completion
    masks equals rlvr's, and so do the gradients. Both take the starting adapter as the reference: TRL copies
    it as "ref" (then the policy moves away from it here), rlvr as REFERENCE_ADAPTER."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from rlvr.training.learner import Learner, make_micro_batch
    from rlvr.training.models import add_lora, load_model, load_tokenizer

    torch.manual_seed(0)
    model = add_lora(load_model(MODEL), LoraConfig(rank=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(10, 400, (n,), generator=g).tolist()

    prompt = ids(6)
    pairs = [(_trajectory("c0", ids(9), [1, 1, 1, 0, 0, 1, 1, 1, 1], prompt=prompt),
              _trajectory("r0", ids(7), [1, 1, 0, 0, 0, 1, 1], prompt=prompt)),
             (_trajectory("c1", ids(5), [1, 1, 1, 1, 1], prompt=prompt),
              _trajectory("r1", ids(8), [1, 0, 0, 1, 1, 1, 1, 1], prompt=prompt))]
    beta = 0.3
    tokenizer = load_tokenizer(MODEL)
    trainer = DPOTrainer(model=model, processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}]),
                         args=DPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, bf16=False,
                                        beta=beta, loss_type=["sigmoid"]))
    from rlvr.training.models import REFERENCE_ADAPTER

    model.add_adapter(REFERENCE_ADAPTER, model.peft_config["ref"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ref." in name:
                model.get_parameter(name.replace(".ref.", f".{REFERENCE_ADAPTER}.")).copy_(p)
            if ".default." in name and "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)  # the policy moves away from the reference
    model.set_adapter("default")
    rows = [c for c, _ in pairs] + [r for _, r in pairs]  # TRL's layout: all chosen, then all rejected
    width = max(len(t.prompt_ids) + len(t.completion_ids) for t in rows)
    pad = lambda seq, fill: seq + [fill] * (width - len(seq))  # noqa: E731
    inputs = {"input_ids": torch.tensor([pad(t.prompt_ids + t.completion_ids, 0) for t in rows]),
              "attention_mask": torch.tensor([pad([1] * (len(t.prompt_ids) + len(t.completion_ids)), 0) for t in rows]),
              "completion_mask": torch.tensor([pad([0] * len(t.prompt_ids) + t.loss_mask, 0) for t in rows])}
    trl_loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    trl_loss.backward()
    trl_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert trl_grads
    model.zero_grad(set_to_none=True)

    learner = Learner(model, LearnerConfig(precision="fp32"), ObjectiveSpec(),
                      objective=lambda counts, logp, mb: preference_objective("sigmoid", beta, counts.sequences // 2,
                                                                              logp, mb.ref_logp, mb.mask))
    flat = [t for pair in pairs for t in pair]
    batch = Batch(trajectories=flat, advantages=[[0.0] * len(t.completion_ids) for t in flat])
    micro = [make_micro_batch(batch, rows, torch.device("cpu")) for rows in micro_batch_rows(pairs, budget=30)]
    assert len(micro) == 2  # one pair each: the loss is summed over micro-batches, as over TRL's one batch
    with torch.no_grad():
        for mb in micro:
            mb.ref_logp = learner.completion_logprobs(mb, adapter=False)
    totals = learner.backward(micro, BatchCounts(tokens=0, sequences=4))
    assert abs(trl_loss.item() - math.log(2)) > 1e-3  # the margin is not zero
    torch.testing.assert_close(torch.tensor(totals["loss"]), trl_loss.detach(), rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        if name in trl_grads:
            torch.testing.assert_close(p.grad, trl_grads[name], rtol=1e-4, atol=1e-6)


def _config(*overrides):
    return load_config(None, [f"model.name={MODEL}", "logging.wandb=disabled", "model.lora.rank=4", *overrides])


def test_dpo_from_a_file_of_pairs_trains_an_adapter_and_names_bad_rows(tmp_path):
    from rlvr.stages.dpo import dpo

    def conversation(answer):
        return [{"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "a", "type": "function", "function": {
                    "name": "calculate", "arguments": json.dumps({"expression": "2 + 2"})}}]},
                {"role": "tool", "tool_call_id": "a", "name": "calculate", "content": "4"},
                {"role": "assistant", "content": f"The answer is {answer}."}]

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"chosen": conversation(4), "rejected": conversation(5)}) + "\n"
                            for _ in range(4)))
    run = dpo(_config(f"output_dir={tmp_path}", f"dpo.pairs={data}", "dpo.batch_size=2", "dpo.epochs=3",
                      "dpo.lr=1e-2", "dpo.credit=first_divergence"))
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    losses = [r["dpo/loss"] for r in rows if "dpo/loss" in r]
    assert len(losses) == 6 and losses[0] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at first
    assert losses[-1] < losses[0] and rows[-1]["dpo/rewards/accuracy"] == 1.0
    assert (run.path / "adapter" / "adapter_config.json").exists()

    data.write_text(json.dumps({"chosen": conversation(4)}) + "\n")
    with pytest.raises(ConfigError, match=r"dpo.pairs: .*pairs.jsonl line 1 has no \"rejected\" list of messages"):
        dpo(_config(f"output_dir={tmp_path}", f"dpo.pairs={data}"))


def test_dpo_from_rollouts_needs_pairs_with_a_margin(tmp_path):
    """The tiny random policy never solves a calculator task: every reward is 0, so no pair reaches the
    margin, and the run says so instead of training on nothing."""
    from rlvr.stages.dpo import dpo

    with pytest.raises(ConfigError, match=r"dpo: no pair in 8 rollouts reached a reward gap of dpo.margin=0.5"):
        dpo(_config(f"output_dir={tmp_path}", "dpo.tasks=2", "rollout.group_size=4", "rollout.max_new_tokens=8",
                    "rollout.max_turns=1", "env.name=calculator"))


def test_file_pairs_are_rendered_token_for_token_as_sft_renders():
    """A pair from dpo.pairs: each side's ids and loss mask are SFT's rendering of that conversation (tested
    against the agent loop in tests/test_sft.py): assistant turns scored, tool results masked."""
    from rlvr.rollout.chat import ChatRenderer
    from rlvr.stages.dpo import file_pairs
    from rlvr.rollout.demonstrations import tokenize_conversation
    from rlvr.training.models import load_tokenizer

    chosen = [{"role": "user", "content": "What is 2 + 2?"},
              {"role": "assistant", "content": "", "tool_calls": [{"id": "a", "type": "function", "function": {
                  "name": "calculate", "arguments": json.dumps({"expression": "2 + 2"})}}]},
              {"role": "tool", "tool_call_id": "a", "name": "calculate", "content": "4"},
              {"role": "assistant", "content": "The answer is 4."}]
    rejected = chosen[:1] + [{"role": "assistant", "content": "The answer is 5."}]
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pairs.jsonl"
        path.write_text(json.dumps({"chosen": chosen, "rejected": rejected}) + "\n")
        cfg = _config(f"dpo.pairs={path}")
        renderer = ChatRenderer(load_tokenizer(MODEL), cfg.rollout.tool_format)
        [(c, r)] = file_pairs(cfg, renderer)
    for side, messages in ((c, chosen), (r, rejected)):
        row = tokenize_conversation(renderer, messages, [], cfg.sft.max_length)
        assert side.prompt_ids + side.completion_ids == row["input_ids"]
        assert [0] * len(side.prompt_ids) + side.loss_mask == row["assistant_masks"]
    masked = renderer.tokenizer.decode([t for t, m in zip(c.completion_ids, c.loss_mask) if not m])
    assert "tool\n4" in masked  # the tool result is context


def test_no_pairs_is_an_error_not_an_untrained_adapter(tmp_path):
    from rlvr.stages.dpo import dpo

    with pytest.raises(ConfigError, match="dpo: no preference pairs to train on"):
        dpo(_config(f"output_dir={tmp_path}"), pairs=[])
