import torch

from gptlab.attention import AdditiveAttention, DotProductAttention, masked_softmax


def test_masked_positions_get_exactly_zero():
    scores = torch.randn(2, 3, 5)
    w = masked_softmax(scores, torch.tensor([2, 4]))
    assert torch.all(w[0, :, 2:] == 0) and torch.all(w[1, :, 4:] == 0)
    assert torch.allclose(w.sum(-1), torch.ones(2, 3))
    per_query = masked_softmax(scores, torch.tensor([[1, 2, 3], [5, 4, 3]]))
    assert torch.all(per_query[0, 0, 1:] == 0) and torch.all(per_query[1, 2, 3:] == 0)


def test_row_without_valid_key_is_zero_not_nan():
    scores = torch.randn(2, 2, 4, requires_grad=True)
    w = masked_softmax(scores, torch.tensor([0, 3]))
    assert torch.all(w[0] == 0) and torch.isfinite(w).all()
    (w * torch.randn_like(w)).sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_additive_with_different_query_and_key_sizes():
    attn = AdditiveAttention(key_size=3, query_size=5, num_hiddens=8)
    q, k, v = torch.randn(2, 1, 5), torch.randn(2, 6, 3), torch.randn(2, 6, 4)
    out = attn(q, k, v, torch.tensor([2, 6]))
    assert out.shape == (2, 1, 4)
    assert attn.attention_weights.shape == (2, 1, 6)
    assert torch.all(attn.attention_weights[0, :, 2:] == 0)
    w = attn.attention_weights[0, 0, :2]
    torch.testing.assert_close(out[0, 0], w @ v[0, :2])


def test_dot_product_is_scaled_by_sqrt_d():
    attn = DotProductAttention()
    q, k, v = torch.randn(1, 2, 16), torch.randn(1, 3, 16), torch.randn(1, 3, 2)
    attn(q, k, v)
    expected = torch.softmax(q @ k.transpose(1, 2) / 4.0, dim=-1)
    torch.testing.assert_close(attn.attention_weights, expected)
