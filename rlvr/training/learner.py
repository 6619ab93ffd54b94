"""The learner: a LoRA policy, its per-token log-probs, and one optimiser step over a Batch.

Micro-batches are packed: trajectories are concatenated into rows as long as the longest trajectory,
with position ids restarting at each trajectory so attention stays within it (transformers builds the
block-diagonal mask from the position ids); only the tail of a row that no trajectory fits is padding. Losses are normalised by whole-batch counts (algorithms.BatchCounts), so the gradients
accumulated over micro-batches equal the full-batch gradient.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import groupby
from typing import Callable

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from rlvr.core.config import Config, LearnerConfig, effective_tis_cap
from rlvr.core.contract import Batch, Trajectory
from rlvr.training.algorithms import BatchCounts, ObjectiveSpec, nll_objective, policy_objective
from rlvr.training.attention import use_prefix_attention
from rlvr.training.models import REFERENCE_ADAPTER, AdapterState, add_lora, bf16_supported, load_model

# Logits of the LM head computed at once (rows x vocabulary), 48 MiB in float32: 256 rows of SmolLM2's 49,152
# (the head's forward and backward on 700 rows: 361 ms against 400-460 at 64 rows; in an earlier whole-step
# measurement 512 rows were slower than 64), 82 of Qwen2.5's 151,936.
LOGIT_CHUNK_ELEMENTS = 256 * 49152
SIMILAR_LENGTHS = 1.25  # the longest completion of a shared-prefix micro-batch over its shortest, at most


def _chunk_rows(weight: Tensor) -> int:
    return max(16, LOGIT_CHUNK_ELEMENTS // weight.shape[0])


class LinearLogprob(torch.autograd.Function):
    """log softmax(h W^T / T)[y] for each row of a frozen LM head, keeping no (n, vocab) tensor alive.

    Rows are walked in chunks of LOGIT_CHUNK_ELEMENTS / vocabulary; the softmax is taken in float32 whatever
    the compute dtype. With `needs_grad` the gradient with respect to each row, (W_y - softmax @ W) / T, is
    computed while the chunk's logits are at hand and kept as an (n, H) tensor: backward only scales it, no
    head matmul is run twice. Shapes: hidden (n, H), weight (V, H), targets (n,) -> (n,) float32.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float,
                needs_grad: bool) -> Tensor:
        w = weight.to(hidden.dtype)
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        row_grad = torch.empty_like(hidden) if needs_grad else None
        chunk = _chunk_rows(weight)
        for s in range(0, hidden.shape[0], chunk):
            y = targets[s : s + chunk, None]
            logits = (hidden[s : s + chunk] @ w.T).float().div_(temperature)
            lse[s : s + chunk] = torch.logsumexp(logits, -1)
            out[s : s + chunk] = logits.gather(-1, y)[:, 0]
            if row_grad is not None:
                # d/dlogits of (logit_y - lse) is onehot(y) - softmax, all divided by the temperature
                onehot_minus_p = logits.sub_(lse[s : s + chunk, None]).exp_().neg_()
                onehot_minus_p.scatter_add_(-1, y, torch.ones_like(y, dtype=logits.dtype))
                row_grad[s : s + chunk] = onehot_minus_p.div_(temperature).to(hidden.dtype) @ w
        ctx.save_for_backward(row_grad)
        return out - lse

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (row_grad,) = ctx.saved_tensors
        return (grad_out[:, None] * row_grad).to(row_grad.dtype), None, None, None, None

    @staticmethod
    def logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float) -> Tensor:
        """The (n,) log-probs, differentiable with respect to `hidden` when grad is on."""
        if weight.requires_grad:
            raise ValueError("LinearLogprob takes a frozen LM head (its weight must not require grad)")
        needs_grad = torch.is_grad_enabled() and hidden.requires_grad
        return LinearLogprob.apply(hidden, weight, targets, temperature, needs_grad)


@dataclass(eq=False)  # identity: micro-batches of one group hold the same object
class SharedPrompt:
    """A prompt shared by several trajectories (a GRPO group): computed once, its KV cache reused."""

    input_ids: Tensor  # (1, P)


@dataclass
class PromptState:
    """The shared prompt's forward pass: what its completions attend to and continue from."""

    kv: list[tuple[Tensor, Tensor]]  # per layer, keys and values (1, kv_heads, P, head_dim)
    last_hidden: Tensor  # (1, H): predicts the first completion token


