"""The HF engine: reproducible seeded sampling, stop handling, and log-probs the learner agrees with."""

import asyncio

import pytest
import torch

from rlvr.training.algorithms import ObjectiveSpec
from rlvr.core.config import LearnerConfig, LoraConfig
from rlvr.core.contract import Batch, Trajectory
from rlvr.core.protocols import SamplingParams
from rlvr.rollout.engine import HFEngine
from rlvr.training.learner import Learner
from rlvr.training.models import add_lora, load_model, load_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tokenizer = load_tokenizer("tiny-random-llama")
    model = add_lora(load_model("tiny-random-llama", dtype=torch.float32), LoraConfig(rank=4))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model, tokenizer


def _prompts(tokenizer, n):
    texts = [f"Question {i}: what is {i} times {i + 3}?" for i in range(n)]
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, return_dict=False)
            for t in texts]


def test_sampling_is_reproducible_whatever_the_batch(tiny):
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id})
    prompts = _prompts(tokenizer, 4)
    params = [SamplingParams(max_tokens=12, temperature=1.0, seed=100 + i) for i in range(4)]
    together = engine.generate_batch(prompts, params)
    alone = [engine.generate_batch([p], [s])[0] for p, s in zip(prompts, params)]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    for a, b in zip(together, alone):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    other_seed = engine.generate_batch(prompts[:1], [SamplingParams(max_tokens=12, seed=7)])[0]
    assert other_seed.token_ids != together[0].token_ids
    assert all(c.finish_reason == "length" and len(c.token_ids) == 12 for c in together)


def test_shared_prefixes_are_prefilled_once_and_change_nothing(tiny):
    """Rows sharing a prefix (a group's copies, a common system prompt with questions of different lengths),
    an unrelated prompt and a one-token prompt in one batch: greedy tokens equal HF's own generate of each
    prompt alone, and log-probs agree; the prefix pass sees each distinct prefix once."""
    from rlvr.rollout.engine import MIN_SHARED_PREFIX, shared_prefixes

    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id})
    system = [{"role": "system", "content": "You are a careful assistant. Use the tools. " * 3}]
    ask = lambda text: tokenizer.apply_chat_template(system + [{"role": "user", "content": text}],  # noqa: E731
                                                     add_generation_prompt=True, return_dict=False)
    long_question, short_question = ask("What is 12 times 34, and then plus 5678?"), ask("Hi?")
    unrelated = _prompts(tokenizer, 1)[0]
    prompts = [long_question, long_question, short_question, unrelated, unrelated[:1]]
    groups = shared_prefixes(prompts)
    assert sorted(sorted(rows) for rows, _ in groups) == [[0, 1, 2], [3], [4]]
    common = next(k for k in range(len(short_question)) if long_question[k] != short_question[k])
    assert dict((tuple(rows), n) for rows, n in groups)[(0, 1, 2)] == common > MIN_SHARED_PREFIX
    assert dict((tuple(rows), n) for rows, n in groups)[(4,)] == 0

    prefills = []
    hook = engine.model.model.register_forward_pre_hook(  # the engine generates with a merged copy
        lambda module, args, kwargs: prefills.append(kwargs["input_ids"].shape), with_kwargs=True)
    outs = engine.generate_batch(prompts, [SamplingParams(max_tokens=8, temperature=0)] * len(prompts))
    hook.remove()
    assert prefills[0][0] == 2  # the first pass: one row per distinct prefix (the one-token prompt has none)
    for prompt, out in zip(prompts, outs):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            reference = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                       do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
        end = next((i + 1 for i, t in enumerate(reference) if t == tokenizer.eos_token_id), len(reference))
        assert out.token_ids == reference[:end]
        alone = engine.generate_batch([prompt], [SamplingParams(max_tokens=8, temperature=0)])[0]
        assert out.logprobs == pytest.approx(alone.logprobs, abs=1e-4)


