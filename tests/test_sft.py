"""rlvr synth and rlvr sft: gold conversations verified by reward, OpenAI tool_calls round-tripped into the
rollouts' own token format, the assistant-only loss mask on a multi-turn example, and TRL training."""

import asyncio
import json

import pytest

from rlvr.rollout.chat import ChatRenderer
from rlvr.core.config import ConfigError, load_config
from rlvr.envs.calculator import CalculatorEnv, calculator_tasks
from rlvr.training.models import load_tokenizer
from rlvr.rewards.scoring import Scorer
from rlvr.rollout.demonstrations import tokenize_conversation, training_rows
from rlvr.stages.synth import Synthesizer, gold_turns, replay, write_jsonl
from chat_server import ChatServer

MODEL = "tiny-random-llama"  # SmolLM2's tokenizer and chat template (no native tool support: hermes fallback)


@pytest.fixture(scope="module")
def renderer():
    return ChatRenderer(load_tokenizer(MODEL))


def _config(*overrides):
    return load_config(None, [f"model.name={MODEL}", "logging.wandb=disabled", *overrides])


def test_gold_conversations_are_scored_and_written_as_openai_tool_calls():
    tasks = calculator_tasks(4)
    synthesizer = Synthesizer(_config())
    records = synthesizer.run(tasks + tasks[:1])  # a repeated task: deduplicated, and said so
    assert [r["task_id"] for r in records] == [t.id for t in tasks]
    assert synthesizer.skipped == [(tasks[0].id, "repeats a conversation kept for the same task")]
    first = records[0]
    assert first["source"] == "gold" and first["reward"] == 1.0 and first["tools"][0]["function"]["name"] == "calculate"
    roles = [m["role"] for m in first["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    call = first["messages"][2]["tool_calls"][0]
    assert call["function"] == {"name": "calculate", "arguments": json.dumps(tasks[0].gold_calls[0]["arguments"])}
    assert first["messages"][3]["tool_call_id"] == call["id"]
    assert first["messages"][-1]["content"] == f"The answer is {tasks[0].answer}."


def test_synth_options_choose_the_demonstrated_tasks_over_env_options():
    synthesizer = Synthesizer(_config("synth.tasks=6", "env.options={family: heldout}",
                                      'synth.options={shapes: ["a * (b + c)"]}'))
    tasks = synthesizer.tasks()
    assert len(tasks) == 6 and {(t.metadata["family"], t.metadata["kind"]) for t in tasks} == {("heldout", "a * (b + c)")}
    assert tasks[0].id.startswith("calculator-train-")


def test_recovery_and_restraint_demonstrations(renderer):
    """synth.restraint draws tasks that need no tool, answered directly; synth.recovery makes a call fail
    first, transiently (then retried) or with an argument name the env rejects (then fixed, the mistake kept
    as context with weight 0); every conversation still passes the reward."""
    synthesizer = Synthesizer(_config("synth.tasks=40", "synth.recovery=0.5", "synth.restraint=0.25"))
    tasks = synthesizer.tasks()
    assert sum(t.metadata.get("needs_tool") is False for t in tasks) == 10
    records = synthesizer.run(tasks)
    assert len(records) == 40 and {r["reward"] for r in records} == {1.0}
    by_source = {}
    for r in records:
        by_source.setdefault(r["source"], []).append(r)
    assert set(by_source) == {"gold", "direct", "gold+transient", "gold+bad_arguments"}
    assert len(by_source["direct"]) == 10 and 8 <= len(by_source["gold+transient"]) + len(by_source["gold+bad_arguments"]) <= 22
    task = {t.id: t for t in tasks}

    direct = by_source["direct"][0]
    assert [m["role"] for m in direct["messages"]] == ["system", "user", "assistant"]
    assert direct["messages"][-1]["content"] == f"The answer is {task[direct['task_id']].answer}."

    for r in by_source["gold+transient"]:
        calls = [m for m in r["messages"] if m["role"] == "assistant" and m.get("tool_calls")]
        results = [m["content"] for m in r["messages"] if m["role"] == "tool"]
        failed = next(i for i, text in enumerate(results) if text.startswith("Error "))
        assert "Retry" in results[failed] or "try again" in results[failed]
        assert calls[failed + 1]["tool_calls"][0]["function"] == calls[failed]["tool_calls"][0]["function"]
        assert len(calls) == len(task[r["task_id"]].gold_calls) + 1 and "weight" not in calls[failed]

    r = by_source["gold+bad_arguments"][0]
    calls = [m for m in r["messages"] if m["role"] == "assistant" and m.get("tool_calls")]
    [wrong] = [i for i, m in enumerate(calls) if "weight" in m]
    assert calls[wrong]["weight"] == 0 and json.loads(calls[wrong]["tool_calls"][0]["function"]["arguments"]).keys() == {"input"}
    results = [m["content"] for m in r["messages"] if m["role"] == "tool"]
    assert results[wrong] == "bad arguments for calculate: unknown argument(s) input; expected expression"
    assert json.loads(calls[wrong + 1]["tool_calls"][0]["function"]["arguments"]).keys() == {"expression"}
    # SFT trains on the fix and the rest, not on the rejected call
    row = tokenize_conversation(renderer, r["messages"], r["tools"], max_length=4096)
    trained = renderer.tokenizer.decode([t for t, bit in zip(row["input_ids"], row["assistant_masks"]) if bit])
    assert '"input"' not in trained and trained.count("<tool_call>") == len(calls) - 1
    assert '"input"' in renderer.tokenizer.decode(row["input_ids"])


def test_restraint_needs_an_env_with_tasks_that_need_no_tool():
    with pytest.raises(ConfigError, match="synth.restraint=0.5: env 'bfcl' has no no_tool_tasks"):
        Synthesizer(_config("env.name=bfcl", "synth.restraint=0.5")).tasks()


def test_a_conversation_whose_reward_fails_the_threshold_is_dropped():
    task = calculator_tasks(1)[0].model_copy(update={"answer": -1})  # the gold calls reach another number
    synthesizer = Synthesizer(_config())
    assert synthesizer.run([task]) == []
    assert synthesizer.skipped == [(task.id, "reward 0 is below synth.threshold=1")]


def test_the_loss_mask_covers_exactly_what_a_rollout_samples(renderer):
    """A 2-call conversation: SFT's ids and mask equal the agent loop's prompt + completion and loss mask."""
    task = calculator_tasks(1, seed=3)[0]
    [record] = Synthesizer(_config()).run([task])
    row = tokenize_conversation(renderer, record["messages"], record["tools"], max_length=4096)
    cfg = _config()
    turns = asyncio.run(gold_turns(task, CalculatorEnv, "hermes"))
    trajectory = asyncio.run(replay(task, turns, renderer, CalculatorEnv, cfg.rollout,
                                    Scorer.from_config(cfg.rewards, CalculatorEnv)))
    assert row["input_ids"] == trajectory.prompt_ids + trajectory.completion_ids
    assert row["assistant_masks"] == [0] * len(trajectory.prompt_ids) + trajectory.loss_mask
    # read back: the unmasked spans are the three assistant turns, each ending with <|im_end|>
    ids, mask = row["input_ids"], row["assistant_masks"]
    spans, start = [], None
    for i, bit in enumerate(mask + [0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            spans.append(renderer.tokenizer.decode(ids[start:i]))
            start = None
    expression = task.gold_calls[0]["arguments"]["expression"]
    assert spans == [f'<tool_call>\n{{"name": "calculate", "arguments": {{"expression": "{expression}"}}}}\n</tool_call><|im_end|>',
                     spans[1], f"The answer is {task.answer}.<|im_end|>"]
    masked = renderer.tokenizer.decode([t for t, bit in zip(ids, mask) if not bit])
    assert task.prompt in masked and "<tool_response>" in masked and "calculate" in masked  # prompt, tools, results
    assert "<tool_response>" not in "".join(spans)


def test_long_conversations_are_cut_after_an_assistant_turn(renderer):
    [record] = Synthesizer(_config()).run(calculator_tasks(1))
    full = tokenize_conversation(renderer, record["messages"], record["tools"], max_length=4096)
    ends = [i for i, t in enumerate(full["input_ids"]) if t == renderer.turn_end_id and full["assistant_masks"][i]]
    cut = tokenize_conversation(renderer, record["messages"], record["tools"], max_length=ends[1] + 5)
    assert cut["input_ids"] == full["input_ids"][: ends[1] + 1]  # two of the three assistant turns
    assert tokenize_conversation(renderer, record["messages"], record["tools"], max_length=10) is None


def test_general_chat_is_mixed_in_and_bad_data_is_named(tmp_path, renderer):
    data, chat = tmp_path / "tools.jsonl", tmp_path / "chat.jsonl"
    write_jsonl(data, Synthesizer(_config()).run(calculator_tasks(6)))
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "Name a colour."},
                                             {"role": "assistant", "content": "Blue."}]}) + "\n")
    rows = training_rows(_config(f"sft.data={data}", f"sft.mix_data={chat}", "sft.mix_fraction=0.25"), renderer)
    assert len(rows) == 8  # 6 tool conversations + 2 general (a quarter)
    general = renderer.tokenizer.decode([t for t, m in zip(rows[-1]["input_ids"], rows[-1]["assistant_masks"]) if m])
    assert general == "Blue.<|im_end|>"
    (tmp_path / "bad.jsonl").write_text('{"messages": []}\n')
    with pytest.raises(ConfigError, match=r"sft.data: .*bad.jsonl line 1 has no \"messages\" list"):
        training_rows(_config(f"sft.data={tmp_path / 'bad.jsonl'}"), renderer)
    (tmp_path / "weight.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                                   {"role": "assistant", "content": "Hello", "weight": 0.5}]}) + "\n")
    with pytest.raises(ConfigError, match=r"weight.jsonl line 1: a message's \"weight\" is 0 or 1, got 0.5"):
        training_rows(_config(f"sft.data={tmp_path / 'weight.jsonl'}"), renderer)
    with pytest.raises(ConfigError, match="needs sft.mix_data"):
        training_rows(_config(f"sft.data={data}", "sft.mix_fraction=0.5"), renderer)


def test_sft_trains_an_adapter_that_rl_starts_from(tmp_path):
    from rlvr.training.learner import build_learner
    from rlvr.stages.sft import sft

    data = tmp_path / "tools.jsonl"
    write_jsonl(data, Synthesizer(_config()).run(calculator_tasks(8)))
    run = sft(_config(f"output_dir={tmp_path}", f"sft.data={data}", "sft.epochs=3", "sft.batch_size=4",
                      "sft.lr=5e-3", "model.lora.rank=4"))
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    losses = [r["sft/loss"] for r in rows if "sft/loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]  # 8 examples / 4 per step x 3 epochs
    learner = build_learner(_config(f"model.init_adapter={run.path / 'adapter'}"))
    trained = [p for n, p in learner.model.named_parameters() if "lora_B" in n]
    assert trained and all(p.requires_grad for p in trained) and any(p.abs().sum() > 0 for p in trained)


def test_the_sft_loss_is_trls_on_the_same_batch(tmp_path):
    """rlvr's SFT runs on the learner; on the same conversations, TRL's SFTTrainer (its label building from the
    assistant masks, its collator, its loss) gives the same number, and so do the gradients."""
    pytest.importorskip("trl")
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from rlvr.core.config import LearnerConfig, LoraConfig
    from rlvr.core.contract import Batch
    from rlvr.rollout.demonstrations import as_trajectory
    from rlvr.training.algorithms import ObjectiveSpec, nll_objective
    from rlvr.training.learner import Learner
    from rlvr.training.models import add_lora, load_model

    data = tmp_path / "tools.jsonl"
    write_jsonl(data, Synthesizer(_config()).run(calculator_tasks(4)))
    cfg = _config(f"sft.data={data}")
    renderer = ChatRenderer(load_tokenizer(cfg.model.name), cfg.rollout.tool_format)
    rows = training_rows(cfg, renderer)
    torch.manual_seed(0)
    model = add_lora(load_model(cfg.model.name), LoraConfig(rank=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    trainer = SFTTrainer(model=model, train_dataset=Dataset.from_list(rows), processing_class=renderer.tokenizer,
                         args=SFTConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True,
                                        max_length=cfg.sft.max_length, bf16=False))
    collated = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    trl_loss = trainer.compute_loss(trainer.model, collated)
    trl_loss.backward()
    trl_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    examples = [as_trajectory(i, row) for i, row in enumerate(rows)]
    assert all(t.loss_mask[0] == 1 and sum(t.loss_mask) == sum(r["assistant_masks"]) for t, r in zip(examples, rows))
    batch = Batch(trajectories=examples, advantages=[[0.0] * len(t.completion_ids) for t in examples])
    learner = Learner(model, LearnerConfig(precision="fp32"), ObjectiveSpec(),
                      objective=lambda counts, logp, mb: nll_objective(counts, logp, mb.mask))
    totals = learner.backward(learner.micro_batches(batch), learner.batch_counts(batch))
    torch.testing.assert_close(torch.tensor(totals["loss"]), trl_loss.detach(), rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        if name in trl_grads:
            torch.testing.assert_close(p.grad, trl_grads[name], rtol=1e-4, atol=1e-6)


def test_a_local_teacher_is_rejection_sampled():
    """The tiny random teacher never solves a task: at threshold 1 nothing is kept; at 0 its samples are
    kept as conversations in its own words (no tool call parsed, so no tool_calls)."""
    tasks = calculator_tasks(2)
    teacher = ["synth.teacher=tiny-random-llama", "synth.samples=2", "rollout.max_new_tokens=8", "rollout.max_turns=1"]
    assert Synthesizer(_config(*teacher)).run(tasks) == []
    kept = Synthesizer(_config(*teacher, "synth.threshold=0")).run(tasks)
    assert 1 <= len(kept) <= 4 and {r["source"] for r in kept} == {"teacher:tiny-random-llama"}
    assert all(r["messages"][-1]["role"] == "assistant" and r["reward"] == 0.0 for r in kept)


def _Teacher(tasks, final=None, busy=0, malformed=None, vary=False, delay_s=0.0):
    """A teacher behind a ChatServer that solves calculator tasks with their gold calls, reasoning included,
    and answers `final` at the end. `busy`: the first that many requests get 429 Too Many Requests;
    `malformed`: the task id whose answers carry broken tool-call arguments; `vary`: each conversation words
    its steps its own way."""
    by_prompt = {t.prompt: t for t in tasks}

    def answer(body, number):
        if number <= busy:
            return 429
        task = by_prompt[next(m["content"] for m in body["messages"] if m["role"] == "user")]
        done = sum(m["role"] == "tool" for m in body["messages"])
        words = f" (take {number})" if vary and done == 0 else ""
        if done < len(task.gold_calls):
            gold = task.gold_calls[done]
            arguments = "{not json" if task.id == malformed else json.dumps(gold["arguments"])
            return {"content": f"Step {done + 1}: compute it.{words}", "tool_calls": [
                {"id": f"c{done}", "type": "function", "function": {"name": gold["name"], "arguments": arguments}}]}
        return {"content": f"The answer is {final or body['messages'][-1]['content']}."}

    return ChatServer(answer, delay_s)


def test_an_openai_compatible_endpoint_teaches_and_its_reasoning_is_kept():
    tasks = calculator_tasks(3)
    teacher = _Teacher(tasks)
    try:
        records = Synthesizer(_config(f"synth.teacher={teacher.url}", "synth.teacher_model=teacher-7b")).run(tasks)
    finally:
        teacher.close()
    assert [r["task_id"] for r in records] == [t.id for t in tasks] and records[0]["source"] == "endpoint:teacher-7b"
    assert teacher.requests[0]["model"] == "teacher-7b" and teacher.requests[0]["tools"][0]["function"]["name"] == "calculate"
    assistant = [m for m in records[0]["messages"] if m["role"] == "assistant"]
    assert [m["content"] for m in assistant[:2]] == ["Step 1: compute it.", "Step 2: compute it."]  # reasoning kept
    assert len(assistant[0]["tool_calls"]) == 1 and records[0]["reward"] == 1.0
    wrong = _Teacher(tasks, final=-5)
    try:
        assert Synthesizer(_config(f"synth.teacher={wrong.url}")).run(tasks) == []  # rejected by the reward
    finally:
        wrong.close()


def test_an_endpoint_is_sampled_concurrently_with_a_key_retries_and_clear_errors(monkeypatch):
    """synth.samples conversations per task, synth.concurrency at a time, the key from synth.api_key_env as a
    bearer token; 429s are retried; a malformed answer names its task and loses no other conversation."""
    tasks = calculator_tasks(3)
    monkeypatch.setenv("TEACHER_KEY", "sk-test")
    teacher = _Teacher(tasks, busy=2, vary=True, delay_s=0.05)
    try:
        records = Synthesizer(_config(f"synth.teacher={teacher.url}", "synth.samples=2", "synth.concurrency=4",
                                      "synth.api_key_env=TEACHER_KEY")).run(tasks)
    finally:
        teacher.close()
    assert sorted(r["task_id"] for r in records) == sorted([t.id for t in tasks] * 2)  # two distinct samples each
    assert len(teacher.requests) == 2 + 3 * 2 * 3  # two refused, then 3 requests per conversation
    assert {h["Authorization"] for h in teacher.headers} == {"Bearer sk-test"}
    assert 2 <= teacher.max_in_flight <= 4

    broken = _Teacher(tasks, malformed=tasks[1].id)
    try:  # the other tasks' conversations are kept, the failure is named
        synthesizer = Synthesizer(_config(f"synth.teacher={broken.url}", "synth.samples=1"))
        kept = synthesizer.run(tasks)
    finally:
        broken.close()
    assert sorted(r["task_id"] for r in kept) == sorted([tasks[0].id, tasks[2].id])
    [failure] = synthesizer.failed
    assert f"task {tasks[1].id}: a malformed chat completion (JSONDecodeError" in failure
    assert synthesizer.skipped == [(tasks[1].id, f"the endpoint failed: {failure}")]
    refusing = _Teacher(tasks, busy=100)
    try:
        synthesizer = Synthesizer(_config(f"synth.teacher={refusing.url}", "synth.samples=1", "synth.retries=1",
                                          "synth.concurrency=1"))
        assert synthesizer.run(tasks[:1]) == []
    finally:
        refusing.close()
    assert f"task {tasks[0].id}: HTTP 429, still after 2 attempts" in synthesizer.failed[0]