@dataclass
class MicroBatch:
    """Trajectories packed into rows. Shapes: R rows of length L, n completion tokens, b trajectories.

    Plain micro-batches hold whole trajectories. With `prompt` set, rows hold only completions that
    continue that prompt (packed, positions starting at P, `attention_mask` keeping them apart).
    """

    input_ids: Tensor  # (R, L)
    position_ids: Tensor  # (R, L), restarting at 0 for every trajectory
    logit_index: Tensor  # (n,) flat positions (row * L + col; shared: 1 + that, 0 = prompt) predicting each token
    targets: Tensor  # (n,) completion token ids
    scored: Tensor  # (n,) bool: the targets in the loss (loss mask 1); tool results and user turns get log-prob 0
    indices: list[int]  # batch index of each of the b trajectories, in the order of the (b, T) tensors
    lengths: list[int]  # completion length of each of the b trajectories
    mask: Tensor  # (b, T) loss mask, zero-padded
    advantages: Tensor  # (b, T)
    behaviour_logp: Tensor  # (b, T)
    old_logp: Tensor | None = None  # (b, T), filled before the first update (None: logp.detach())
    ref_logp: Tensor | None = None  # (b, T), filled when beta > 0
    prompt: SharedPrompt | None = None
    attention_mask: Tensor | None = None  # shared prompt: (R, 1, L, P + L) bool, True = may attend


Objective = Callable[[BatchCounts, Tensor, MicroBatch], tuple[Tensor, dict[str, Tensor]]]


