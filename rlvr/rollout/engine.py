"""Generation engines: token ids in, sampled token ids and their log-probs out.

Every engine returns, for each sampled token, its log-prob under the distribution it was actually
sampled from (after temperature and top-p), which is what the learner's importance ratios need.

`HFEngine` runs Hugging Face `generate` on CPU or GPU with two prompt caches: prefixes shared within a batch
are prefilled once, and the KV cache of every finished request is kept (`PrefixStore`), so a conversation's
next turn, which repeats all of it, prefills only the tool result and what follows.
Requests arrive through the async `generate` from many concurrent trajectories and are batched: a batch
stays open while requests keep arriving, and tools run in their own threads while a batch generates.
Generation itself runs on the event loop's thread (see `_serve`). Sampling draws one uniform number per token
from a generator seeded per request (`sample_rows`), so a request's tokens depend on its seed and not on
which other requests happened to share its batch: rollouts are reproducible given a seed.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rlvr.core.protocols import Completion, SamplingParams
from rlvr.training.attention import use_prefix_attention
from rlvr.training.models import AdapterState


@dataclass
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    future: asyncio.Future = field(repr=False)


def sample_rows(logits: Tensor, generators: list[torch.Generator], temperature: float, top_p: float
                ) -> tuple[Tensor, Tensor]:
    """One token per row: logits (B, V) -> (tokens (B,), their log-probs (B,) under the distribution sampled
    from, after temperature and top-p). Temperature 0 is greedy. Otherwise inverse-CDF sampling with one
    uniform draw per token from the row's own generator, so a row's tokens depend on its seed alone (and
    the draw costs one number, not one per vocabulary entry as Gumbel-max would)."""
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    if top_p < 1.0:
        logits = _top_p_filter(logits, top_p)
    logp = torch.log_softmax(logits, -1)
    if temperature > 0:
        uniform = torch.cat([torch.rand(1, generator=g, device=logp.device) for g in generators])
        cdf = logp.exp().double().cumsum_(-1)  # float64: a float32 sum near 1 would round away rare tokens
        # right=True: the first token whose cumulative mass exceeds the draw, never one of zero mass
        tokens = torch.searchsorted(cdf, (uniform.double() * cdf[:, -1])[:, None], right=True)[:, 0]
        tokens = tokens.clamp_(max=logp.shape[-1] - 1)
    else:
        tokens = logp.argmax(-1)
    return tokens, logp.gather(-1, tokens[:, None])[:, 0]


class _SeededSampler:
    """A logits processor for `generate` that samples with `sample_rows` and records the log-probs.

    It returns scores whose only finite entry is the sampled token, so `generate` runs with do_sample=False.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.logprobs: list[Tensor] = []  # per step, (B,)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        tokens, logprobs = sample_rows(scores, self.generators, self.temperature, self.top_p)
        self.logprobs.append(logprobs)
        return torch.full_like(scores, float("-inf")).scatter_(-1, tokens[:, None], 0.0)


def _batch_key(params: SamplingParams) -> tuple:
    return params.temperature, params.top_p, params.stop


def _merged_copy(peft_model):
    """A plain (PEFT-free) copy of the base model whose weights carry the adapter merged in."""
    import copy

    plain = copy.deepcopy(peft_model).unload()  # PEFT's own unwrapping: LoRA layers back to their base layers
    _merge_into(plain, peft_model)
    return plain.eval()


@torch.no_grad()
def merged_linear(linear) -> tuple[Tensor, Tensor | None]:
    """A linear layer's weight with its active LoRA adapters merged in (in float32, rounded once to the base
    dtype, so merges never accumulate rounding), and its bias; a plain linear layer's own."""
    from peft.tuners.lora import LoraLayer

    if not isinstance(linear, LoraLayer):
        return linear.weight, linear.bias
    base = linear.get_base_layer()
    weight = base.weight.float()
    if not linear.disable_adapters:
        for adapter in linear.active_adapters:
            if adapter in linear.lora_A:
                weight = weight + linear.get_delta_weight(adapter).float()
    return weight.to(base.weight.dtype), base.bias


