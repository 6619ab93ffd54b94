"""The continuous-batching engine: the same tokens and log-probs as transformers' generate (HFEngine), rows
that join and leave mid-batch, caches reused across turns and group copies (adapter re-merging is tested
for both engines in tests/test_engine.py)."""

import asyncio
from types import SimpleNamespace

import pytest
import torch

from rlvr.core.config import LearnerConfig, LoraConfig
from rlvr.core.contract import Batch, Trajectory
from rlvr.core.protocols import SamplingParams
from rlvr.rollout.continuous import ContinuousEngine, SlotDecoder, unsupported
from rlvr.rollout.engine import HFEngine
from rlvr.training.algorithms import ObjectiveSpec
from rlvr.training.learner import Learner
from rlvr.training.models import add_lora, load_model, load_tokenizer


def _policy(name):
    tokenizer = load_tokenizer(name)
    torch.manual_seed(0)
    model = add_lora(load_model(name, dtype=torch.float32), LoraConfig(rank=4))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model, tokenizer


@pytest.fixture(scope="module", params=["tiny-random-llama", "tiny-random-qwen2"])
def tiny(request):
    return _policy(request.param)


@pytest.fixture(scope="module")
def llama():
    return _policy("tiny-random-llama")


def _chat(tokenizer, text, system="You are a careful assistant. Use the tools. " * 3):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)


def _mixed_prompts(tokenizer):
    """A group's copies, questions sharing a system prompt, an unrelated prompt and a one-token prompt."""
    question = _chat(tokenizer, "What is 12 times 34, and then plus 5678?")
    return [question] * 3 + [_chat(tokenizer, "Hi?"), _chat(tokenizer, "Q 7 " * 9, system=None), question[:1]]


def _record_segments(engine):
    seen = []
    forward = engine.decoder.forward

    def recording(decode, starts, segments, decode_tokens):
        seen.append((decode, [(start, len(tokens)) for _, start, tokens in segments]))
        return forward(decode, starts, segments, decode_tokens)

    engine.decoder.forward = recording
    return seen


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_same_tokens_and_logprobs_as_generate(tiny, temperature):
    model, tokenizer = tiny
    prompts = _mixed_prompts(tokenizer)
    params = [SamplingParams(max_tokens=12, temperature=temperature, seed=i) for i in range(len(prompts))]
    expected = HFEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id}).generate_batch(prompts, params)
    engine = ContinuousEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id})
    got = engine.generate_batch(prompts, params)
    for a, b in zip(expected, got):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    alone = [engine.generate_batch([p], [s])[0] for p, s in zip(prompts, params)]  # whatever the batch
    assert [c.token_ids for c in alone] == [c.token_ids for c in got]


def test_group_copies_are_prefilled_once_and_next_turns_prefill_only_new_tokens(llama):
    model, tokenizer = llama
    engine = ContinuousEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id})
    seen = _record_segments(engine)
    prompts = _mixed_prompts(tokenizer)[:4]  # three copies of one question, one more sharing its system prompt
    params = [SamplingParams(max_tokens=6, temperature=1.0, seed=i) for i in range(4)]
    first = engine.generate_batch(prompts, params)
    common = next(k for k in range(len(prompts[3])) if prompts[0][k] != prompts[3][k])  # the system prompt
    assert seen[0] == (0, [(0, len(prompts[0]))])  # one copy runs; the others wait a pass and copy its KV
    assert seen[1] == (1, [(len(prompts[0]) - 1, 1)] * 2 + [(common, len(prompts[3]) - common)])
    assert len(engine.prefix_store) == 4  # every finished row's KV is kept for its next turn

    tool_result = tokenizer("<tool_response>42</tool_response>")["input_ids"]
    turn2 = [p + c.token_ids + tool_result for p, c in zip(prompts, first)]
    seen.clear()
    got = engine.generate_batch(turn2, params)
    fed = sorted(n for _, segments in seen for _, n in segments)
    assert fed == sorted(len(tool_result) + 1 for _ in turn2)  # the last sampled token and the tool result
    expected = HFEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id}, prefix_store_tokens=0
                        ).generate_batch(turn2, params)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    for a, b in zip(expected, got):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_rows_leave_when_done_and_arrivals_join_the_running_batch(llama):
    """A short request is answered while a long one still decodes, and a request sent after that joins the
    running batch: it ends before the long one and everything took fewer passes than one batch after another."""
    model, tokenizer = llama
    engine = ContinuousEngine(model, tokenizer, stop_ids=set())  # no stop token: lengths are max_tokens
    seen = _record_segments(engine)
    finished = []
    a, b, c = (_chat(tokenizer, f"Question {i}?", system=None) for i in range(3))

    async def request(name, prompt, tokens, delay_passes=0):
        while len(seen) < delay_passes:
            await asyncio.sleep(0)
        out = await engine.generate(prompt, SamplingParams(max_tokens=tokens, seed=1))
        finished.append((name, len(seen)))
        return out

    async def main():
        return await asyncio.gather(request("long", a, 40), request("short", b, 3), request("late", c, 5, 10))

    long, short, late = asyncio.run(main())
    assert [name for name, _ in finished] == ["short", "late", "long"]
    assert len(long.token_ids) == 40 and len(short.token_ids) == 3 and len(late.token_ids) == 5
    assert len(seen) == 40  # the long row's passes; the others rode along
    joined = next(i for i, (_, segments) in enumerate(seen) if segments and i > 0)
    assert seen[joined][0] == 1  # the late request's prompt ran in the same pass as the long row's decoding
    alone = engine.generate_batch([c], [SamplingParams(max_tokens=5, seed=1)])[0]
    assert alone.token_ids == late.token_ids


