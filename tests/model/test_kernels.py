"""kernels.causal_attention: the training attention kernel against plain attention."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from gptlab.config import GPTConfig
from gptlab.model import GPT, kernels

HAS_KERNEL = shutil.which("cc") is not None or shutil.which("gcc") is not None
needs_kernel = pytest.mark.skipif(
    not HAS_KERNEL or not kernels.vectorised(), reason="no C compiler or no AVX2 build"
)


def plain_attention(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """The definition, written out: softmax(q k^T / sqrt(hs)) over keys <= the query, times v.
    qkv (B, T, 3C) -> (B, T, C)."""
    B, T, C3 = qkv.shape
    q, k, v = (t.view(B, T, n_head, -1).transpose(1, 2) for t in qkv.split(C3 // 3, dim=2))
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    weights = scores.masked_fill(future, float("-inf")).softmax(-1)
    return (weights @ v).transpose(1, 2).reshape(B, T, C3 // 3)


@needs_kernel
@pytest.mark.parametrize(
    "B, T, heads, hs, threads",
    # one position; lengths that are no multiple of the 4-row and 16-column tiles; a head
    # size with a last 8 (24 = 16 + 8); a GPT-2 head; 1 and 3 threads (more than cores)
    [(2, 1, 2, 8, None), (3, 13, 4, 16, None), (2, 37, 2, 24, 3), (2, 64, 4, 32, 1)]
    + [(1, 70, 1, 64, None)],
)
def test_causal_attention_is_the_definition_to_rounding_forward_and_backward(
    B, T, heads, hs, threads
):
    """The kernel's output and its gradient at qkv equal the written-out attention computed in
    float64, to float32 rounding (relative to the largest value; measured ~1e-6)."""
    gen = torch.Generator().manual_seed(T)
    exact = (
        torch.randn(B, T, 3 * heads * hs, generator=gen, dtype=torch.float64) * 2
    ).requires_grad_()
    grad = torch.randn(B, T, heads * hs, generator=gen, dtype=torch.float64)
    want = plain_attention(exact, heads)
    want.backward(grad)
    qkv = exact.detach().float().requires_grad_()
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        got = kernels.causal_attention(qkv, heads)
        assert got is not None and got.shape == want.shape and got.requires_grad
        got.backward(grad.float())
    finally:
        torch.set_num_threads(before)
    for mine, right in ((got, want), (qkv.grad, exact.grad)):
        error = (mine.double() - right).abs().max().item()
        assert error <= 1e-5 * right.abs().max().item()
    with torch.no_grad():  # (no graph: the forward alone, the same numbers)
        assert torch.equal(kernels.causal_attention(qkv.detach(), heads), got.detach())


@needs_kernel
def test_causal_attention_refuses_what_it_was_not_built_for():
    """None (the caller runs scaled_dot_product_attention) for other dtypes, devices,
    layouts, head sizes not a multiple of 8, sequences past MAX_SEQUENCE, widths that are not
    3 x heads x hs, and under torch.func's transforms."""
    qkv = torch.randn(2, 8, 3 * 2 * 16)
    assert kernels.causal_attention(qkv, 2) is not None
    refused = [
        (qkv.double(), 2),
        (qkv.to("meta"), 2),
        (qkv.transpose(0, 1), 2),  # not contiguous
        (torch.randn(2, 8, 3 * 2 * 12), 2),  # head size 12
        (qkv, 5),  # 96 is not 3 x 5 x hs
        (qkv[0], 2),  # 2-D
        (torch.randn(1, kernels.MAX_SEQUENCE + 1, 48), 2),
        (torch.randn(0, 8, 96), 2),
    ]
    for tensor, heads in refused:
        assert kernels.causal_attention(tensor, heads) is None
    seen = []
    torch.func.vmap(lambda t: seen.append(kernels.causal_attention(t, 2)) or t)(qkv)
    assert seen == [None]


def _tiny(dropout: float = 0.0) -> GPT:
    torch.manual_seed(0)
    return GPT(
        GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=50, dropout=dropout)
    )