def split_groups(batch: Batch, parts: int) -> list[Batch]:
    """The batch as min(parts, groups) mini-batches of whole groups (consecutive, sizes differing by at most
    one group), so each keeps its groups' shared prompts."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(batch.trajectories):
        groups.setdefault(t.group_id, []).append(i)
    rows = list(groups.values())
    parts = min(parts, len(rows))
    bounds = [round(k * len(rows) / parts) for k in range(parts + 1)]
    chosen = [[i for group in rows[a:b] for i in group] for a, b in zip(bounds, bounds[1:])]
    return [_subset(batch, part) for part in chosen]


def _subset(batch: Batch, rows: list[int]) -> Batch:
    return Batch(trajectories=[batch.trajectories[i] for i in rows], advantages=[batch.advantages[i] for i in rows])


def with_advantage(batch: Batch) -> Batch:
    """The trajectories with a nonzero advantage somewhere: under a policy loss without a KL term the others
    (a flat group's, for instance) contribute exactly zero gradient, so the learner need not run them."""
    return _subset(batch, [i for i, a in enumerate(batch.advantages) if any(a)])


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins of at most `capacity` (first-fit decreasing; an item longer than
    `capacity` gets a bin of its own). Returns the bins, each a list of indices in input order."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return [sorted(b) for b in bins]


def _padded(device, rows: list[list], dtype) -> Tensor:
    """Ragged rows -> (len(rows), longest) zero-padded tensor on `device`."""
    return pad_sequence([torch.tensor(r, dtype=dtype) for r in rows], batch_first=True).to(device)


def plan_micro_batches(lengths: list[int], micro_batch_tokens: int) -> list[list[list[int]]]:
    """Trajectory indices -> micro-batches of rows.

    Rows are as long as the longest trajectory: attention cost grows with the square of the row length,
    so short trajectories share a row instead of the batch becoming one long row. A micro-batch holds
    as many rows as fit in `micro_batch_tokens` (at least one).
    """
    row_length = max(lengths)
    rows = pack(lengths, row_length)
    rows.sort(key=lambda r: -sum(lengths[i] for i in r))
    per_micro = max(1, micro_batch_tokens // row_length)
    return [rows[i : i + per_micro] for i in range(0, len(rows), per_micro)]


def plan_shared_prefix(batch: Batch, micro_batch_tokens: int) -> tuple[list[list[list[list[int]]]], list[int]]:
    """Split the batch into prompt groups that pay for the shared-prefix path, and the rest.

    Trajectories with identical prompt ids form a group. Computing the prompt once saves (g - 1) * P
    tokens; the group takes the shared path when that is at least a quarter of its completion tokens.
    A group's completions get a row each (several completions in one row would attend across each other's
    masked keys: SmolLM2-135M, 8 completions of ~150 tokens after a 256-token prompt, attention forward and
    backward took 82 ms a layer packed two to a row, 26 ms one to a row). Rows are sorted by length and
    cut into micro-batches of at most `micro_batch_tokens` padded tokens whose longest row is at most
    SIMILAR_LENGTHS times their shortest, which bounds the padding.
    Returns ([per group: micro-batches of rows of trajectory indices], the indices left for the plain path).
    """
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(batch.trajectories):
        by_prompt.setdefault(tuple(t.prompt_ids), []).append(i)
    shared, plain = [], []
    for prompt, indices in by_prompt.items():
        length = {i: len(batch.trajectories[i].completion_ids) for i in indices}
        if len(indices) < 2 or (len(indices) - 1) * len(prompt) < 0.25 * sum(length.values()):
            plain += indices
            continue
        micro: list[list[list[int]]] = []
        for i in sorted(indices, key=lambda i: length[i]):
            current = micro[-1] if micro else None
            if (current is None or length[i] > SIMILAR_LENGTHS * length[current[0][0]]
                    or (len(current) + 1) * length[i] > micro_batch_tokens):
                micro.append([])
            micro[-1].append([i])
        shared.append(micro)
    return shared, sorted(plain)


def make_shared_micro_batch(batch: Batch, prompt: SharedPrompt, rows: list[list[int]], device) -> MicroBatch:
    """Completions of one prompt group packed into rows that continue the prompt's KV cache.

    Every completion's positions start right after the prompt, and a 4D mask lets each token see the
    whole prompt and the earlier tokens of its own completion. The first token of each completion is
    predicted by the prompt's last hidden state, which the hidden states are prefixed with (flat index 0).
    """
    trajectories = batch.trajectories
    p_len = prompt.input_ids.shape[1]
    width = max(sum(len(trajectories[i].completion_ids) for i in row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.full((len(rows), width), p_len, dtype=torch.long)
    sequence = torch.full((len(rows), width), -1, dtype=torch.long)  # which completion holds each slot
    logit_index, order = [], []
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            ids_i = trajectories[i].completion_ids
            n = len(ids_i)
            ids[r, offset : offset + n] = torch.tensor(ids_i)
            positions[r, offset : offset + n] = torch.arange(p_len, p_len + n)
            sequence[r, offset : offset + n] = len(order)
            logit_index += [0] + [1 + r * width + offset + j for j in range(n - 1)]
            order.append(i)
            offset += n
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    own = (sequence[:, :, None] == sequence[:, None, :]) & causal & (sequence[:, :, None] >= 0)
    mask = torch.cat([torch.ones(len(rows), width, p_len, dtype=torch.bool), own], dim=2)[:, None]
    flat = [trajectories[i] for i in order]

    return MicroBatch(
        input_ids=ids.to(device),
        position_ids=positions.to(device),
        logit_index=torch.tensor(logit_index, device=device),
        targets=torch.tensor([tok for t in flat for tok in t.completion_ids], device=device),
        scored=torch.tensor([m > 0 for t in flat for m in t.loss_mask], dtype=torch.bool, device=device),
        indices=order,
        lengths=[len(t.completion_ids) for t in flat],
        mask=_padded(device, [t.loss_mask for t in flat], torch.float32),
        advantages=_padded(device, [batch.advantages[i] for i in order], torch.float32),
        behaviour_logp=_padded(device, [t.logprobs for t in flat], torch.float32),
        prompt=prompt,
        attention_mask=mask.to(device),
    )


def make_micro_batch(batch: Batch, rows: list[list[int]], device) -> MicroBatch:
    """Pack the trajectories `rows` (lists of batch indices) into one micro-batch."""
    trajectories = batch.trajectories
    width = max(sum(len(trajectories[i].prompt_ids) + len(trajectories[i].completion_ids) for i in row)
                for row in rows)
    ids, positions, logit_index, targets, lengths, flat = [], [], [], [], [], []
    for r, row in enumerate(rows):
        offset = r * width
        for t in (trajectories[i] for i in row):
            seq = t.prompt_ids + t.completion_ids
            ids.extend(seq)
            positions.extend(range(len(seq)))
            start = offset + len(t.prompt_ids) - 1  # logits at position p predict token p + 1
            logit_index.extend(range(start, start + len(t.completion_ids)))
            targets.extend(t.completion_ids)
            lengths.append(len(t.completion_ids))
            flat.append(t)
            offset += len(seq)
        # Pad the row's tail as a continuation of its last trajectory: causal attention keeps real tokens
        # from seeing it, and a row holding one trajectory then needs no mask (SDPA's fast causal path).
        pad = (r + 1) * width - offset
        ids.extend([0] * pad)
        positions.extend(range(positions[-1] + 1, positions[-1] + 1 + pad))

    return MicroBatch(
        input_ids=torch.tensor(ids, device=device).view(len(rows), width),
        position_ids=torch.tensor(positions, device=device).view(len(rows), width),
        logit_index=torch.tensor(logit_index, device=device),
        targets=torch.tensor(targets, device=device),
        scored=torch.tensor([m > 0 for t in flat for m in t.loss_mask], dtype=torch.bool, device=device),
        indices=[i for row in rows for i in row],
        lengths=lengths,
        mask=_padded(device, [t.loss_mask for t in flat], torch.float32),
        advantages=_padded(device, [batch.advantages[i] for row in rows for i in row], torch.float32),
        behaviour_logp=_padded(device, [t.logprobs for t in flat], torch.float32),
    )


@dataclass
class DemonstrationLoss:
    """PPO-ptx (InstructGPT, Ouyang et al. 2022): `coef` x the mean NLL of `batch_size` demonstrations added to
    each optimiser step's policy loss, at the learner's temperature (the rollouts' sampling distribution). Each
    step draws its own, seeded by the step and mini-batch: a resumed run draws what an unbroken one would."""

    examples: list[Trajectory]
    coef: float
    batch_size: int
    seed: int

    def draw(self, step: int, mini_batch: int) -> Batch:
        rng = random.Random(f"{self.seed}/{step}/{mini_batch}")
        chosen = rng.sample(self.examples, min(self.batch_size, len(self.examples)))
        return Batch(trajectories=chosen, advantages=[[0.0] * len(t.completion_ids) for t in chosen])


class Learner:
    """Holds the LoRA policy and its optimiser; turns Batches into optimiser steps."""

    def __init__(self, model, cfg: LearnerConfig, spec: ObjectiveSpec, *, temperature: float = 1.0,
                 total_steps: int = 1, norm_tokens: int | None = None, objective: Objective | None = None,
                 demonstrations: DemonstrationLoss | None = None):
        """`objective` (counts, logp, micro-batch) -> (loss, token-sum metrics) replaces the policy objective
        of `spec` (SFT passes its NLL); `demonstrations` adds their NLL term to every optimiser step."""
        from transformers import get_scheduler

        self.model = model
        self.cfg = cfg
        self.spec = spec
        self.objective = objective or self._policy_objective
        self.demonstrations = demonstrations
        # every term of a policy loss is proportional to the advantage, unless a KL term is added
        self.skip_zero_advantage = objective is None and spec.beta == 0
        self.temperature = temperature
        self.norm_tokens = norm_tokens
        self.device = next(model.parameters()).device
        self.bf16 = use_bf16(cfg.precision, self.device)
        base = model.get_base_model()
        use_prefix_attention(base)
        if cfg.shared_prefix and (reason := shared_prefix_unsupported(base.config)):
            warnings.warn(f"learner.shared_prefix: {reason}; using the plain path (set learner.shared_prefix=false "
                          "to silence this)", stacklevel=2)
            self.cfg = cfg = cfg.model_copy(update={"shared_prefix": False})
        if cfg.gradient_checkpointing:
            # the shared-prefix path writes the prompt's KV cache inside the layers, which a recompute would
            # write again (transformers drops the cache under checkpointing); the plain path keeps none
            self.cfg = cfg = cfg.model_copy(update={"shared_prefix": False})
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.decoder, self.lm_head = base.get_decoder(), base.get_output_embeddings()
        if self.lm_head.bias is not None:
            raise ValueError("models whose LM head has a bias are not supported")
        if any(p.requires_grad for p in self.lm_head.parameters()) or hasattr(self.lm_head, "lora_A"):
            raise ValueError("a trained LM head is not supported (the learner's fused head is frozen): "
                             "leave it out of model.lora.target_modules")
        if self.bf16:  # let autocast run the LoRA matmuls in bf16 instead of PEFT casting activations to fp32
            for module in model.modules():
                if hasattr(module, "cast_input_dtype_enabled"):
                    module.cast_input_dtype_enabled = False
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.adam_betas,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = get_scheduler(cfg.lr_schedule, self.optimizer, num_warmup_steps=cfg.warmup_steps,
                                       num_training_steps=total_steps * cfg.epochs * cfg.mini_batches)
        self.steps_done = 0

    # ---------------------------------------------------------------------------------------------
    # log-probs

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def prompt_forward(self, prompt: SharedPrompt) -> PromptState:
        """Run a shared prompt once (with the adapter state of the caller's context)."""
        with self._autocast():
            out = self.decoder(input_ids=prompt.input_ids, use_cache=True)
        return PromptState([(k, v) for k, v, *_ in out.past_key_values], out.last_hidden_state[:, -1])

    def reference(self):
        """Context in which the model is the KL reference, no second copy: the frozen REFERENCE_ADAPTER (the
        starting policy, when the run starts from `model.init_adapter` with algorithm.reference=start),
        else the base model (the adapter disabled)."""
        if REFERENCE_ADAPTER in self.model.peft_config:
            return _active_adapter(self.model, REFERENCE_ADAPTER)
        return self.model.disable_adapter()

    def completion_logprobs(self, mb: MicroBatch, *, adapter: bool = True, state: PromptState | None = None) -> Tensor:
        """Per-token log-probs of the completion tokens, (b, T) zero-padded (and 0 where the loss mask is);
        differentiable when grad is on.

        With adapter=False they are the KL reference's (`reference()`).
        A shared-prompt micro-batch continues `state` (computed here when not given).
        """
        with nullcontext() if adapter else self.reference():
            if mb.prompt is None:
                with self._autocast():
                    hidden = self.decoder(input_ids=mb.input_ids, position_ids=mb.position_ids,
                                          use_cache=False).last_hidden_state.flatten(0, 1)
            else:
                hidden = self._continue_prompt(mb, state or self.prompt_forward(mb.prompt))
            # the LM head only where the loss looks: a multi-turn completion's tool results are a third of it
            scored = LinearLogprob.logprobs(hidden[mb.logit_index[mb.scored]], self.lm_head.weight,
                                            mb.targets[mb.scored], self.temperature)
            flat = torch.zeros(len(mb.targets), dtype=scored.dtype, device=scored.device).masked_scatter(mb.scored,
                                                                                                      scored)
        return pad_sequence(list(flat.split(mb.lengths)), batch_first=True)

    def _continue_prompt(self, mb: MicroBatch, state: PromptState) -> Tensor:
        """Flat hidden states (1 + R * L, H): the prompt's last one, then those of the completion rows run
        over the prompt's KV cache (broadcast to every row, not recomputed)."""
        from transformers import DynamicCache

        rows = mb.input_ids.shape[0]
        cache = DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                             for k, v in state.kv])
        with self._autocast():
            hidden = self.decoder(input_ids=mb.input_ids, position_ids=mb.position_ids, past_key_values=cache,
                                  attention_mask=mb.attention_mask, use_cache=True).last_hidden_state
        return torch.cat([state.last_hidden.to(hidden.dtype), hidden.flatten(0, 1)])

    def micro_batches(self, batch: Batch) -> list[MicroBatch]:
        """Shared-prefix micro-batches (a group's prompt once, its completions over the prompt's cache) where
        that pays and `learner.shared_prefix` is on; packed plain micro-batches for the rest."""
        micro, plain = [], list(range(len(batch.trajectories)))
        if self.cfg.shared_prefix:
            shared, plain = plan_shared_prefix(batch, self.cfg.micro_batch_tokens)
            for group in shared:
                first = batch.trajectories[group[0][0][0]]
                prompt = SharedPrompt(torch.tensor([first.prompt_ids], device=self.device))
                micro += [make_shared_micro_batch(batch, prompt, rows, self.device) for rows in group]
        if plain:
            lengths = [len(batch.trajectories[i].prompt_ids) + len(batch.trajectories[i].completion_ids)
                       for i in plain]
            for rows in plan_micro_batches(lengths, self.cfg.micro_batch_tokens):
                micro.append(make_micro_batch(batch, [[plain[k] for k in row] for row in rows], self.device))
        return micro

    # ---------------------------------------------------------------------------------------------
    # the update

    def batch_counts(self, batch: Batch) -> BatchCounts:
        sampled = [t.num_sampled_tokens for t in batch.trajectories]
        return BatchCounts(tokens=sum(sampled), sequences=sum(n > 0 for n in sampled), norm_tokens=self.norm_tokens)

    def backward(self, micro: list[MicroBatch], counts: BatchCounts,
                 objective: Objective | None = None) -> dict[str, float]:
        """Accumulate the full-batch gradient over the micro-batches; returns summed loss and metrics.

        A shared prompt runs forward once. Its KV cache and last hidden state are handed to its completions
        as detached leaves, so every completion micro-batch's backward stops there and accumulates the
        gradient on them; one backward through the prompt then carries the sum into the LoRA weights.
        """
        totals: dict[str, float] = {"loss": 0.0}
        with self._autocast():  # one region for all passes: autocast casts each float32 LoRA weight once
            self._accumulate(micro, counts, totals, objective or self.objective)
        return totals

    def update(self, micro: list[MicroBatch], counts: BatchCounts,
               demonstrations: tuple[list[MicroBatch], BatchCounts] | None = None) -> tuple[float, dict[str, float]]:
        """One optimiser step on the micro-batches' gradient, plus the demonstrations' NLL term when given
        (clipped to learner.grad_clip); returns the gradient norm before clipping and `backward`'s summed loss
        and metrics (with demonstration_nll, the demonstrations' mean NLL per token)."""
        self.optimizer.zero_grad(set_to_none=True)
        totals = self.backward(micro, counts)
        if demonstrations:
            demo = self.backward(*demonstrations, objective=self._demonstration_objective)
            totals["loss"] += demo["loss"]
            totals["demonstration_nll"] = demo["nll"] / max(demonstrations[1].tokens, 1)
        for p in self.params:  # a mini-batch whose trajectories were all skipped: the same zero-gradient step
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip or math.inf))
        self.optimizer.step()
        self.scheduler.step()
        return grad_norm, totals

    def _accumulate(self, micro: list[MicroBatch], counts: BatchCounts, totals: dict[str, float],
                    objective: Objective) -> None:
        for prompt, group in groupby(micro, key=lambda mb: mb.prompt):
            if prompt is None:
                for mb in group:
                    self._backward_one(mb, counts, totals, objective)
                continue
            state = self.prompt_forward(prompt)
            leaves = PromptState([(k.detach().requires_grad_(), v.detach().requires_grad_()) for k, v in state.kv],
                                 state.last_hidden.detach().requires_grad_())
            for mb in group:
                self._backward_one(mb, counts, totals, objective, leaves)
            outputs = [t for kv in state.kv for t in kv] + [state.last_hidden]
            grads = [t.grad for kv in leaves.kv for t in kv] + [leaves.last_hidden.grad]
            used = [(o, g) for o, g in zip(outputs, grads) if g is not None]
            torch.autograd.backward([o for o, _ in used], [g for _, g in used])

    def _backward_one(self, mb: MicroBatch, counts: BatchCounts, totals: dict[str, float], objective: Objective,
                      state: PromptState | None = None) -> None:
        logp = self.completion_logprobs(mb, state=state)
        loss, metrics = objective(counts, logp, mb)
        loss.backward()
        totals["loss"] += loss.item()
        for k, v in metrics.items():
            _accumulate_metric(totals, k, v.item())

    def _policy_objective(self, counts: BatchCounts, logp: Tensor, mb: MicroBatch) -> tuple[Tensor, dict[str, Tensor]]:
        return policy_objective(self.spec, counts, logp, mb.advantages, mb.mask, mb.old_logp, mb.ref_logp,
                                mb.behaviour_logp)

    def _demonstration_objective(self, counts: BatchCounts, logp: Tensor,
                                 mb: MicroBatch) -> tuple[Tensor, dict[str, Tensor]]:
        loss, metrics = nll_objective(counts, logp, mb.mask)
        return self.demonstrations.coef * loss, metrics

    def _demonstration_batches(self, mini_batches: int) -> list[tuple[list[MicroBatch], BatchCounts] | None]:
        """Each mini-batch's demonstrations for this step, as micro-batches with their counts (None: no term)."""
        if self.demonstrations is None:
            return [None] * mini_batches
        drawn = [self.demonstrations.draw(self.steps_done, number) for number in range(mini_batches)]
        return [(self.micro_batches(batch), self.batch_counts(batch)) for batch in drawn]

    @torch.no_grad()
    def _fill_fixed_logprobs(self, micro: list[MicroBatch], first: bool = False) -> None:
        """Reference log-probs (beta > 0) and old-policy log-probs, a shared prompt run once per pass. The
        first mini-batch of a step needs no old-policy pass: no update has happened yet, so its old
        log-probs are its log-probs (logp.detach()); the first epoch uses that, later epochs this pass.
        With learner.old_logprobs=rollout the old log-probs are the engine's (no pass)."""
        if self.cfg.old_logprobs == "rollout":
            for mb in micro:
                mb.old_logp = mb.behaviour_logp
            old = False
        else:  # one update in all: old = logp.detach(), no extra pass
            one_update = self.cfg.epochs * self.cfg.mini_batches == 1
            old = not one_update and not (first and self.cfg.epochs == 1)
        passes = ([("ref_logp", False)] if self.spec.beta > 0 else []) + ([("old_logp", True)] if old else [])
        for field, adapter in passes:
            with nullcontext() if adapter else self.reference():
                for prompt, group in groupby(micro, key=lambda mb: mb.prompt):
                    state = None if prompt is None else self.prompt_forward(prompt)
                    for mb in group:
                        setattr(mb, field, self.completion_logprobs(mb, state=state))

    def step(self, batch: Batch) -> dict[str, float]:
        """K epochs over the batch, each of N optimiser steps on 1/N of its groups (`learner.mini_batches`).
        Returns the metrics of the last epoch (token means over the whole batch, the mean gradient norm).
        An empty batch (every group filtered as flat) changes nothing but the version: learner/skipped is 1."""
        if not batch.trajectories:
            self.steps_done += 1
            return {"learner/skipped": 1.0}
        start = time.perf_counter()
        minis, computed, skipped = [], 0, 0  # computed: the sampled tokens the micro-batches hold
        for mini in split_groups(batch, self.cfg.mini_batches):
            counts = self.batch_counts(mini)  # the loss's denominators count every trajectory
            if self.skip_zero_advantage:
                kept = with_advantage(mini)
                skipped += len(mini.trajectories) - len(kept.trajectories)
                mini = kept
            computed += mini.num_sampled_tokens
            minis.append((self.micro_batches(mini), counts))
        for number, (micro, _) in enumerate(minis):  # all before the first update
            self._fill_fixed_logprobs(micro, first=number == 0)
        demonstrations = self._demonstration_batches(len(minis))
        self.model.train()  # LoRA dropout, if configured
        for _ in range(self.cfg.epochs):
            totals, grad_norms = {"loss": 0.0}, []
            for (micro, counts), demos in zip(minis, demonstrations):
                grad_norm, summed = self.update(micro, counts, demos)
                for key, value in summed.items():  # loss: the mini-batch's; others: token sums
                    _accumulate_metric(totals, key, value)
                grad_norms.append(grad_norm)
        self.model.eval()
        self.steps_done += 1
        elapsed = time.perf_counter() - start
        tokens = sum(counts.tokens for _, counts in minis)
        metrics = {key: totals.pop(key) / len(minis) for key in ("loss", "demonstration_nll") if key in totals}
        metrics.update({k: v if k.endswith(("_min", "_max")) else v / max(computed, 1)
                        for k, v in totals.items()})  # token means, and the extremes as they are
        metrics.update(grad_norm=sum(grad_norms) / len(grad_norms), lr=self.scheduler.get_last_lr()[0],
                       tokens=batch.num_tokens, sampled_tokens=tokens, micro_batches=sum(len(m) for m, _ in minis),
                       zero_advantage_trajectories=skipped, step_s=elapsed, tokens_per_s=batch.num_tokens / elapsed)
        return {f"learner/{k}": float(v) for k, v in metrics.items()}

    # ---------------------------------------------------------------------------------------------
    # persistence

    def adapter_state(self, version: int | None = None) -> AdapterState:
        """The adapter as CPU tensors, for the rollout engines and the run folder (version: steps done)."""
        return AdapterState.of(self.model, self.steps_done if version is None else version)

    def state_dict(self) -> dict:
        """Everything a resumed run needs from the learner, on CPU: adapter, optimiser and scheduler state,
        steps done, and this process's RNG states (LoRA dropout draws from them)."""
        return {"adapter": self.adapter_state(), "optimizer": _to_cpu(self.optimizer.state_dict()),
                "scheduler": self.scheduler.state_dict(), "steps_done": self.steps_done, "rng": rng_states()}

    def load_state_dict(self, state: dict) -> None:
        state["adapter"].load_into(self.model)
        self.optimizer.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps_done = state["steps_done"]
        set_rng_states(state["rng"])


