"""GPU tests (`pytest -m gpu`; tests/conftest.py skips them without CUDA): the learner on CUDA in bf16 against
CPU fp32, a learner step on CUDA, vLLM rollouts with adapter sync and sleep/wake on one GPU, and
configs/gpu.yaml end to end. bench/gpu_check.sh runs them with the GPU learner benchmark.

No weights can be downloaded where these run (the lent GPU machine has no registry access, and no vLLM, Ray
or TRL: ../shared/OFFLINE.md), so every model here is random and built from a config:
- the learner tests use tiny-random-llama's shape (rlvr/training/models.py) with SmolLM2's vocabulary size and
  need no tokenizer;
- rollouts need a tokenizer with a chat template, and tiny-random-llama's comes from a GGUF package the GPU
  machine lacks, so `tiny_chat_model` builds one from nothing: 256 byte tokens plus ChatML's special tokens,
  with SmolLM2's ChatML template (no tool support: tools go through rlvr's hermes fallback, as with SmolLM2),
  and a head size of 64, which vLLM's attention kernels take (tiny-random-llama's is 16).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlvr.core.config import AlgorithmConfig, LearnerConfig, LoraConfig, load_config
from rlvr.core.contract import Batch
from rlvr.training.advantages import make_batch
from rlvr.training.algorithms import ObjectiveSpec
from rlvr.training.learner import Learner, build_learner
from rlvr.training.models import _TINY_SHAPE, AdapterState, add_lora
from rlvr.training.synthetic import synthetic_groups

pytestmark = pytest.mark.gpu

GPU_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "gpu.yaml"
SMOLLM2_VOCAB = 49152  # tiny-random-llama's vocabulary (SmolLM2's tokenizer)

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed (pip install vllm); the lent GPU machine has none (../shared/OFFLINE.md)")
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed; the lent GPU machine has none (../shared/OFFLINE.md)")


# --------------------------------------------------------------------------------------------------
# random models built from configs


def _tiny_llama(seed: int = 0):
    """tiny-random-llama's architecture and vocabulary size, random, float32 on the CPU, no tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", vocab_size=SMOLLM2_VOCAB, **_TINY_SHAPE)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _randomise_lora_b(model, seed: int) -> None:
    """LoRA B starts at zero (the adapter is a no-op); random B makes the adapter change the policy."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A checkpoint directory of `_tiny_llama()`, for code that loads models by name (build_learner)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    _tiny_llama().save_pretrained(path)
    return path


CHATML = (  # SmolLM2-135M-Instruct's chat template (no tool support)
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory) -> Path:
    """A random llama with a byte-level tokenizer and SmolLM2's ChatML template, as a model directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-chat-model")
    byte_vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=byte_vocab, merges=[]))  # no merges: one token per byte
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(path)
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=4096, tie_word_embeddings=True,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    return path


def _synthetic_batch(vocab: int, num_groups: int = 3, group_size: int = 4, prompt_tokens: int = 64,
                     completion_tokens: int = 40, seed: int = 0) -> Batch:
    """Random scored groups (random rewards, so the advantages are not all zero), two turns each."""
    groups = synthetic_groups(num_groups, group_size, prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens, vocab_size=vocab, turns=2, seed=seed)
    return make_batch(groups, AlgorithmConfig())[0]


def _mixed_length_batch(seed: int = 0) -> Batch:
    """One group of long trajectories and two of short ones, all with 64-token prompts: the packed path puts
    several short trajectories into one row (as long as the longest), the shared-prefix path takes every group."""
    groups = (synthetic_groups(1, 4, 64, 160, SMOLLM2_VOCAB, turns=2, seed=seed)
              + synthetic_groups(2, 4, 64, 24, SMOLLM2_VOCAB, turns=2, seed=seed + 100))
    return make_batch(groups, AlgorithmConfig())[0]


# --------------------------------------------------------------------------------------------------
# the learner on CUDA

