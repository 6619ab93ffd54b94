"""Attention for the learner and the HF engine: SDPA for whole sequences, plain matmuls for queries that
continue a cache (a shared prompt's, or the decoding cache).

Measured on a 2-core CPU (SmolLM2-135M, the shared-prefix step of bench/learner.py): PyTorch's CPU flash
attention is fast for square causal attention but slow, backward especially, when a few dozen
completion queries attend a long cached prompt through an explicit mask; there the two matmuls of
eager attention are faster (3.8 s vs 5.4 s per step). The choice is made per call from the shapes.
"""

from __future__ import annotations

import torch
from torch import Tensor

NAME = "rlvr_prefix"
# Above this many (batch x heads x queries x keys) scores per layer the matmul path's materialised scores
# cost more than SDPA's kernel saves: 16 rows of 364 tokens (plain path, causal, 19M) stay on SDPA; a shared
# prompt of 300 (0.8M) takes the matmuls. With an explicit mask (completions over a shared prompt's cache)
# SDPA's CPU kernel is slower: 8 rows of 150 queries over 406 keys (4.4M), forward and backward 26 ms a
# layer by matmuls, 44 ms by SDPA.
EAGER_MAX_SCORES = 4_000_000
EAGER_MAX_MASKED_SCORES = 32_000_000


def prefix_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                     dropout: float = 0.0, scaling: float | None = None, **kwargs) -> tuple[Tensor, Tensor | None]:
    """query (B, heads, q, d), key/value (B, kv_heads, k, d), mask bool (B, 1, q, k) or None -> (B, q, heads, d)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    limit = EAGER_MAX_SCORES if attention_mask is None else EAGER_MAX_MASKED_SCORES
    if batch * heads * q_len * k_len > limit or module.training and dropout > 0:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if attention_mask is None and q_len > 1:  # what SDPA would do with is_causal: the last q keys are the queries'
        attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)[None, None]
    # grouped-query attention without copying K/V per head: the G query heads of a KV head share its matmul
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    scores = (query.reshape(batch, kv_heads, groups * q_len, dim) @ key.transpose(-1, -2)) * scale
    scores = scores.view(batch, kv_heads, groups, q_len, k_len)
    if attention_mask is not None:
        mask = attention_mask[:, :, None]  # (B, 1, 1, q, k): the same for every head
        # the dtype's lowest finite value, not -inf: a query that may see no key (padding) stays finite
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores.float(), -1).to(query.dtype).view(batch, kv_heads, groups * q_len, k_len)
    out = (weights @ value).view(batch, heads, q_len, dim)
    return out.transpose(1, 2).contiguous(), None


def use_prefix_attention(model) -> None:
    """Switch a transformers model from SDPA to `prefix_attention` (same masks as SDPA)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return  # flash-attention or eager users made their own choice
    AttentionInterface.register(NAME, prefix_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
