"""Continuous batching on a slot KV cache: the HF engine's fast path for llama-family decoders.

`generate` runs a batch until its longest row ends. In a multi-turn rollout rows end at different times:
the finished ones wait for the longest, their tools wait for the batch, and every next turn starts a new
batch. Here a request holds a row of the decoding batch only while it generates. A row that ends is
answered at once (its tool runs in its thread while the others go on decoding), and a request that
arrives joins the very next step: its uncached prompt tokens run in the same forward pass as the other
rows' decoding tokens (the projections and MLP see one flat list of tokens; only attention is per row).

What is already cached is not computed again: a conversation's next turn continues the KV of its last
turn (kept in the `PrefixStore` when the row ends), and the G copies of a group's prompt are prefilled
once (the first copy runs; the others wait one step and copy its KV).

The forward is written out over the model's own modules and weights (embedding, norms, rotary embedding;
q/k/v and gate/up projections fused, LoRA adapters merged in) because transformers' caches assume every
row of a batch sits at the same position. `unsupported(config)` names the models it does not cover;
HFEngine (transformers' `generate`) serves those. Sampling is HFEngine's `sample_rows`, one seeded draw
per token, so both engines sample the same tokens for the same prompt and seed.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from rlvr.core.protocols import Completion, SamplingParams
from rlvr.rollout.engine import MIN_SHARED_PREFIX, PrefixStore, let_arrivals_join, merged_linear, sample_rows
from rlvr.training.models import AdapterState

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
CAPACITY_STEP = 64  # positions the KV cache grows by


def unsupported(config) -> str | None:
    """Why the slot decoder cannot run a model exactly, or None."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {config.model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return "a sliding attention window"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    return None


def _fused(linears) -> tuple[Tensor, Tensor | None]:
    """Several linear layers on the same input as one: their merged weights (and biases) stacked."""
    parts = [merged_linear(linear) for linear in linears]
    weight = torch.cat([w for w, _ in parts])
    if all(b is None for _, b in parts):
        return weight, None
    return weight, torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in parts])


@dataclass
class _Layer:
    input_norm: torch.nn.Module
    post_norm: torch.nn.Module
    qkv: tuple[Tensor, Tensor | None]
    o: tuple[Tensor, Tensor | None]
    gate_up: tuple[Tensor, Tensor | None]
    down: tuple[Tensor, Tensor | None]