@pytest.mark.parametrize("engine_class,tolerance", [("HFEngine", 0.0), ("ContinuousEngine", 1e-5)])
def test_the_merged_generation_copy_follows_the_adapter(tiny, engine_class, tolerance):
    """Both HF engines generate with the adapter merged into their own weights: an in-place adapter change (a
    learner step) is served after set_adapter(None), which also empties the prefix store (its KV belonged to
    the old weights), and an AdapterState sent from elsewhere after set_adapter(state). The continuous engine
    serves a repeated prompt from its store, which rounds differently: `tolerance`."""
    from rlvr.rollout.continuous import ContinuousEngine
    from rlvr.training.models import AdapterState

    model, tokenizer = tiny
    make = {"HFEngine": HFEngine, "ContinuousEngine": ContinuousEngine}[engine_class]
    engine = make(model, tokenizer, stop_ids={tokenizer.eos_token_id})
    prompt, params = _prompts(tokenizer, 1)[0], [SamplingParams(max_tokens=6, temperature=0)]
    before = engine.generate_batch([prompt], params)[0]
    original = AdapterState.of(model, 0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(-3)
    not_merged = engine.generate_batch([prompt], params)[0]  # not re-merged yet
    assert max(abs(a - b) for a, b in zip(not_merged.logprobs, before.logprobs)) <= tolerance
    asyncio.run(engine.set_adapter(None))
    assert len(engine.prefix_store) == 0
    after = engine.generate_batch([prompt], params)[0]
    fresh = HFEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id}).generate_batch([prompt], params)[0]
    assert after.token_ids == fresh.token_ids
    assert after.logprobs == pytest.approx(fresh.logprobs, abs=max(tolerance, 1e-6))
    assert after.logprobs != pytest.approx(before.logprobs, abs=1e-3)
    asyncio.run(engine.set_adapter(original))  # restores the module fixture's adapter too
    assert engine.generate_batch([prompt], params)[0].logprobs == pytest.approx(before.logprobs, abs=1e-6)


def test_async_requests_are_batched(tiny):
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id})
    calls = []
    original = engine.generate_batch
    engine.generate_batch = lambda prompts, params: calls.append(len(prompts)) or original(prompts, params)

    async def main():
        return await asyncio.gather(*(engine.generate(p, SamplingParams(max_tokens=4, seed=i))
                                      for i, p in enumerate(_prompts(tokenizer, 6))))

    results = asyncio.run(main())
    assert len(results) == 6 and calls == [6]


def test_greedy_and_stop_tokens(tiny):
    model, tokenizer = tiny
    [prompt] = _prompts(tokenizer, 1)
    engine = HFEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id})
    greedy = engine.generate_batch([prompt], [SamplingParams(max_tokens=6, temperature=0)])[0]
    with torch.no_grad():
        expected = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                  eos_token_id=tokenizer.eos_token_id)[0, len(prompt):].tolist()
    assert greedy.token_ids == expected[: len(greedy.token_ids)]
    # stop on a token greedy decoding produces: generation ends right after its first occurrence
    stop_id = greedy.token_ids[1]
    stop_engine = HFEngine(model, tokenizer, stop_ids={stop_id})
    stopped = stop_engine.generate_batch([prompt], [SamplingParams(max_tokens=6, temperature=0)])[0]
    assert stopped.token_ids == greedy.token_ids[: greedy.token_ids.index(stop_id) + 1]
    assert stopped.finish_reason == "stop"


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_engine_logprobs_match_the_learner(tiny, temperature):
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id})
    prompts = _prompts(tokenizer, 4)
    outs = engine.generate_batch(prompts, [SamplingParams(max_tokens=16, temperature=temperature, seed=i)
                                           for i in range(4)])
    trajectories = [Trajectory(id=str(i), task_id="t", group_id="t", prompt_ids=p, completion_ids=o.token_ids,
                               loss_mask=[1] * len(o.token_ids), logprobs=o.logprobs)
                    for i, (p, o) in enumerate(zip(prompts, outs))]
    batch = Batch(trajectories=trajectories, advantages=[[0.0] * len(t.completion_ids) for t in trajectories])
    learner = Learner(model, LearnerConfig(precision="fp32"), ObjectiveSpec(), temperature=temperature)
    diffs = []
    with torch.no_grad():
        for mb in learner.micro_batches(batch):
            logp = learner.completion_logprobs(mb)
            diffs.append(((logp - mb.behaviour_logp).abs() * mb.mask).sum() / mb.mask.sum())
    assert max(diffs) < 1e-4


