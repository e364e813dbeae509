"""A minimal Llama-shaped decoder for the demo and the decode benchmark (not a
model library: random weights, greedy decoding, one token per sequence per step).

Llama's structure (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU
MLP, untied lm_head) in plain torch, every projection an ``nn.Linear`` so that
:func:`triton_dequant.quantize_model` swaps them. A decode :meth:`Decoder.step`
is CUDA-graph friendly: static shapes, a preallocated KV cache written with
``index_copy_`` at a position held in a device tensor, attention over the whole
cache with a mask (so every step does the work of a full cache), no host syncs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Config:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    rope_theta: float = 500000.0
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


# Llama-3-8B's sizes (Meta's config.json: hidden 4096, intermediate 14336, 32 heads,
# 8 KV heads, vocab 128256, rope_theta 500000), with fewer layers
LLAMA3_8B = Config(vocab=128256, hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8)


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class _Layer(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        d, kv = c.head_dim, c.kv_heads * c.head_dim
        self.c = c
        self.attn_norm = _RMSNorm(c.hidden, c.eps)
        self.q_proj = nn.Linear(c.hidden, c.hidden, bias=False)
        self.k_proj = nn.Linear(c.hidden, kv, bias=False)
        self.v_proj = nn.Linear(c.hidden, kv, bias=False)
        self.o_proj = nn.Linear(c.hidden, c.hidden, bias=False)
        self.mlp_norm = _RMSNorm(c.hidden, c.eps)
        self.gate_proj = nn.Linear(c.hidden, c.intermediate, bias=False)
        self.up_proj = nn.Linear(c.hidden, c.intermediate, bias=False)
        self.down_proj = nn.Linear(c.intermediate, c.hidden, bias=False)
        assert d * c.heads == c.hidden

    def forward(self, x, cos, sin, k_cache, v_cache, pos, mask):
        c = self.c
        B = x.shape[0]
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, c.heads, 1, c.head_dim)
        k = self.k_proj(h).view(B, c.kv_heads, 1, c.head_dim)
        v = self.v_proj(h).view(B, c.kv_heads, 1, c.head_dim)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        k_cache.index_copy_(2, pos, k)
        v_cache.index_copy_(2, pos, v)
        # grouped-query attention without copying the cache: the heads sharing KV head j
        # (j*rep ... j*rep + rep - 1, transformers' repeat_kv order) become rep queries of j
        rep = c.heads // c.kv_heads
        a = F.scaled_dot_product_attention(q.view(B, c.kv_heads, rep, c.head_dim), k_cache, v_cache, attn_mask=mask)
        x = x + self.o_proj(a.reshape(B, c.hidden))
        h = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


def _rope(x, cos, sin):
    x1, x2 = x.chunk(2, -1)  # rotate_half convention (as transformers' Llama)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


class Decoder(nn.Module):
    """Embedding, ``c.layers`` decoder layers, final norm, lm_head."""

    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c.vocab, c.hidden)
        self.layers = nn.ModuleList([_Layer(c) for _ in range(c.layers)])
        self.norm = _RMSNorm(c.hidden, c.eps)
        self.lm_head = nn.Linear(c.hidden, c.vocab, bias=False)

    @torch.no_grad()
    def init_random(self, seed: int = 0) -> "Decoder":
        """Random weights: unit-variance embeddings, linear weights of std
        ``1 / sqrt(in_features)`` (activations stay O(1) and greedy decoding does not
        collapse onto one token)."""
        g = torch.Generator(device=self.embed.weight.device).manual_seed(seed)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 1.0 if name.startswith("embed") else p.shape[1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32) * std)
        return self

    def new_cache(self, batch: int, length: int) -> "Cache":
        w = self.embed.weight
        c = self.c
        shape = (c.layers, batch, c.kv_heads, length, c.head_dim)
        return Cache(torch.zeros(shape, dtype=w.dtype, device=w.device), torch.zeros(shape, dtype=w.dtype, device=w.device),
                     torch.zeros(1, dtype=torch.long, device=w.device), _rope_tables(c, length, w.device))

    def step(self, tokens: torch.Tensor, cache: "Cache") -> torch.Tensor:
        """One decode step: ``tokens [B]`` at position ``cache.pos`` -> logits ``[B, vocab]``
        (fp32); writes the KV cache at ``cache.pos`` and advances it (on the device)."""
        pos = cache.pos
        cos_t, sin_t = cache.rope
        cos = cos_t.index_select(0, pos).to(self.embed.weight.dtype)  # [1, head_dim / 2]
        sin = sin_t.index_select(0, pos).to(self.embed.weight.dtype)
        mask = (torch.arange(cache.k.shape[3], device=pos.device) <= pos).view(1, 1, 1, -1)  # the positions written
        x = self.embed(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache.k[i], cache.v[i], pos, mask)
        cache.pos.add_(1)
        return self.lm_head(self.norm(x)).float()

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, new_tokens: int, cache: Optional["Cache"] = None,
                 graph: bool = False) -> torch.Tensor:
        """Greedy decoding of ``prompt [B, T]`` (the prompt is fed one token per step);
        returns ``[B, T + new_tokens]``. ``graph=True`` (CUDA) replays one captured step."""
        B, T = prompt.shape
        cache = cache or self.new_cache(B, T + new_tokens)
        cache.pos.zero_()
        step = self.graphed_step(cache, B) if graph else (lambda t: self.step(t, cache))
        out = [prompt[:, i] for i in range(T)]
        for i in range(T + new_tokens - 1):
            logits = step(out[i])
            if i >= T - 1:
                out.append(logits.argmax(-1))
        return torch.stack(out, 1)

    def graphed_step(self, cache: "Cache", batch: int):
        """``step`` captured in a CUDA graph on static buffers; returns ``fn(tokens) -> logits``."""
        tokens = torch.zeros(batch, dtype=torch.long, device=cache.pos.device)
        pos0 = cache.pos.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: lazy init, kernel compilation, workspaces
                self.step(tokens, cache)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            logits = self.step(tokens, cache)
        cache.pos.copy_(pos0)

        def run(t):
            tokens.copy_(t)
            g.replay()
            return logits
        return run


@dataclass
class Cache:
    k: torch.Tensor      # [layers, B, kv_heads, S, head_dim]
    v: torch.Tensor
    pos: torch.Tensor    # [1] int64: the next position to write
    rope: tuple          # (cos, sin) fp32 [S, head_dim / 2]


def _rope_tables(c: Config, length: int, device):
    inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32, device=device) / c.head_dim))
    f = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv)  # [S, head_dim / 2]
    return f.cos(), f.sin()  # one angle per rotated pair (x1[i], x2[i])


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights of the model's linear layers (nn.Linear weight/bias, or a
    QuantizedLinear's buffers)."""
    from .model import QuantizedLinear
    n = 0
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            n += sum(b.numel() * b.element_size() for b in m.buffers(recurse=False))
        elif isinstance(m, nn.Linear):
            n += sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
    return n