# Tolerance of CUDA bf16 log-probs against CPU fp32 ones. bf16 keeps 8 significant bits (a relative rounding
# of 2^-9, 0.2%); on this model at temperature 0.7 (log-probs -10.8 +- 0.25) bf16 autocast on the CPU differs
# from fp32 by 0.001 on average and 0.005 at most per token (measured when this test was written). The bounds
# leave 10x / 20x that for CUDA's own bf16 kernels (other reduction orders, SDPA's flash and memory-efficient
# attention), while an error in packing, position ids or masking moves a token's log-prob by as much as its
# context does: 0.21 on average here, which the test checks stays well above the mean bound.
BF16_MEAN_TOL = 0.01
BF16_MAX_TOL = 0.1


def _logprobs_by_trajectory(learner: Learner, batch: Batch) -> dict[int, torch.Tensor]:
    """Each trajectory's completion log-probs (float32, on the CPU), by its index in the batch."""
    out = {}
    with torch.no_grad():
        for mb in learner.micro_batches(batch):
            logp = learner.completion_logprobs(mb).float().cpu()
            for row, (index, length) in enumerate(zip(mb.indices, mb.lengths)):
                out[index] = logp[row, :length]
    return out


@pytest.mark.parametrize("shared_prefix", [False, True], ids=["packed", "shared-prefix"])
def test_cuda_bf16_logprobs_match_cpu_fp32(shared_prefix):
    cpu_model = add_lora(_tiny_llama(), LoraConfig(rank=8, alpha=16))
    _randomise_lora_b(cpu_model, seed=0)
    # as build_learner does on a GPU: the frozen base in bf16 on the device, the LoRA weights float32
    cuda_model = add_lora(_tiny_llama().to(torch.bfloat16).to("cuda"), LoraConfig(rank=8, alpha=16))
    AdapterState.of(cpu_model, 0).load_into(cuda_model)
    settings = {"shared_prefix": shared_prefix, "micro_batch_tokens": 100_000}  # the whole batch at once
    cpu = Learner(cpu_model, LearnerConfig(precision="fp32", **settings), ObjectiveSpec(), temperature=0.7)
    cuda = Learner(cuda_model, LearnerConfig(precision="bf16", **settings), ObjectiveSpec(), temperature=0.7)
    assert cuda.device.type == "cuda" and cuda.bf16
    batch = _mixed_length_batch()
    micro = cuda.micro_batches(batch)
    if shared_prefix:
        assert all(mb.prompt is not None for mb in micro)
    else:  # fewer rows than trajectories: position ids and masking keep packed trajectories apart
        assert all(mb.prompt is None for mb in micro)
        assert sum(mb.input_ids.shape[0] for mb in micro) < len(batch.trajectories)

    fp32, bf16 = _logprobs_by_trajectory(cpu, batch), _logprobs_by_trajectory(cuda, batch)
    assert fp32.keys() == bf16.keys() == set(range(len(batch.trajectories)))
    diff = torch.cat([(fp32[i] - bf16[i]).abs() for i in fp32])
    assert diff.mean() < BF16_MEAN_TOL and diff.max() < BF16_MAX_TOL, (diff.mean().item(), diff.max().item())

    # the same completions after other prompts: how far a wrong context would move the log-probs
    other_prompts = _mixed_length_batch(seed=1)
    moved = Batch(trajectories=[t.model_copy(update={"prompt_ids": o.prompt_ids})
                                for t, o in zip(batch.trajectories, other_prompts.trajectories)],
                  advantages=batch.advantages)
    elsewhere = _logprobs_by_trajectory(cpu, moved)
    context_effect = torch.cat([(fp32[i] - elsewhere[i]).abs() for i in fp32]).mean()
    assert context_effect > 10 * BF16_MEAN_TOL, context_effect.item()