@torch.no_grad()
def _merge_into(plain, peft_model) -> None:
    """plain's linear weights = the PEFT model's LoRA layers' merged weights."""
    from peft.tuners.lora import LoraLayer

    for name, layer in peft_model.get_base_model().named_modules():
        if isinstance(layer, LoraLayer):
            plain.get_submodule(name).weight.copy_(merged_linear(layer)[0])


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


KV = list[tuple[Tensor, Tensor]]  # per layer: keys and values, (kv_heads, tokens, head_dim)


class PrefixStore:
    """The KV caches of finished requests (prompt + completion), found again by the longest common token
    prefix with a new prompt: a multi-turn trajectory's next prompt is its last prompt and completion plus
    the tool results, so only those need a forward pass. Least recently used entries go first once the
    entries hold more than `max_tokens` tokens; `clear()` when the weights change (the KV is theirs)."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[int, ...], KV] = OrderedDict()
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prompts: list[list[int]]) -> list[tuple[int, KV | None]]:
        """Per prompt, (n, KV whose first n positions are the prompt's first n tokens) for the entry sharing
        the longest prefix with it, n < len(prompt) (generation needs one uncached token); (0, None) when
        no entry shares MIN_SHARED_PREFIX tokens."""
        if not self._entries:
            return [(0, None)] * len(prompts)
        keys = list(self._entries)
        table = torch.nn.utils.rnn.pad_sequence([torch.tensor(k) for k in keys], batch_first=True,
                                                padding_value=-1)  # (entries, longest)
        found = []
        for prompt in prompts:
            n = min(len(prompt) - 1, table.shape[1])
            same = table[:, :n] == torch.tensor(prompt[:n])
            common = same.long().cumprod(-1).sum(-1)  # (entries,) common prefix lengths
            best = int(common.argmax())
            length = int(common[best])
            if length < MIN_SHARED_PREFIX:
                found.append((0, None))
                continue
            self._entries.move_to_end(keys[best])
            found.append((length, self._entries[keys[best]]))
        return found

    def wants(self, ids: list[int]) -> bool:
        """Whether `put(ids, ...)` would keep an entry: one not stored yet (a group's rows often finish alike)
        that fits at all; asked before gathering its KV."""
        return len(ids) <= self.max_tokens and tuple(ids) not in self._entries

    def put(self, ids: list[int], kv: KV) -> None:
        if not self.wants(ids):
            return
        key = tuple(ids)
        self._entries[key] = kv
        self._tokens += len(key)
        while self._tokens > self.max_tokens:
            self._tokens -= len(self._entries.popitem(last=False)[0])

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0


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

    def __init__(self, model, tokenizer, *, stop_ids: set[int], max_batch: int = 64, bf16: bool | None = None,
                 prefix_store_tokens: int = 32768):
        self.peft_model = model if hasattr(model, "get_base_model") else None
        self.model = _merged_copy(model) if self.peft_model is not None else model
        self.max_context = getattr(self.model.config, "max_position_embeddings", None)
        # decoding queries (one token against the cache) run as two matmuls: PyTorch's CPU flash kernel took
        # ~1.9x as long per decode step (SmolLM2-135M, batch 16, 255-token prompts: 154 vs 82 ms)
        use_prefix_attention(self.model)
        self.tokenizer = tokenizer
        self.stop_ids = sorted(stop_ids)
        self.max_batch = max_batch
        self.device = next(model.parameters()).device
        self.bf16 = (next(model.parameters()).dtype == torch.bfloat16) if bf16 is None else bf16
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.prefix_store = PrefixStore(prefix_store_tokens)
        self._queue: list[_Request] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._lock = threading.Lock()  # one generate at a time on the model

    # -- synchronous batch API ---------------------------------------------------------------------

    @torch.no_grad()
    def generate_batch(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Completion]:
        """Generate for `prompts` in one `generate` call. All params must share temperature, top_p and stop
        strings (HF applies stop strings to the whole batch).

        A row's prompt prefix comes from the KV cache when it can: from the `PrefixStore` (an earlier turn of
        its conversation, or any earlier prompt sharing its system prompt), else from prefixes shared in this
        batch (a group's G copies, every task's system prompt and tool schemas), prefilled once for all their
        rows. Each row is [left padding][cached prefix][padding][own suffix], and positions come from the
        attention mask, so the padding in the middle changes nothing but the work.
        """
        from transformers import GenerationConfig

        first = params[0]
        if any(_batch_key(p) != _batch_key(first) for p in params):
            raise ValueError("one batch needs one temperature, top_p and set of stop strings")
        with self._lock:  # one batch at a time on the model and the store
            stored = self.prefix_store.lookup(prompts)
            in_batch = {i: length for rows, length in shared_prefixes(prompts) for i in rows}
            reused = [i for i, (length, _) in enumerate(stored) if length and length >= in_batch[i]]
            rest = sorted(set(range(len(prompts))) - set(reused))
            groups = [([rest[j] for j in rows], length) for rows, length in shared_prefixes([prompts[i] for i in rest])]
            cached = {i: stored[i][0] for i in reused} | {i: length for rows, length in groups for i in rows}
            prefix_width = max(cached.values())
            suffix_width = max(len(prompts[i]) - cached[i] for i in cached)
            width = prefix_width + suffix_width
            ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros(len(prompts), width, dtype=torch.long)
            for i, prompt in enumerate(prompts):
                length = cached[i]
                ids[i, prefix_width - length : prefix_width] = torch.tensor(prompt[:length], dtype=torch.long)
                ids[i, width - len(prompt) + length :] = torch.tensor(prompt[length:], dtype=torch.long)
                attention[i, prefix_width - length : prefix_width] = 1
                attention[i, width - len(prompt) + length :] = 1
            ids, attention = ids.to(self.device), attention.to(self.device)
            sampler = _SeededSampler([p.seed for p in params], first.temperature, first.top_p, self.device)
            stop_strings = list(first.stop)
            config = GenerationConfig(max_new_tokens=max(p.max_tokens for p in params), do_sample=False,
                                      eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
                                      stop_strings=stop_strings or None, use_cache=True, return_dict_in_generate=True)
            # The model's own generation_config (a hub model may ship do_sample, top_k, top_p, temperature,
            # repetition_penalty, ...) fills every field `config` leaves unset, and its processors would change
            # the scores before the sampler sees them: the sampled distribution would no longer be the one
            # whose log-probs are recorded, nor the one the learner recomputes. Generate under a neutral one.
            shipped, self.model.generation_config = self.model.generation_config, GenerationConfig()
            try:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    cache = self._prefix_cache(ids, attention, prefix_width, groups, {i: stored[i] for i in reused})
                    out = self.model.generate(input_ids=ids, attention_mask=attention, generation_config=config,
                                              past_key_values=cache, logits_processor=[sampler],
                                              tokenizer=self.tokenizer if stop_strings else None)
            finally:
                self.model.generation_config = shipped
            new = out.sequences[:, width:].tolist()
            logprobs = torch.stack(sampler.logprobs, 1).tolist()
            completions = []
            for row, lps, p in zip(new, logprobs, params):
                end = self._stop_index(row[: p.max_tokens], p.stop)
                if end is None:
                    completions.append(Completion(row[: p.max_tokens], lps[: p.max_tokens], "length"))
                else:
                    completions.append(Completion(row[: end + 1], lps[: end + 1], "stop"))
            self._store(prompts, completions, attention, out.past_key_values)
        return completions

    def _prefix_cache(self, ids: Tensor, attention: Tensor, prefix_width: int, groups: list[tuple[list[int], int]],
                      stored: dict[int, tuple[int, KV]]):
        """The DynamicCache of the batch's first `prefix_width` columns: each in-batch group's prefix
        prefilled once (through its first row) and copied to its rows, each reused row's stored KV copied in;
        None when no row has a cached prefix."""
        from transformers import DynamicCache

        if not prefix_width:
            return None
        heads = [rows[0] for rows, length in groups if length]
        slot = torch.zeros(len(ids), dtype=torch.long, device=self.device)  # a row's head: 1 + index, 0 = none
        for number, (rows, _) in enumerate((g for g in groups if g[1]), start=1):
            slot[rows] = number
        if heads:
            mask = attention[heads, :prefix_width]
            prefilled = self.model(input_ids=ids[heads, :prefix_width], attention_mask=mask, use_cache=True,
                                   position_ids=(mask.cumsum(-1) - 1).clamp_(min=0), logits_to_keep=1)
            layers = [(k, v) for k, v, *_ in prefilled.past_key_values]
        else:  # every cached prefix is a stored one: zeros of the stored KV's shape
            kv = next(iter(stored.values()))[1]
            layers = [(k.new_zeros(1, k.shape[0], prefix_width, k.shape[2]),) * 2 for k, _ in kv]
        cache = []
        for layer, (k, v) in enumerate(layers):
            # a row without a head gets zeros there (all masked, or overwritten by its stored KV)
            k, v = torch.cat([torch.zeros_like(k[:1]), k])[slot], torch.cat([torch.zeros_like(v[:1]), v])[slot]
            for i, (length, kv) in stored.items():
                k[i, :, prefix_width - length :] = kv[layer][0][:, :length]
                v[i, :, prefix_width - length :] = kv[layer][1][:, :length]
            cache.append((k, v))
        return DynamicCache(ddp_cache_data=cache)

    def _store(self, prompts: list[list[int]], completions: list[Completion], attention: Tensor, cache) -> None:
        """Keep each row's KV (prompt and completion tokens, the padding left out) in the prefix store. The
        last sampled token of the batch was never fed through the model, so it may be missing."""
        layers = [(k, v) for k, v, *_ in cache]
        width, fed = attention.shape[1], layers[0][0].shape[2]
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            kept = min(len(completion.token_ids), fed - width)
            key = prompt + completion.token_ids[:kept]
            if not self.prefix_store.wants(key):  # gather nothing the store would refuse
                continue
            columns = torch.cat([attention[i].nonzero()[:, 0],
                                 torch.arange(width, width + kept, device=attention.device)])
            self.prefix_store.put(key, [(k[i][:, columns], v[i][:, columns]) for k, v in layers])

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
                await let_arrivals_join(self._queue, self.max_batch, loop)
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

    async def set_adapter(self, adapter: AdapterState | None) -> None:
        """Serve `adapter` (None: the PeftModel's own adapter, changed in place), between batches."""
        if self.peft_model is None:
            raise ValueError("this HFEngine was given a model without a LoRA adapter: it has none to load")
        with self._lock:  # not while a batch is generating
            if adapter is not None:
                adapter.load_into(self.peft_model)
            _merge_into(self.model, self.peft_model)
            self.prefix_store.clear()


async def let_arrivals_join(queue: list, max_batch: int, loop) -> None:
    """Hold a batch open while requests keep arriving in `queue` (tool results landing from their threads),
    for at most BATCH_WINDOW_S: a trajectory a moment late would otherwise wait a whole batch, or make the
    others wait for its batch of one (seen: 15 trajectories idle 3.9 s behind one)."""
    deadline = loop.time() + BATCH_WINDOW_S
    size = -1
    while len(queue) != size and len(queue) < max_batch and loop.time() < deadline:
        size = len(queue)
        await asyncio.sleep(BATCH_QUIET_S)