def test_mixed_sampling_params_and_stop_strings_in_one_batch(llama):
    model, tokenizer = llama
    engine = ContinuousEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id})
    prompts = _mixed_prompts(tokenizer)[3:5]
    free = engine.generate_batch(prompts[:1], [SamplingParams(max_tokens=10, temperature=0)])[0]
    stop = tokenizer.decode(free.token_ids[2:4])
    params = [SamplingParams(max_tokens=10, temperature=0, stop=(stop,)), SamplingParams(max_tokens=7, temperature=0.7,
                                                                                        top_p=0.9, seed=3)]
    together = engine.generate_batch(prompts, params)
    assert together[0].finish_reason == "stop" and stop in tokenizer.decode(together[0].token_ids)
    assert together[0].token_ids == free.token_ids[: len(together[0].token_ids)]
    expected = HFEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id}).generate_batch(prompts[1:], params[1:])
    assert together[1].token_ids == expected[0].token_ids


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_the_learner(llama, temperature):
    model, tokenizer = llama
    engine = ContinuousEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id})
    prompts = _mixed_prompts(tokenizer)[:5]
    outs = engine.generate_batch(prompts, [SamplingParams(max_tokens=16, temperature=temperature, seed=i)
                                           for i in range(len(prompts))])
    trajectories = [Trajectory(id=str(i), task_id="t", group_id="t", prompt_ids=p, completion_ids=o.token_ids,
                               loss_mask=[1] * len(o.token_ids), logprobs=o.logprobs)
                    for i, (p, o) in enumerate(zip(prompts, outs))]
    batch = Batch(trajectories=trajectories, advantages=[[0.0] * len(t.completion_ids) for t in trajectories])
    learner = Learner(model, LearnerConfig(precision="fp32"), ObjectiveSpec(), temperature=temperature)
    with torch.no_grad():
        for mb in learner.micro_batches(batch):
            logp = learner.completion_logprobs(mb)
            assert ((logp - mb.behaviour_logp).abs() * mb.mask).max() < 1e-4


def test_a_failing_pass_fails_every_waiting_request_and_the_engine_recovers(llama):
    model, tokenizer = llama
    engine = ContinuousEngine(model, tokenizer, stop_ids=set())
    forward = engine.decoder.forward
    calls = []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return forward(*args)

    engine.decoder.forward = flaky
    prompts = _mixed_prompts(tokenizer)[3:5]

    async def main():
        return await asyncio.gather(*(engine.generate(p, SamplingParams(max_tokens=8, seed=i))
                                      for i, p in enumerate(prompts)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "out of memory" in str(r) for r in results)
    assert not engine.rows and not engine._queue
    assert len(engine.generate_batch(prompts, [SamplingParams(max_tokens=4)] * 2)[1].token_ids) == 4


def test_unsupported_models_are_named_and_get_generate():
    assert unsupported(SimpleNamespace(model_type="gpt2")) == "model type 'gpt2' (supported: llama, qwen2)"
    assert "sliding" in unsupported(SimpleNamespace(model_type="qwen2", use_sliding_window=True, sliding_window=64))
    with pytest.raises(ValueError, match="gpt2"):
        SlotDecoder(SimpleNamespace(config=SimpleNamespace(model_type="gpt2")))


def test_the_worker_picks_the_engine_the_config_names(tmp_path):
    from rlvr.core.config import load_config
    from rlvr.rollout.workers import RolloutWorker

    for engine, kind in (("hf", ContinuousEngine), ("hf-generate", HFEngine)):
        cfg = load_config(None, ["model.name=tiny-random-llama", f"rollout.engine={engine}", f"output_dir={tmp_path}"])
        worker = RolloutWorker(cfg)
        try:
            assert type(worker.engine) is kind
        finally:
            worker.close()


def test_the_cache_grows_only_along_the_dimension_that_needs_it(llama):
    model, _ = llama
    decoder = SlotDecoder(model)
    decoder.reserve(3, 100)
    shape = tuple(decoder.v[0].shape)
    assert shape[0] == 8 and shape[2] == 128  # at least 8 slots; positions in steps of 64
    decoder.reserve(3, 300)  # longer rows: more positions, not more slots
    assert decoder.v[0].shape[0] == 8 and decoder.v[0].shape[2] == 320
    decoder.reserve(9, 10)  # more rows: more slots (doubled), positions kept
    assert decoder.v[0].shape[0] == 16 and decoder.v[0].shape[2] == 320
    assert decoder.k[0].shape == (16, decoder.kv_heads, decoder.head_dim, 320)