@needs_kernel
def test_training_takes_the_kernel_and_gives_scaled_dot_product_attentions_gradients(
    monkeypatch,
):
    """A model in training (dropout 0, no mask, no cache) runs its attention through the
    kernel, in every layer, and its loss and every parameter's gradient are those of the same
    model through scaled_dot_product_attention, to float32 rounding."""
    ids = torch.randint(0, 50, (3, 24), generator=torch.Generator().manual_seed(1))
    grads, losses = [], []
    real = kernels.causal_attention
    for takes in (True, False):
        model = _tiny().train()
        calls = []
        monkeypatch.setattr(
            kernels,
            "causal_attention",
            lambda qkv, h, calls=calls, takes=takes: (
                calls.append(qkv.shape) or (real(qkv, h) if takes else None)
            ),
        )
        loss = model(ids[:, :-1], targets=ids[:, 1:]).loss
        loss.backward()
        assert len(calls) == 2  # one per layer (and c_attn ran once each: shapes seen)
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert abs(losses[0] - losses[1]) <= 1e-6 * abs(losses[1])
    for mine, theirs in zip(*grads, strict=True):
        assert (mine - theirs).abs().max() <= 1e-5 * theirs.abs().max() + 1e-9


@needs_kernel
def test_dropout_masks_and_second_derivatives_keep_pytorchs_attention(monkeypatch):
    """Attention dropout while training, an attention mask and a KV cache are
    scaled_dot_product_attention's (the kernel is not asked); a second derivative through the
    kernel (create_graph=True) is PyTorch attention's."""
    asked = []
    real = kernels.causal_attention
    monkeypatch.setattr(kernels, "causal_attention", lambda qkv, h: asked.append(1) or real(qkv, h))
    ids = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(2))
    _tiny(dropout=0.1).train()(ids)
    model = _tiny().eval()
    with torch.no_grad():
        model(ids, attention_mask=torch.ones(2, 10))
    assert asked == []
    model(ids)  # eval, no mask: the kernel
    assert asked == [1, 1]

    qkv = torch.randn(1, 6, 3 * 2 * 8, dtype=torch.float64)
    firsts = []
    for run in (lambda t, h: kernels.causal_attention(t.float(), h), plain_attention):
        leaf = qkv.clone().requires_grad_()
        first = torch.autograd.grad(run(leaf, 2).pow(2).sum(), leaf, create_graph=True)[0]
        second = torch.autograd.grad(first.sum(), leaf)[0]
        firsts.append((first.double(), second.double()))
    (g1, h1), (g2, h2) = firsts
    assert (g1 - g2).abs().max() <= 1e-5 * g2.abs().max()
    assert (h1 - h2).abs().max() <= 1e-4 * h2.abs().max()


@needs_kernel
def test_causal_attention_gives_the_same_bits_in_any_number_of_threads():
    """One thread computes a whole (batch, head) in a fixed order, so the output and the
    gradient do not depend on the thread count (a run resumed on another machine with other
    cores repeats the same numbers)."""
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(3, 21, 3 * 3 * 16, generator=gen)
    grad = torch.randn(3, 21, 3 * 16, generator=gen)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 5):
            torch.set_num_threads(threads)
            leaf = qkv.clone().requires_grad_()
            y = kernels.causal_attention(leaf, 3)
            y.backward(grad)
            results.append((y.detach(), leaf.grad))
    finally:
        torch.set_num_threads(before)
    for y, g in results[1:]:
        assert torch.equal(y, results[0][0]) and torch.equal(g, results[0][1])


@needs_kernel
def test_a_compiled_graph_sees_pytorchs_attention():
    """torch.compile traces the attention without a graph break: the kernel steps aside for
    scaled_dot_product_attention, which the compiler can see into."""
    from torch import _dynamo

    from gptlab.model.gpt import CausalSelfAttention

    torch.manual_seed(0)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    attention = CausalSelfAttention(config).eval()
    _dynamo.reset()
    try:
        assert _dynamo.explain(attention)(torch.randn(2, 9, 32)).graph_break_count == 0
    finally:
        _dynamo.reset()


@needs_kernel
def test_a_nan_or_infinite_score_spreads_as_in_pytorchs_attention():
    """A NaN (or +inf) in a key makes the rows that see it NaN, as scaled_dot_product_attention
    and the definition do, instead of being dropped by the kernel's max and exp."""
    for bad in (float("nan"), float("inf")):
        qkv = torch.randn(1, 6, 24, generator=torch.Generator().manual_seed(4))
        qkv[0, 2, 8:16] = bad  # the key of position 2 (C = 8)
        got = kernels.causal_attention(qkv, 1)
        want = plain_attention(qkv.double(), 1)
        assert torch.equal(got.isnan(), want.isnan())
        assert got[0, :2].isfinite().all() and got[0, 2:].isnan().all()
        assert (got[0, :2] - want[0, :2]).abs().max() <= 1e-5