def test_prefix_store_finds_the_longest_common_prefix_and_evicts_the_least_recent():
    from rlvr.rollout.engine import MIN_SHARED_PREFIX, PrefixStore

    kv = lambda n: [(torch.full((1, n, 2), float(n)), torch.zeros(1, n, 2))]  # noqa: E731  one layer, n positions
    head = list(range(100, 100 + MIN_SHARED_PREFIX))
    store = PrefixStore(max_tokens=60)
    store.put(head + [1, 2, 3], kv(19))
    store.put(head + [1, 2, 9, 9], kv(20))
    assert not store.wants(head + [1, 2, 3]) and not store.wants([0] * 61) and store.wants(head + [4])
    store.put(head + [1, 2, 3], kv(19))  # already stored: counted once
    (length, found), = store.lookup([head + [1, 2, 9, 5, 5]])
    assert length == 19 and found[0][0][0, 0, 0] == 20  # the second entry: 19 tokens in common
    assert store.lookup([head + [1, 2, 9, 9]])[0][0] == 19  # one token always stays uncached
    assert store.lookup([head[:-1] + [7, 7]]) == [(0, None)]  # fewer than MIN_SHARED_PREFIX tokens shared
    store.lookup([head + [1, 2, 3, 4]])  # the first entry is now the most recently used
    store.put(head + [5] * 10, kv(26))  # 65 tokens > 60: the least recently used entry goes
    assert len(store) == 2 and store.lookup([head + [1, 2, 9, 9, 9]])[0][0] == MIN_SHARED_PREFIX + 2
    store.clear()
    assert len(store) == 0 and store.lookup([head + [1]]) == [(0, None)]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_conversations_next_turn_prefills_only_its_new_tokens(tiny, temperature):
    """Turn 2 of four sampled conversations (two questions x two seeds) reuses turn 1's KV from the prefix
    store: the model sees only the unfed last token of turn 1 and the tool reply, and the tokens and
    log-probs equal an engine that keeps no store. A weight change empties the store."""
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id})
    no_store = HFEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id}, prefix_store_tokens=0)
    system = [{"role": "system", "content": "You are a careful assistant. Use the tools. " * 3}]
    firsts = [tokenizer.apply_chat_template(system + [{"role": "user", "content": q}], add_generation_prompt=True,
                                            return_dict=False) for q in ("What is 12 times 34?", "Add 5 and 7.")]
    prompts = [firsts[0], firsts[0], firsts[1], firsts[1]]
    params = [SamplingParams(max_tokens=8, temperature=temperature, seed=i) for i in range(4)]
    turn1 = engine.generate_batch(prompts, params)
    assert [c.token_ids for c in turn1] == [c.token_ids for c in no_store.generate_batch(prompts, params)]
    reply = tokenizer.encode("<tool_response>408</tool_response>", add_special_tokens=False)
    prompts2 = [p + c.token_ids + reply for p, c in zip(prompts, turn1)]

    widths = []
    hook = engine.model.model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    turn2 = engine.generate_batch(prompts2, params)
    hook.remove()
    assert widths[0] == 1 + len(reply)  # the first forward pass: only what no earlier pass fed
    expected = no_store.generate_batch(prompts2, params)
    assert len(no_store.prefix_store) == 0
    for got, want in zip(turn2, expected):
        assert got.token_ids == want.token_ids
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)
    asyncio.run(engine.set_adapter(None))
    assert len(engine.prefix_store) == 0


def test_sample_rows_draws_from_the_distribution_it_reports():
    """Inverse-CDF sampling: token frequencies match the softmax of logits / T (after top-p), the reported
    log-probs are that distribution's, and a token top-p removed is never drawn."""
    from rlvr.rollout.engine import sample_rows

    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    generator = torch.Generator().manual_seed(0)
    draws = [sample_rows(logits, [generator], 0.8, 1.0) for _ in range(20_000)]
    counts = torch.bincount(torch.cat([t for t, _ in draws]), minlength=5).float() / len(draws)
    expected = torch.softmax(logits[0] / 0.8, -1)
    assert (counts - expected).abs().max() < 0.01
    assert all(abs(lp.item() - expected[t.item()].log().item()) < 1e-5 for t, lp in draws[:50])
    filtered = [sample_rows(logits, [generator], 1.0, 0.7)[0].item() for _ in range(2_000)]
    assert set(filtered) <= {0, 1}  # p = 0.61, 0.22, 0.14, ...: top-p 0.7 keeps the first two