def _accumulate_metric(totals: dict[str, float], key: str, value: float) -> None:
    """Token sums add up; `*_min` / `*_max` metrics are extremes over the batch."""
    if key.endswith(("_min", "_max")) and key in totals:
        totals[key] = (min if key.endswith("_min") else max)(totals[key], value)
    else:
        totals[key] = totals.get(key, 0.0) + value


# attention implementations that honour the shared-prefix path's 4D boolean mask exactly
EXACT_MASK_ATTENTION = ("sdpa", "eager", "rlvr_prefix")


def shared_prefix_unsupported(config) -> str | None:
    """Why the shared-prefix path would not compute a model's log-probs exactly, or None.

    That path builds its own 4D mask (the whole prompt plus the completion's own earlier tokens), which
    flash-attention kernels ignore and which knows no sliding window."""
    attn = getattr(config, "_attn_implementation", None)
    if attn is not None and attn not in EXACT_MASK_ATTENTION:
        return f"attention implementation {attn!r} does not take its 4D attention mask"
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or []
    if "sliding_attention" in layer_types or (window and getattr(config, "use_sliding_window", True)
                                              and not layer_types):
        return f"the model attends through a sliding window ({window} tokens) that its mask does not apply"
    return None


@contextmanager
def _active_adapter(model, name: str):
    """Make the PEFT adapter `name` the active one (frozen), then "default" again (trainable)."""
    model.set_adapter(name, inference_mode=True)
    try:
        yield
    finally:
        model.set_adapter("default")