class SlotDecoder:
    """A llama-family model's forward over a KV cache of slots, one slot per row, each at its own position.

    Cache: per layer, keys transposed (slots, kv_heads, head_dim, capacity) and values (slots, kv_heads,
    capacity, head_dim). Attention reads only the positions written so far: in this layout the first L
    positions of a slot are a strided view that the batched matmul reads in place (with keys stored
    (capacity, head_dim), the transposed slice is copied: a third of a decode step at batch 32). The
    capacity grows by a quarter (in multiples of CAPACITY_STEP positions), and starts afresh when the
    engine is idle.
    """

    def __init__(self, model):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if reason := unsupported(base.config):
            raise ValueError(f"the slot decoder does not support {reason}")
        self.base = base
        config = base.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.device = next(base.parameters()).device
        self.dtype = next(base.parameters()).dtype
        self.k: list[Tensor] = []
        self.v: list[Tensor] = []
        self.merge()

    def merge(self) -> None:
        """(Re)build the fused, merged weights from the model's current adapter state."""
        decoder = self.base.get_decoder()
        self.embed = decoder.embed_tokens.weight
        self.norm, self.rotary = decoder.norm, decoder.rotary_emb
        self.head = merged_linear(self.base.get_output_embeddings())[0]
        self.layers = []
        for layer in decoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(_Layer(layer.input_layernorm, layer.post_attention_layernorm,
                                      _fused([attn.q_proj, attn.k_proj, attn.v_proj]), merged_linear(attn.o_proj),
                                      _fused([mlp.gate_proj, mlp.up_proj]), merged_linear(mlp.down_proj)))

    def reserve(self, slots: int, tokens: int) -> None:
        """Make room for `slots` rows of `tokens` positions (contents kept)."""
        have_slots, have_tokens = (self.v[0].shape[0], self.v[0].shape[2]) if self.v else (0, 0)
        if slots <= have_slots and tokens <= have_tokens:
            return
        slots = max(slots, 2 * have_slots, 8) if slots > have_slots else have_slots
        # by a quarter at least: each growth copies the whole cache
        tokens = -(-max(tokens, have_tokens * 5 // 4) // CAPACITY_STEP) * CAPACITY_STEP if tokens > have_tokens else have_tokens
        for i in range(len(self.layers)):
            k = torch.zeros(slots, self.kv_heads, self.head_dim, tokens, dtype=self.dtype, device=self.device)
            v = torch.zeros(slots, self.kv_heads, tokens, self.head_dim, dtype=self.dtype, device=self.device)
            if self.k[i:]:
                k[:have_slots, :, :, :have_tokens] = self.k[i]
                v[:have_slots, :, :have_tokens] = self.v[i]
                self.k[i], self.v[i] = k, v
            else:
                self.k.append(k)
                self.v.append(v)

    def release(self) -> None:
        """Drop the cache (the engine is idle): the next rows get a capacity fitted to them."""
        self.k, self.v = [], []

    def copy(self, source: int, target: int, length: int) -> None:
        for k, v in zip(self.k, self.v):
            k[target, :, :, :length] = k[source, :, :, :length]
            v[target, :, :length] = v[source, :, :length]

    def load(self, slot: int, kv: list[tuple[Tensor, Tensor]], length: int) -> None:
        """Write the first `length` positions of a stored KV (per layer (kv_heads, tokens, head_dim))."""
        for layer, (k, v) in enumerate(kv):
            self.k[layer][slot, :, :, :length] = k[:, :length].transpose(-1, -2)
            self.v[layer][slot, :, :length] = v[:, :length]

    def snapshot(self, slot: int, length: int) -> list[tuple[Tensor, Tensor]]:
        """A slot's first `length` positions, per layer (kv_heads, tokens, head_dim) keys and values."""
        return [(k[slot, :, :, :length].transpose(-1, -2).clone(), v[slot, :, :length].clone())
                for k, v in zip(self.k, self.v)]

    @torch.inference_mode()
    def forward(self, decode: int, starts: list[int], segments: list[tuple[int, int, list[int]]],
                decode_tokens: list[int]) -> Tensor:
        """One pass: slots 0..decode-1 each feed one token (decode_tokens, at positions `starts`), and each
        segment (slot, start, tokens) feeds its tokens at positions start, start + 1, ...
        Returns the logits (decode + len(segments), vocab) of each row's last token."""
        ids = decode_tokens + [t for _, _, tokens in segments for t in tokens]
        positions = starts + [p for _, start, tokens in segments for p in range(start, start + len(tokens))]
        slots = list(range(decode)) + [slot for slot, _, tokens in segments for _ in tokens]
        device = self.device
        ids_t = torch.tensor(ids, device=device)
        pos = torch.tensor(positions, device=device)
        slot_t = torch.tensor(slots, device=device)
        self.reserve(max(slots) + 1, max(positions) + 1)
        n = len(ids)
        h = self.embed[ids_t]  # (n, H)
        cos, sin = self.rotary(h[None], pos[None])
        cos, sin = cos[0, :, None], sin[0, :, None]  # (n, 1, d)
        keys = torch.arange(max(positions) + 1, device=device)
        seen = max(starts) + 1 if decode else 0  # decode rows attend to positions < seen
        decode_mask = (keys[None, :seen] <= pos[:decode, None])[:, None, None]  # (decode, 1, 1, seen)
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        groups = self.heads // self.kv_heads
        for i, layer in enumerate(self.layers):
            x = layer.input_norm(h)
            q, k, v = F.linear(x, *layer.qkv).split([q_size, kv_size, kv_size], -1)
            q = _rotate(q.view(n, self.heads, self.head_dim), cos, sin)
            k = _rotate(k.view(n, self.kv_heads, self.head_dim), cos, sin)
            self.k[i][slot_t, :, :, pos] = k
            self.v[i][slot_t, :, pos] = v.view(n, self.kv_heads, self.head_dim)
            out = []
            if decode:  # (decode, kv_heads, groups, d) against each row's keys
                qd = q[:decode].view(decode, self.kv_heads, groups, self.head_dim)
                scores = (qd @ self.k[i][:decode, ..., :seen]) * self.scale
                weights = scores.masked_fill(~decode_mask, float("-inf")).float().softmax(-1).to(q.dtype)
                out.append((weights @ self.v[i][:decode, :, :seen]).reshape(decode, q_size))
            offset = decode
            for slot, start, tokens in segments:
                m = len(tokens)
                qs = q[offset : offset + m].view(m, self.kv_heads, groups, self.head_dim).permute(1, 2, 0, 3)
                end = start + m
                scores = (qs @ self.k[i][slot, :, None, :, :end]) * self.scale  # (kv_heads, groups, m, end)
                causal = keys[None, :end] <= keys[start:end, None]
                weights = scores.masked_fill(~causal, float("-inf")).float().softmax(-1).to(q.dtype)
                out.append((weights @ self.v[i][slot, :, None, :end]).permute(2, 0, 1, 3).reshape(m, q_size))
                offset += m
            h = h + F.linear(torch.cat(out) if len(out) > 1 else out[0], *layer.o)
            gate, up = F.linear(layer.post_norm(h), *layer.gate_up).chunk(2, -1)
            h = h + F.linear(F.silu(gate) * up, *layer.down)
        last = list(range(decode))
        offset = decode
        for _, _, tokens in segments:
            offset += len(tokens)
            last.append(offset - 1)
        return F.linear(self.norm(h[last]), self.head)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding, as transformers' llama applies it: x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    return x * cos.to(x.dtype) + torch.cat([-x[..., half:], x[..., :half]], -1) * sin.to(x.dtype)


@dataclass
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    done: object = field(repr=False)  # callable(Completion | BaseException)


@dataclass
class _Row:
    request: _Request
    generator: torch.Generator
    ids: list[int]  # prompt + sampled tokens; the cache holds the first `length`
    length: int = 0
    sampled: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class ContinuousEngine:
    """An Engine (rlvr/core/protocols.py) that batches continuously on a `SlotDecoder`.

    `model` may be a PeftModel; its active adapters are merged into the decoder's weights, again on
    `set_adapter`. Rows run with any mix of sampling params; at most `max_batch` rows at once.
    """

    def __init__(self, model, tokenizer, *, stop_ids: set[int], max_batch: int = 64,
                 prefix_store_tokens: int = 32768):
        self.peft_model = model if hasattr(model, "get_base_model") else None
        self.decoder = SlotDecoder(model)
        self.max_context = getattr(model.config, "max_position_embeddings", None)
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.max_batch = max_batch
        self.device = self.decoder.device
        self.prefix_store = PrefixStore(prefix_store_tokens)
        self.rows: list[_Row] = []  # row i decodes in slot i
        self._queue: list[_Request] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._lock = threading.Lock()

    # -- one step ---------------------------------------------------------------------------------

    def _step(self) -> None:
        """Admit what fits from the queue, then one forward: every running row's next token and the
        newcomers' uncached prompt tokens."""
        decode = len(self.rows)
        if not decode:
            self.decoder.release()
        segments = [self._admit(request, cached) for request, cached in self._take_admissible()]
        rows = self.rows
        if not rows:
            return
        logits = self.decoder.forward(decode, [row.length for row in rows[:decode]], segments,
                                      [row.ids[row.length] for row in rows[:decode]])
        for row in rows[:decode]:
            row.length += 1
        for (slot, start, tokens), row in zip(segments, rows[decode:]):
            row.length = start + len(tokens)
        by_params: dict[tuple[float, float], list[int]] = {}
        for i, row in enumerate(rows):
            by_params.setdefault((row.request.params.temperature, row.request.params.top_p), []).append(i)
        for (temperature, top_p), index in by_params.items():
            tokens, logprobs = sample_rows(logits[index], [rows[i].generator for i in index], temperature, top_p)
            for i, token, logprob in zip(index, tokens.tolist(), logprobs.tolist()):
                rows[i].sampled.append(token)
                rows[i].logprobs.append(logprob)
                rows[i].ids.append(token)
        for i in reversed(range(len(rows))):
            if reason := self._finished(rows[i]):
                self._retire(i, reason)

    def _take_admissible(self) -> list[tuple[_Request, tuple]]:
        """Queued requests that get a row now, each with what `_cached` found for it. A request whose prompt
        shares a longer prefix with one admitted ahead of it in this step than with any cache waits one
        step, then copies that KV."""
        taken, kept = [], []
        for request in self._queue:
            if len(self.rows) + len(taken) >= self.max_batch:
                kept.append(request)
                continue
            ahead = min(max((_common(request.prompt_ids, t.prompt_ids) for t, _ in taken), default=0),
                        len(request.prompt_ids) - 1)  # what a cache can give: all but the last token
            cached = self._cached(request.prompt_ids)
            if ahead >= MIN_SHARED_PREFIX and ahead > cached[0]:
                kept.append(request)
            else:
                taken.append((request, cached))
        self._queue = kept
        return taken

    def _cached(self, prompt: list[int]) -> tuple[int, int | None, list | None]:
        """The longest cached prefix of `prompt` (at most len - 1 tokens): its length, and the running row
        holding it or else the prefix store's KV holding it (neither: nothing cached)."""
        best, kv = self.prefix_store.lookup([prompt])[0]
        source = None
        for i, row in enumerate(self.rows):
            n = min(_common(prompt, row.ids[: row.length]), len(prompt) - 1)
            if n > best and n >= MIN_SHARED_PREFIX:
                best, source = n, i
        return best, source, kv

    def _admit(self, request: _Request, cached: tuple[int, int | None, list | None]) -> tuple[int, int, list[int]]:
        """Give `request` the next slot, with its cached prefix (`_cached`'s answer) loaded; returns its segment."""
        slot, prompt = len(self.rows), request.prompt_ids
        length, source, kv = cached
        self.decoder.reserve(slot + 1, len(prompt) + request.params.max_tokens)
        if source is not None:
            self.decoder.copy(source, slot, length)
        elif length:
            self.decoder.load(slot, kv, length)
        generator = torch.Generator(device=self.device).manual_seed(request.params.seed)
        self.rows.append(_Row(request, generator, list(prompt)))
        return slot, length, prompt[length:]

    def _finished(self, row: _Row) -> str | None:
        params = row.request.params
        if row.sampled[-1] in self.stop_ids:
            return "stop"
        if params.stop and any(s in self.tokenizer.decode(row.sampled) for s in params.stop):
            return "stop"
        return "length" if len(row.sampled) >= params.max_tokens else None

    def _retire(self, i: int, reason: str) -> None:
        """Answer row i, keep its KV for the conversation's next turn, and move the last row into its slot."""
        row = self.rows[i]
        key = row.ids[: row.length]
        if self.prefix_store.wants(key):
            self.prefix_store.put(key, self.decoder.snapshot(i, row.length))
        last = len(self.rows) - 1
        if i != last:
            self.decoder.copy(last, i, self.rows[last].length)
            self.rows[i] = self.rows[last]
        self.rows.pop()
        row.request.done(Completion(row.sampled, row.logprobs, reason))

    def _fail_all(self, error: BaseException) -> None:
        for request in [row.request for row in self.rows] + self._queue:
            request.done(error)
        self.rows, self._queue = [], []

    # -- synchronous batch API ---------------------------------------------------------------------

    def generate_batch(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Completion]:
        results: list[Completion | None] = [None] * len(prompts)

        def answer(i):
            def done(result):
                if isinstance(result, BaseException):
                    raise result
                results[i] = result
            return done

        with self._lock:
            self._queue += [_Request(p, s, answer(i)) for i, (p, s) in enumerate(zip(prompts, params))]
            try:
                while self._queue or self.rows:
                    self._step()
            except BaseException:
                self.rows, self._queue = [], []
                raise
        return results

    # -- async API ---------------------------------------------------------------------------------

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._serve())
        future = loop.create_future()

        def done(result):
            if not future.done():
                (future.set_exception if isinstance(result, BaseException) else future.set_result)(result)

        self._queue.append(_Request(prompt_ids, params, done))
        self._wakeup.set()
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.rows and not self._queue:
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            if not self.rows:  # idle: let a wave of requests gather, so their prompts prefill together
                await let_arrivals_join(self._queue, self.max_batch, loop)
            try:
                # on the loop's own thread, between awaits: tools finish in their threads meanwhile
                with self._lock:
                    self._step()
            except Exception as e:  # hand the failure to every waiting trajectory
                self._fail_all(e)
            await asyncio.sleep(0)  # let finished rows' trajectories run their tools and send their next turn

    async def set_adapter(self, adapter: AdapterState | None) -> None:
        """Serve `adapter` (None: the PeftModel's own adapter, changed in place), between steps."""
        if self.peft_model is None:
            raise ValueError("this engine was given a model without a LoRA adapter: it has none to load")
        with self._lock:
            if adapter is not None:
                adapter.load_into(self.peft_model)
            self.decoder.merge()
            self.prefix_store.clear()


def _common(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    same = torch.tensor(a[:n]) == torch.tensor(b[:n])
    return n if bool(same.all()) else int(same.long().argmin())