def test_one_cuda_learner_step_changes_the_adapter_without_holding_the_batch_logits(tiny_llama_dir,
                                                                                   record_property):
    """build_learner with configs/gpu.yaml's learner settings: on CUDA it loads the base in bf16 and keeps LoRA
    in float32; one step on a batch with non-zero advantages moves the adapter. Its peak memory is reported
    (record_property: bench/gpu_check.sh reads it from the JUnit XML) and bounded: the log-probs are taken in
    chunks of the LM head (learner.LinearLogprob), never as the batch's (tokens x vocab) float32 logits."""
    cfg = load_config(GPU_CONFIG, [f"model.name={tiny_llama_dir}", "ray.enabled=false", "rollout.engine=hf"])
    learner = build_learner(cfg)
    assert learner.device.type == "cuda" and learner.bf16
    frozen = [p for p in learner.model.parameters() if not p.requires_grad]
    assert {p.dtype for p in frozen} == {torch.bfloat16}
    assert {p.dtype for p in learner.params} == {torch.float32}

    batch = _synthetic_batch(SMOLLM2_VOCAB, num_groups=8, group_size=8, prompt_tokens=128,
                             completion_tokens=128)
    assert any(a != 0 for row in batch.advantages for a in row)
    before = learner.adapter_state()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    metrics = learner.step(batch)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - start
    after = learner.adapter_state()

    assert math.isfinite(metrics["learner/loss"]) and metrics["learner/tokens"] == batch.num_tokens
    assert all(torch.isfinite(t).all() for t in after.tensors.values())
    moved = [k for k in before.tensors if not torch.equal(before.tensors[k], after.tensors[k])]
    # B leaves zero; A gets no gradient while B is zero
    assert moved and all("lora_B" in k for k in moved), moved
    completion_tokens = sum(len(t.completion_ids) for t in batch.trajectories)
    full_logits = completion_tokens * SMOLLM2_VOCAB * 4  # float32 bytes of the batch's logits at once
    assert peak < full_logits / 4, (peak / 2**20, full_logits / 2**20)
    record_property("learner_step_peak_mib", round(peak / 2**20, 1))
    record_property("learner_step_tokens_per_s", round(metrics["learner/tokens_per_s"], 1))
    print(f"tiny learner step on CUDA: {metrics['learner/tokens_per_s']:.0f} tokens/s, "
          f"peak +{peak / 2**20:.1f} MiB (the batch's float32 logits would be {full_logits / 2**20:.0f} MiB)")


# --------------------------------------------------------------------------------------------------
# vLLM rollouts on one GPU (rollout.engine=vllm, in-process worker, as the loop builds it)


def _gpu_config(tmp_path: Path, model_dir: Path, *overrides: str):
    """configs/gpu.yaml, small: the tiny chat model, 2 tasks x G=4 per step, short turns, few eval tasks."""
    reward = tmp_path / "even_tokens.py"
    reward.write_text(EVEN_TOKEN_REWARD)
    return load_config(GPU_CONFIG, [
        f"output_dir={tmp_path / 'runs'}", f"model.name={model_dir}", "steps=3", "data.tasks_per_step=2",
        "data.train_tasks=16", "rollout.group_size=4", "rollout.max_new_tokens=24", "rollout.max_turns=2",
        "rollout.max_total_tokens=64", "eval.every=2", "eval.tasks=2", "checkpoint.every=2",
        "logging.wandb=disabled", "logging.samples_every=0",
        f"rewards.functions=[{{name: '{reward}:even_token_share'}}]", *overrides])


# A random model never answers a calculator task, so the env's own rewards are all 0 and so would every
# advantage be (no gradient, an adapter that never changes); this one differs between its samples.
EVEN_TOKEN_REWARD = '''
def even_token_share(trajectory, task):
    """The share of sampled tokens with an even id."""
    sampled = [t for t, m in zip(trajectory.completion_ids, trajectory.loss_mask) if m]
    return sum(t % 2 == 0 for t in sampled) / max(len(sampled), 1)
'''


