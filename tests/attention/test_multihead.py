import torch

from gptlab import GPTConfig
from gptlab.attention import MultiHeadAttention
from gptlab.model.gpt import CausalSelfAttention


def copy_into_torch(ours: MultiHeadAttention, H: int, h: int) -> torch.nn.MultiheadAttention:
    ref = torch.nn.MultiheadAttention(H, h, bias=False, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.W_q.weight, ours.W_k.weight, ours.W_v.weight]))
        ref.out_proj.weight.copy_(ours.W_o.weight)
    return ref.eval()


def test_equals_torch_multihead_attention():
    torch.manual_seed(0)
    ours = MultiHeadAttention(32, 4).eval()
    ref = copy_into_torch(ours, 32, 4)
    q, kv = torch.randn(3, 5, 32), torch.randn(3, 7, 32)
    expected, _ = ref(q, kv, kv)
    torch.testing.assert_close(ours(q, kv, kv), expected, rtol=1e-5, atol=1e-5)
    lens = torch.tensor([7, 3, 1])
    padding = torch.arange(7)[None, :] >= lens[:, None]  # True = ignore
    expected, weights = ref(q, kv, kv, key_padding_mask=padding, average_attn_weights=False)
    torch.testing.assert_close(ours(q, kv, kv, lens), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.attention_weights, weights, rtol=1e-5, atol=1e-5)


def test_causal_self_attention_is_gpt2s_attention():
    """The bridge: the toolkit's module with queries = keys = values and a causal mask computes
    what GPT-2's CausalSelfAttention computes, given the same weights."""
    torch.manual_seed(0)
    C, h = 32, 4
    gpt = CausalSelfAttention(GPTConfig(n_embd=C, n_head=h, block_size=16)).eval()
    with torch.no_grad():
        for p in gpt.parameters():
            p.normal_(0, 0.2)
    ours = MultiHeadAttention(C, h, bias=True).eval()
    W, b = gpt.c_attn.weight, gpt.c_attn.bias  # (C, 3C) stored (in, out)
    with torch.no_grad():
        for i, layer in enumerate((ours.W_q, ours.W_k, ours.W_v)):
            layer.weight.copy_(W[:, i * C : (i + 1) * C].t())
            layer.bias.copy_(b[i * C : (i + 1) * C])
        ours.W_o.weight.copy_(gpt.c_proj.weight.t())
        ours.W_o.bias.copy_(gpt.c_proj.bias)
    x = torch.randn(2, 9, C)
    torch.testing.assert_close(ours(x, x, x, causal=True), gpt(x), rtol=1e-5, atol=1e-5)


def test_heads_run_in_parallel_shapes():
    mha = MultiHeadAttention(24, 3)
    out = mha(torch.randn(2, 4, 24), torch.randn(2, 6, 24), torch.randn(2, 6, 24))
    assert out.shape == (2, 4, 24) and mha.attention_weights.shape == (2, 3, 4, 6)
