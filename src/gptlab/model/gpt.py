"""The GPT-2 network: token + position embeddings, pre-LayerNorm blocks, final LayerNorm, tied head.

Shapes: B batch, T time (tokens), C = n_embd channels, nh heads of hs = C / nh channels each.
Module names follow Hugging Face's GPT-2 (`transformer.h.0.attn.c_attn` ...), so that a
checkpoint maps onto this network name for name (see `gptlab.model.hf`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from os import PathLike

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.config import GPTConfig
from gptlab.errors import GptlabError


@dataclass
class GPTOutput:
    """What `GPT.forward` returns: logits (B, T, vocab_size) and, given targets, the loss."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t only.

    One fused projection makes q, k and v (C -> 3C); heads run in parallel inside
    `scaled_dot_product_attention`; c_proj mixes the concatenated heads back (C -> C).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, C); attn_mask: None (plain causal) or bool (B, 1, T, T), True = may attend."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, -1).transpose(1, 2)
        k = k.view(B, T, self.n_head, -1).transpose(1, 2)
        v = v.view(B, T, self.n_head, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=attn_mask is None,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: Linear C -> 4C, GELU (tanh approximation), Linear 4C -> C."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
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

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
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
            if isinstance(module, (nn.Linear, nn.Embedding)):
                scale = 1.0
                if isinstance(module, nn.Linear) and name.endswith("c_proj"):
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
    ) -> GPTOutput:
        """idx: (B, T) token ids. targets: (B, T) ids to predict at each position (the inputs
        shifted left by one), -100 = ignore. attention_mask: (B, T), 1 = real token, 0 = padding;
        padded keys are never attended to and positions count real tokens only, so a
        left-padded row gives, at its real positions, the logits of the unpadded row."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise GptlabError(
                f"input has {T} tokens but this model's block_size is {self.config.block_size}"
            )
        attn_mask = None
        if attention_mask is None:
            pos = torch.arange(T, device=idx.device).unsqueeze(0)  # (1, T)
        else:
            real = attention_mask.to(torch.bool)  # (B, T)
            pos = (real.long().cumsum(-1) - 1).clamp(min=0)  # (B, T), 0 at the first real token
            attn_mask = causal_padding_mask(real)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, attn_mask)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, embedding_rows)
        if self.config.padded_vocab_size:
            logits = logits[..., : self.config.vocab_size]  # padded ids are never predicted
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100
            )
        return GPTOutput(logits=logits, loss=loss)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """Prompt ids (B, T) -> (B, T + max_new_tokens); see `gptlab.generate.generate`."""
        from gptlab.generate import generate

        return generate(self, idx, max_new_tokens, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> GPT:
        """Load a Hugging Face GPT-2 folder, a folder gptlab saved, or a hub name (online)."""
        from gptlab.model.hf import load_pretrained

        return load_pretrained(name_or_path, device=device, dtype=dtype)

    def save_pretrained(self, directory: str | PathLike) -> None:
        """Write config.json + model.safetensors that `transformers` loads as GPT2LMHeadModel."""
        from gptlab.model.hf import save_pretrained

        save_pretrained(self, directory)


def causal_padding_mask(real: torch.Tensor) -> torch.Tensor:
    """real: bool (B, T), True = real token -> bool (B, 1, T, T), True where query i may attend
    key j: j <= i and j is real. A padding query also sees itself, so that no row of the
    softmax is empty (its output is never used)."""
    T = real.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=real.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=real.device)
    return (causal & real[:, None, None, :]) | eye
