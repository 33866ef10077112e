"""The GPT-2 network: token + position embeddings, pre-LayerNorm blocks, final LayerNorm, tied head.

Shapes: B batch, T time (tokens), C = n_embd channels, nh heads of hs = C / nh channels each.
Module names follow Hugging Face's GPT-2 (`transformer.h.0.attn.c_attn` ...), so that a
checkpoint maps onto this network name for name (see `gptlab.model.hf`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.model import kernels
from gptlab.model.cache import KVCache


@dataclass
class GPTOutput:
    """What `GPT.forward` returns: logits (B, T, vocab_size) and, given targets, the loss."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class Linear(nn.Module):
    """y = x @ weight + bias, with weight stored (in, out).

    The transpose of nn.Linear's (out, in): the layout of Hugging Face's GPT-2 (`Conv1D`), so
    checkpoints load as they are. For the one-row products of sampling, benchmarks/matvec.py
    measures the two layouts side by side on your CPU (on a 2-core AMD EPYC: equal for the
    block's matrices, 1.5x faster in (in, out) for the 768 x 50257 head). Sampling's faster
    path for few rows lives in gptlab.model.fast.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.normal_(self.weight, mean=0.0, std=0.02)  # GPT-2's; GPT re-initialises anyway

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # (B * T, in)
        y = x2 @ self.weight if self.bias is None else torch.addmm(self.bias, x2, self.weight)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}"


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t only.

    One fused projection makes q, k and v (C -> 3C); heads run in parallel inside
    `scaled_dot_product_attention` (for whole float32 sequences on a CPU, inside gptlab's kernel
    `kernels.causal_attention`: the same function, faster there); c_proj mixes the concatenated
    heads back (C -> C).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x: (B, T, C). attn_mask: bool (B, 1, T, L), True = may attend, over all L keys (the
        cached ones first); None = plain causal attention. With a cache, this layer's k and v
        are stored and the queries attend to every cached key as well."""
        B, T, C = x.shape
        qkv = self.c_attn(x)
        if cache is None and attn_mask is None and not (self.training and self.dropout > 0):
            # whole causal sequences on a CPU in float32: gptlab's kernel (None where it cannot
            # take them: scaled_dot_product_attention below, the same numbers to rounding)
            y = kernels.causal_attention(qkv, self.n_head)
            if y is not None:
                return self.resid_dropout(self.c_proj(y))
        q, k, v = self._split(qkv)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=attn_mask is None and k.size(2) == T,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> q, k, v, each (B, nh, T, hs): one fused projection, split by heads."""
        return self._split(self.c_attn(x))

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """c_attn's output (B, T, 3C) -> q, k, v, each (B, nh, T, hs)."""
        B, T, C3 = qkv.shape
        q, k, v = qkv.split(C3 // 3, dim=2)
        return tuple(t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights forward computes inside SDPA, made explicit for pictures:
        softmax(q k^T / sqrt(hs)) with the causal mask. x (B, T, C) -> (B, nh, T, T)."""
        T = x.size(1)
        q, k, _ = self.heads(x)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


class TanhGELU(nn.Module):
    """GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise, any shape.

    On a CPU in float32 it runs gptlab's compiled kernel (`kernels.gelu_tanh`, forward and
    backward: PyTorch's CPU tanh made it ~12% of a small model's training step); elsewhere
    PyTorch's `F.gelu(x, approximate="tanh")`, the reference it is tested against."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = kernels.gelu_tanh(x)
        return F.gelu(x, approximate="tanh") if y is None else y


class MLP(nn.Module):
    """Position-wise feed-forward: Linear C -> 4C, GELU (tanh approximation), Linear 4C -> C."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = TanhGELU()
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2: ids (B, T) -> logits over the vocabulary (B, T, vocab_size)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.embedding_rows, config.n_embd),  # token -> vector
                wpe=nn.Embedding(config.block_size, config.n_embd),  # position -> vector
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.embedding_rows, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying: one matrix, two uses
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, LayerNorm 1/0, and the
        projections that write into the residual stream scaled by 1/sqrt(2 * n_layer)."""
        std = 0.02
        for name, module in self.named_modules():
            if isinstance(module, (Linear, nn.Linear, nn.Embedding)):
                scale = 1.0
                if name.endswith("c_proj"):
                    scale = 1.0 / math.sqrt(2 * self.config.n_layer)
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def num_params(self, include_position_embedding: bool = True) -> int:
        """Number of parameters, the tied embedding/head matrix counted once."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        if not include_position_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> GPTOutput:
        """idx: (B, T) token ids. targets: (B, T) ids to predict at each position (the inputs
        shifted left by one), -100 = ignore. attention_mask: (B, T), 1 = real token, 0 = padding;
        padded keys are never attended to and positions count real tokens only, so a
        left-padded row gives, at its real positions, the logits of the unpadded row.
        With a KVCache (sampling), see `hidden_states`."""
        x = self.hidden_states(idx, attention_mask, cache)
        logits = self.lm_head(x)  # (B, T, embedding_rows)
        if self.config.padded_vocab_size:
            logits = logits[..., : self.config.vocab_size]  # padded ids are never predicted
        loss = None
        if targets is not None:
            loss = F.cross_entropy(  # in float32 even where the logits are bfloat16
                logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100
            )
        return GPTOutput(logits=logits, loss=loss)

    def hidden_states(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """ids (B, T) -> the final LayerNorm's output (B, T, C), the input of the head.

        With a KVCache holding P earlier positions, idx holds only the T new tokens, their
        keys and values are added to the cache, and attention_mask, if given, covers all P + T
        positions."""
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        self._check_length(past + T)
        attn_mask = None
        if attention_mask is None:
            pos = torch.arange(past, past + T, device=idx.device).unsqueeze(0)  # (1, T)
            if past and T > 1:  # new queries see all cached keys and the new ones causally
                real = torch.ones(B, past + T, dtype=torch.bool, device=idx.device)
                attn_mask = causal_padding_mask(real, past)
        else:
            real = attention_mask.to(torch.bool)  # (B, P + T)
            pos = (real.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # 0 at the first real
            attn_mask = causal_padding_mask(real, past)
        x = self.transformer.drop(self.embed(idx, pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, attn_mask, cache, i)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)

    def embed(self, idx: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """What the first block reads: token embedding + position embedding, (B, T, C).
        pos: (B or 1, T) positions (hidden_states gives them with a cache or padding); default
        0..T-1, with T at most block_size."""
        if pos is None:
            self._check_length(idx.size(1))
            pos = torch.arange(idx.size(1), device=idx.device).unsqueeze(0)
        return self.transformer.wte(idx) + self.transformer.wpe(pos)

    def _check_length(self, n: int) -> None:
        """n positions fit the position table (from shapes only: no device sync)."""
        if n > self.config.block_size:
            raise GptlabError(
                f"input has {n} tokens but this model's block_size is {self.config.block_size}"
            )

    def generate(self, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """Prompt ids (B, T) -> (B, T + max_new_tokens); see `gptlab.generate.generate`."""
        from gptlab.generate import generate

        return generate(self, idx, max_new_tokens, **kwargs)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """The attention weights of every layer for ids (B, T): a list of n_layer tensors
        (B, nh, T, T), row i = how much position i attends to each position <= i."""
        return list(self.iter_attention_maps(idx))

    @torch.no_grad()
    def iter_attention_maps(self, idx: torch.Tensor) -> Iterator[torch.Tensor]:
        """attention_maps one layer at a time (B, nh, T, T): stop early, or keep one layer in
        memory at a time (a 1,024-token text has 50 MB of weights per layer of GPT-2 small)."""
        x = self.embed(idx)
        for block in self.transformer.h:
            yield block.attn.weights(block.ln_1(x))
            x = block(x)

    @torch.no_grad()
    def residual_stream(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream for ids (B, T): n_layer + 1 tensors (B, T, C), the embeddings
        first, then the stream after each block (the last one before ln_f). The logit lens
        reads each through ln_f and the head."""
        x = self.embed(idx)
        states = [x]
        for block in self.transformer.h:
            x = block(x)
            states.append(x)
        return states

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> GPT:
        """Load a Hugging Face GPT-2 folder, a folder gptlab saved, or a hub name (online)."""
        from gptlab.model.hf import load_pretrained

        return load_pretrained(cls, name_or_path, device=device, dtype=dtype)

    def save_pretrained(self, directory: str | PathLike) -> None:
        """Write config.json + model.safetensors that `transformers` loads as GPT2LMHeadModel."""
        from gptlab.model.hf import save_pretrained

        save_pretrained(self, directory)


def causal_padding_mask(real: torch.Tensor, past: int = 0) -> torch.Tensor:
    """real: bool (B, L), True = real token, over all L = past + T positions -> bool
    (B, 1, T, L), True where query i (position past + i) may attend key j: j <= past + i and j
    is real. A padding query also sees itself, so that no row of the softmax is empty (its
    output is never used)."""
    L = real.size(1)
    query_pos = torch.arange(past, L, device=real.device)[:, None]  # (T, 1)
    key_pos = torch.arange(L, device=real.device)[None, :]  # (1, L)
    causal = key_pos <= query_pos  # (T, L)
    return (causal & real[:, None, None, :]) | (key_pos == query_pos)