def _greedy_samples(backend, cfg, tasks) -> tuple[int, list[list[int]]]:
    """One greedy trajectory per task: (the policy version that sampled it, each one's completion ids)."""
    settings = cfg.rollout.model_copy(update={"group_size": 1, "temperature": 0.0, "max_turns": 1,
                                              "max_new_tokens": 16})
    results = backend.collect(backend.submit(tasks, settings, seed=0, min_version=0))
    trajectories = [t for r in results for g in r.groups for t in g.trajectories]
    assert len(trajectories) == len(tasks) and all(t.completion_ids for t in trajectories)
    assert all(len(t.logprobs) == len(t.completion_ids) and all(-math.inf < lp <= 0 for lp in t.logprobs)
               for t in trajectories)
    versions = {t.policy_version for t in trajectories}
    assert len(versions) == 1
    return versions.pop(), [t.completion_ids for t in trajectories]


@needs_vllm
class TestVLLMRolloutsOnOneGPU:
    """One vLLM engine (sleep mode on, half the GPU: VLLMEngine's defaults) and the learner, in this process.
    Class-scoped so the engine is shut down before the end-to-end runs start their own."""

    @pytest.fixture(scope="class")
    def vllm_side(self, tiny_chat_model, tmp_path_factory):
        from rlvr.envs.calculator import calculator_tasks

        from rlvr.rollout.workers import LocalRollouts, RolloutWorker

        cfg = _gpu_config(tmp_path_factory.mktemp("vllm"), tiny_chat_model, "ray.enabled=false")
        assert cfg.rollout.engine == "vllm"
        learner = build_learner(cfg)
        backend = LocalRollouts(RolloutWorker(cfg))  # the worker builds its own vLLM engine
        yield cfg, learner, backend, calculator_tasks(4, seed=5)
        backend.close()

    def _served_lora_ids(self, backend) -> set[int]:
        worker = backend.worker
        return set(worker.loop.run_until_complete(worker.engine.engine.list_loras()))

    def test_a_synced_adapter_version_is_served_and_changes_the_samples(self, vllm_side):
        cfg, learner, backend, tasks = vllm_side
        backend.sync(learner, version=0)  # the fresh adapter: B = 0, the base model's samples
        version, base = _greedy_samples(backend, cfg, tasks)
        assert version == 0
        _randomise_lora_b(learner.model, seed=1)
        backend.sync(learner, version=1)
        version, synced = _greedy_samples(backend, cfg, tasks)
        assert version == 1 and self._served_lora_ids(backend) == {2}  # LoRA id = version + 1; v0 was removed
        assert synced != base

    def test_the_engine_sleeps_through_a_learner_step_and_generates_after_waking(self, vllm_side):
        cfg, learner, backend, tasks = vllm_side
        _randomise_lora_b(learner.model, seed=2)
        backend.sync(learner, version=3)
        _, before_sleep = _greedy_samples(backend, cfg, tasks)
        total = torch.cuda.get_device_properties(0).total_memory

        free_awake = torch.cuda.mem_get_info()[0]
        backend.sleep()
        free_asleep = torch.cuda.mem_get_info()[0]
        # the engine holds half the GPU (gpu_memory_utilization 0.5), nearly all of it KV cache on this tiny
        # model; level-1 sleep drops the KV cache and moves the weights to the CPU
        assert free_asleep - free_awake > 0.25 * total, ((free_asleep - free_awake) / 2**30, total / 2**30)
        adapter_before_step = learner.adapter_state()
        vocab = learner.model.get_base_model().config.vocab_size
        metrics = learner.step(_synthetic_batch(vocab))  # on the GPU memory vLLM gave back
        assert math.isfinite(metrics["learner/loss"])
        after_step = learner.adapter_state().tensors
        assert any(not torch.equal(adapter_before_step.tensors[k], v) for k, v in after_step.items())
        backend.wake_up()

        version, after_wake = _greedy_samples(backend, cfg, tasks)
        assert version == 3 and after_wake == before_sleep  # the weights and adapter v3 came back intact
        backend.sync(learner, version=4)  # the loop's order: wake, then serve the new policy
        version, _ = _greedy_samples(backend, cfg, tasks)
        assert version == 4 and self._served_lora_ids(backend) == {5}


