"""Generation engines: token ids in, sampled token ids and their log-probs out.

Every engine returns, for each sampled token, its log-prob under the distribution it was actually
sampled from (after temperature and top-p), which is what the learner's importance ratios need.

`HFEngine` runs Hugging Face `generate` (KV cache, shared prompt prefixes prefilled once) on CPU or GPU.
Requests arrive through the async `generate` from many concurrent trajectories and are batched: a batch
stays open while requests keep arriving, and tools run in their own threads while a batch generates.
Generation itself runs on the event loop's thread (see `_serve`). Sampling is Gumbel-max with
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

from rlvr.attention import use_prefix_attention
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


def _merged_copy(peft_model):
    """A plain (PEFT-free) copy of the base model whose weights carry the adapter merged in."""
    import copy

    plain = copy.deepcopy(peft_model).unload()  # PEFT's own unwrapping: LoRA layers back to their base layers
    _merge_into(plain, peft_model)
    return plain.eval()


@torch.no_grad()
def _merge_into(plain, peft_model) -> None:
    """plain's linear weights = the PEFT model's base weights + its active adapters' deltas (in float32,
    rounded once to the base dtype), so merges never accumulate rounding."""
    from peft.tuners.lora import LoraLayer

    for name, layer in peft_model.get_base_model().named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        weight = layer.get_base_layer().weight
        merged = weight.float()
        if not layer.disable_adapters:
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    merged = merged + layer.get_delta_weight(adapter).float()
        plain.get_submodule(name).weight.copy_(merged.to(weight.dtype))


BATCH_QUIET_S = 0.003  # a batch closes once no request has arrived for this long...
BATCH_WINDOW_S = 0.05  # ...or this long after it opened
MIN_SHARED_PREFIX = 16  # rows are grouped by their first tokens; shorter common prefixes are not worth a pass


def shared_prefixes(prompts: list[list[int]]) -> list[tuple[list[int], int]]:
    """Rows -> groups (row indices, prefix length): the rows of a group start with the same `length` tokens,
    and every row keeps at least its last token outside the prefix (generation needs one uncached token).
    Rows are grouped by their first MIN_SHARED_PREFIX tokens; a group's prefix is its rows' common prefix."""
    buckets: dict[tuple[int, ...], list[int]] = {}
    for i, prompt in enumerate(prompts):
        buckets.setdefault(tuple(prompt[:MIN_SHARED_PREFIX]), []).append(i)
    groups = []
    for rows in buckets.values():
        common = min(len(prompts[i]) for i in rows) - 1
        head = prompts[rows[0]]
        for i in rows[1:]:
            common = next((k for k in range(common) if prompts[i][k] != head[k]), common)
        groups.append((rows, max(common, 0)))
    return groups


def _top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (always at least the top one)."""
    sorted_logits, order = logits.sort(-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop = cumulative - sorted_logits.softmax(-1) >= top_p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


class HFEngine:
    """Batched Hugging Face `generate` behind an async request queue.

    `model` may be a PeftModel: generation then runs on a plain copy of the base with the adapter merged
    into its weights (one more copy of the base weights; a LoRA layer's extra small ops made each decode
    step ~1.6x as long: SmolLM2-135M, batch 16, 88 vs 55 ms). `set_adapter(adapter)` loads an adapter sent
    from elsewhere into the PeftModel; `set_adapter(None)` says the PeftModel's adapter changed in place
    (in-process it is the learner's own model); both re-merge.
    """

    def __init__(self, model, tokenizer, *, stop_ids: set[int], max_batch: int = 64, bf16: bool | None = None):
        self.peft_model = model if hasattr(model, "get_base_model") else None
        self.model = _merged_copy(model) if self.peft_model is not None else model
        # decoding queries (one token against the cache) run as two matmuls: PyTorch's CPU flash kernel took
        # ~1.9x as long per decode step (SmolLM2-135M, batch 16, 255-token prompts: 154 vs 82 ms)
        use_prefix_attention(self.model)
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
        strings (HF applies stop strings to the whole batch).

        Prompts that start alike (a group's G copies, every task's system prompt and tool schemas, earlier
        turns) have their common prefix prefilled once and its KV cache copied to their rows: each row is
        [left padding][shared prefix][padding][own suffix], and positions come from the attention mask, so
        the padding in the middle changes nothing but the work.
        """
        from transformers import DynamicCache, GenerationConfig

        first = params[0]
        if any(_batch_key(p) != _batch_key(first) for p in params):
            raise ValueError("one batch needs one temperature, top_p and set of stop strings")
        groups = shared_prefixes(prompts)
        prefix_width = max(length for _, length in groups)
        suffix_width = max(len(prompts[i]) - length for rows, length in groups for i in rows)
        width = prefix_width + suffix_width
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros(len(prompts), width, dtype=torch.long)
        heads = []  # one row per distinct prefix, prefilled once
        slot = torch.zeros(len(prompts), dtype=torch.long)  # each row's prefix cache: 1 + its head, 0 = none
        for rows, length in groups:
            if length:
                heads.append(rows[0])
            for i in rows:
                prompt, slot[i] = prompts[i], len(heads) if length else 0
                ids[i, prefix_width - length : prefix_width] = torch.tensor(prompt[:length], dtype=torch.long)
                ids[i, width - len(prompt) + length :] = torch.tensor(prompt[length:], dtype=torch.long)
                attention[i, prefix_width - length : prefix_width] = 1
                attention[i, width - len(prompt) + length :] = 1
        ids, attention = ids.to(self.device), attention.to(self.device)
        sampler = _SeededSampler([p.seed for p in params], first.temperature, first.top_p, self.device)
        max_new = max(p.max_tokens for p in params)
        stop_strings = list(first.stop)
        config = GenerationConfig(max_new_tokens=max_new, do_sample=False, eos_token_id=self.stop_ids,
                                  pad_token_id=self.pad_id, stop_strings=stop_strings or None, use_cache=True)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with self._lock, autocast:
            cache = None
            if prefix_width:  # prefill each distinct prefix once, then give every row its group's cache
                mask = attention[heads, :prefix_width]
                out = self.model(input_ids=ids[heads, :prefix_width], attention_mask=mask, use_cache=True,
                                 position_ids=(mask.cumsum(-1) - 1).clamp_(min=0), logits_to_keep=1)
                # a row without a shared prefix (a one-token prompt) gets zeros there, all masked
                index = slot.to(self.device)
                cache = DynamicCache(ddp_cache_data=[
                    (torch.cat([torch.zeros_like(k[:1]), k])[index], torch.cat([torch.zeros_like(v[:1]), v])[index])
                    for k, v, *_ in out.past_key_values])
            out = self.model.generate(input_ids=ids, attention_mask=attention, generation_config=config,
                                      past_key_values=cache, logits_processor=[sampler],
                                      tokenizer=self.tokenizer if stop_strings else None)
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
            while self._queue:
                await self._let_arrivals_join(loop)
                key = _batch_key(self._queue[0].params)
                batch = [r for r in self._queue if _batch_key(r.params) == key][: self.max_batch]
                self._queue = [r for r in self._queue if r not in batch]
                try:
                    # on the loop's own thread: torch work from a second thread ran ~10% slower here (two
                    # OpenMP teams); tools keep running in their threads meanwhile
                    results = self.generate_batch([r.prompt_ids for r in batch], [r.params for r in batch])
                except Exception as e:  # hand the failure to every waiting trajectory
                    for r in batch:
                        if not r.future.done():
                            r.future.set_exception(e)
                    continue
                for r, result in zip(batch, results):
                    if not r.future.done():
                        r.future.set_result(result)

    async def _let_arrivals_join(self, loop) -> None:
        """Hold the batch open while requests keep arriving (tool results landing from their threads), for at
        most BATCH_WINDOW_S: a trajectory a moment late would otherwise wait a whole batch, or make the
        others wait for its batch of one (seen: 15 trajectories idle 3.9 s behind one)."""
        deadline = loop.time() + BATCH_WINDOW_S
        size = -1
        while len(self._queue) != size and len(self._queue) < self.max_batch and loop.time() < deadline:
            size = len(self._queue)
            await asyncio.sleep(BATCH_QUIET_S)

    async def set_adapter(self, adapter: AdapterState | None) -> None:
        """Serve `adapter` (None: the PeftModel's own adapter, changed in place), between batches."""
        if self.peft_model is None:
            raise ValueError("this HFEngine was given a model without a LoRA adapter: it has none to load")
        with self._lock:  # not while a batch is generating
            if adapter is not None:
                adapter.load_into(self.peft_model)
            _merge_into(self.model, self.peft_model)
