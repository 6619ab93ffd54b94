"""The HF engine: reproducible seeded sampling, stop handling, and log-probs the learner agrees with."""

import asyncio

import pytest
import torch

from rlvr.algorithms import ObjectiveSpec
from rlvr.config import LearnerConfig, LoraConfig
from rlvr.contract import Batch, Trajectory
from rlvr.engine import HFEngine, SamplingParams
from rlvr.learner import Learner
from rlvr.models import add_lora, load_model, load_tokenizer


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