# --------------------------------------------------------------------------------------------------
# configs/gpu.yaml end to end


@pytest.mark.parametrize("overrides", [
    pytest.param(("rollout.engine=hf", "ray.enabled=false"), id="hf-in-process"),
    pytest.param(("ray.enabled=false",), id="vllm-in-process", marks=needs_vllm),
    pytest.param((), id="vllm-on-ray-one-gpu", marks=[needs_vllm, needs_ray]),  # gpu.yaml as it is
])
def test_gpu_yaml_trains_a_few_steps_end_to_end(tmp_path, tiny_chat_model, overrides):
    """configs/gpu.yaml with a tiny model and 3 steps through rlvr.loop.train: rollouts on the GPU, learner
    steps, adapter syncs, held-out evaluation after steps 2 and 3, a checkpoint at step 2, the final adapter.
    As configured (vLLM, Ray, learner and engine sharing the one GPU), the engine sleeps through each learner
    step; the lent GPU machine has neither vLLM nor Ray, so there only the HF engine in-process runs."""
    from safetensors.torch import load_file

    from rlvr.loop import train

    cfg = _gpu_config(tmp_path, tiny_chat_model, *overrides)
    run = train(cfg)
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row["batch/trajectories"] == 8 and row["rollout/sampled_tokens"] > 0
        assert row["rollout/staleness_max"] == 0  # on one GPU rollouts and learner steps take turns
        assert math.isfinite(row["learner/loss"]) and row["learner/tokens_per_s"] > 0
        # the engine's log-probs are the learner's up to bf16 kernels (the bound of tests/test_vllm_engine.py)
        assert row["learner/behaviour_logp_abs_diff"] < 0.05, row["learner/behaviour_logp_abs_diff"]
        if cfg.rollout.engine == "vllm":
            assert row["time/sync_s"] > 0  # a real adapter hand-over, not the learner's own model
    assert ["eval/mean" in r for r in rows] == [False, True, True]
    assert (run.path / "checkpoints" / "step-000002" / "meta.json").is_file()
    adapter = load_file(run.path / "adapter" / "adapter_model.safetensors")
    assert any(t.abs().max() > 0 for k, t in adapter.items() if "lora_B" in k)  # the learner moved it



def test_the_continuous_engine_on_cuda_samples_what_generate_samples():
    """The slot decoder's forward on CUDA (fp32): the same greedy and seeded tokens as the generate engine on
    the same GPU, for a batch mixing a group's copies, a shorter prompt and a next turn."""
    from rlvr.core.protocols import SamplingParams
    from rlvr.rollout.continuous import ContinuousEngine
    from rlvr.rollout.engine import HFEngine

    tokenizer = SimpleNamespace(pad_token_id=0)  # generate's padding; no stop strings here
    model = add_lora(_tiny_llama().cuda(), LoraConfig(rank=4))
    _randomise_lora_b(model, 1)
    generator = torch.Generator().manual_seed(3)
    base = torch.randint(0, SMOLLM2_VOCAB, (40,), generator=generator).tolist()
    prompts = [base] * 3 + [base[:24] + [7, 8, 9]]
    for temperature in (0.0, 1.0):
        params = [SamplingParams(max_tokens=12, temperature=temperature, seed=i) for i in range(len(prompts))]
        expected = HFEngine(model, tokenizer, stop_ids=set()).generate_batch(prompts, params)
        engine = ContinuousEngine(model, tokenizer, stop_ids=set())
        got = engine.generate_batch(prompts, params)
        assert [c.token_ids for c in got] == [c.token_ids for c in expected]
        turn2 = [p + c.token_ids + [11, 12] for p, c in zip(prompts, got)]
        assert ([c.token_ids for c in engine.generate_batch(turn2, params)]
                == [c.token_ids for c in HFEngine(model, tokenizer, stop_ids=set(), prefix_store_tokens=0)
                    .generate_batch(turn2, params)])
