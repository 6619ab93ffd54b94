"""Generation engines: token ids in, sampled token ids and their log-probs out.

Every engine returns, for each sampled token, its log-prob under the distribution it was actually
sampled from (after temperature and top-p), which is what the learner's importance ratios need.

`HFEngine` runs Hugging Face `generate` (KV cache, left padding) on CPU or GPU. Requests arrive through
the async `generate` from many concurrent trajectories and are batched: while one batch generates,
new requests queue for the next, so tool latency overlaps generation. Sampling is Gumbel-max with
noise drawn from a generator seeded per request, so a request's tokens depend on its seed and not on
which other requests happened to share its batch: rollouts are reproducible given a seed.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor

from rlvr.models import AdapterState


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()  # stop strings, kept in the output (the stop tokens are always honoured)


@dataclass
class Completion:
    token_ids: list[int]  # sampled ids, ending with the stop token when finish_reason == "stop"
    logprobs: list[float]  # one per sampled id, under the sampling distribution
    finish_reason: Literal["stop", "length"]


class Engine(Protocol):
    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion: ...

    async def set_adapter(self, adapter: AdapterState | None) -> None: ...


@dataclass
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    future: asyncio.Future = field(repr=False)


class _SeededSampler:
    """A logits processor that samples with per-row seeded Gumbel noise and records log-probs.

    It returns scores whose argmax is the sampled token, so `generate` runs with do_sample=False.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.logprobs: list[Tensor] = []  # per step, (B,)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        logits = scores.float()
        if self.temperature > 0:
            logits = logits / self.temperature
        if self.top_p < 1.0:
            logits = _top_p_filter(logits, self.top_p)
        logp = torch.log_softmax(logits, -1)
        if self.temperature > 0:
            uniform = torch.stack([torch.rand(logp.shape[-1], generator=g, device=logp.device)
                                   for g in self.generators])
            scores = logp - torch.log(-torch.log(uniform.clamp_(min=1e-20)))  # + Gumbel(0, 1)
        else:
            scores = logp
        self.logprobs.append(logp.gather(-1, scores.argmax(-1, keepdim=True))[:, 0])
        return scores


def _batch_key(params: SamplingParams) -> tuple:
    return params.temperature, params.top_p, params.stop


def _top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (always at least the top one)."""
    sorted_logits, order = logits.sort(-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop = cumulative - sorted_logits.softmax(-1) >= top_p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


class HFEngine:
    """Batched Hugging Face `generate` behind an async request queue.

    `model` may be a PeftModel: generation then uses its current adapter (in-process it is the learner's
    own model, so it is always the newest policy); `set_adapter` loads an adapter sent from elsewhere.
    """

    def __init__(self, model, tokenizer, *, stop_ids: set[int], max_batch: int = 64, bf16: bool | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = sorted(stop_ids)
        self.max_batch = max_batch
        self.device = next(model.parameters()).device
        self.bf16 = (next(model.parameters()).dtype == torch.bfloat16) if bf16 is None else bf16
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self._queue: list[_Request] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._lock = threading.Lock()  # one generate at a time on the model

    # -- synchronous batch API ---------------------------------------------------------------------

    @torch.no_grad()
    def generate_batch(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Completion]:
        """Generate for `prompts` in one `generate` call. All params must share temperature, top_p and stop
        strings (HF applies stop strings to the whole batch)."""
        from transformers import GenerationConfig

        first = params[0]
        if any(_batch_key(p) != _batch_key(first) for p in params):
            raise ValueError("one batch needs one temperature, top_p and set of stop strings")
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        sampler = _SeededSampler([p.seed for p in params], first.temperature, first.top_p, self.device)
        max_new = max(p.max_tokens for p in params)
        stop_strings = list(first.stop)
        config = GenerationConfig(max_new_tokens=max_new, do_sample=False, eos_token_id=self.stop_ids,
                                  pad_token_id=self.pad_id, stop_strings=stop_strings or None, use_cache=True)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with self._lock, autocast:
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                                      logits_processor=[sampler], tokenizer=self.tokenizer if stop_strings else None)
        new = out[:, width:].tolist()
        logprobs = torch.stack(sampler.logprobs, 1).tolist()
        completions = []
        for ids, lps, p in zip(new, logprobs, params):
            end = self._stop_index(ids[: p.max_tokens], p.stop)
            if end is None:
                completions.append(Completion(ids[: p.max_tokens], lps[: p.max_tokens], "length"))
            else:
                completions.append(Completion(ids[: end + 1], lps[: end + 1], "stop"))
        return completions

    def _stop_index(self, ids: list[int], stop: tuple[str, ...]) -> int | None:
        """Index of the token that ends the completion (a stop token, or the end of a stop string)."""
        end = next((i for i, t in enumerate(ids) if t in self.stop_ids), None)
        if stop:  # generate pads a row after its stop string; find where the string ended
            limit = len(ids) if end is None else end
            for i in range(limit):
                if any(s in self.tokenizer.decode(ids[: i + 1]) for s in stop):
                    return i
        return end

    # -- async API with batching ---------------------------------------------------------------------

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._serve())
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(prompt_ids, params, future))
        self._wakeup.set()
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await asyncio.sleep(0)  # let every trajectory that is ready submit before the batch closes
            while self._queue:
                key = _batch_key(self._queue[0].params)
                batch = [r for r in self._queue if _batch_key(r.params) == key][: self.max_batch]
                self._queue = [r for r in self._queue if r not in batch]
                try:
                    results = await loop.run_in_executor(None, self.generate_batch, [r.prompt_ids for r in batch],
                                                         [r.params for r in batch])
                except Exception as e:  # hand the failure to every waiting trajectory
                    for r in batch:
                        if not r.future.done():
                            r.future.set_exception(e)
                    continue
                for r, result in zip(batch, results):
                    if not r.future.done():
                        r.future.set_result(result)

    async def set_adapter(self, adapter: AdapterState | None) -> None:
        """Load `adapter`'s weights into the engine's (PEFT) model, between batches."""
        if adapter is None:
            raise ValueError("HFEngine serves its model's adapter; disable it on the model to sample the base")
        with self._lock:  # not while a batch is generating
            adapter.load_into(self.model)