def _to_cpu(obj):
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def rng_states() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision == "auto":
        return bf16_supported(device)
    return precision == "bf16"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_policy(cfg: Config, reference: bool = False):
    """The learner's model: the base (model.quantization) with the trainable LoRA adapter, fresh or
    model.init_adapter, and with `reference` the starting adapter's frozen copy (REFERENCE_ADAPTER)."""
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the LoRA initialisation: the same config builds the same starting policy
    device = resolve_device(cfg.learner.device)
    # frozen base weights in the compute dtype (half the memory, no per-step casts); LoRA stays float32
    dtype = torch.bfloat16 if use_bf16(cfg.learner.precision, device) else torch.float32
    base = load_model(cfg.model.name, dtype=dtype, device=device, quantization=cfg.model.quantization)
    return add_lora(base, cfg.model.lora, cfg.model.init_adapter, reference=reference)


def build_learner(cfg: Config, demonstrations: list[Trajectory] | None = None) -> Learner:
    """Load the base model, attach the LoRA adapter, and wrap both in a Learner. With algorithm.sft_coef > 0,
    `demonstrations` are its NLL term's examples (rlvr.rollout.demonstrations.load_demonstrations)."""
    algo = cfg.algorithm
    if algo.sft_coef and not demonstrations:
        raise ValueError("algorithm.sft_coef > 0 needs the demonstrations (load_demonstrations(cfg))")
    # the KL reference after an SFT start is the starting policy (a frozen copy of the init adapter), unless
    # algorithm.reference=base; without init_adapter or KL term there is nothing to load
    model = load_policy(cfg, reference=algo.beta > 0 and algo.reference == "start")
    spec = ObjectiveSpec(loss=algo.loss, aggregation=algo.aggregation, clip_low=algo.clip_low,
                         clip_high=algo.clip_high, beta=algo.beta, kl_estimator=algo.kl_estimator,
                         tis_cap=effective_tis_cap(cfg), dual_clip=algo.dual_clip)
    ptx = DemonstrationLoss(demonstrations, algo.sft_coef, cfg.sft.batch_size, cfg.seed) if algo.sft_coef else None
    return Learner(model, cfg.learner, spec, temperature=cfg.rollout.temperature, total_steps=cfg.steps,
                   norm_tokens=algo.loss_norm_tokens, demonstrations=ptx)
