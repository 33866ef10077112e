import math

import pytest
import torch
import torch.nn.functional as F

from gptlab import GPT, GPTConfig

TINY = GPTConfig(vocab_size=99, block_size=32, n_layer=2, n_head=4, n_embd=32)


@pytest.mark.parametrize(
    "name, count",
    [
        ("gpt2", 124_439_808),
        ("gpt2-medium", 354_823_168),
        ("gpt2-large", 774_030_080),
        ("gpt2-xl", 1_557_611_200),
    ],
)
def test_preset_parameter_counts(name, count):
    with torch.device("meta"):
        model = GPT(GPTConfig.preset(name))
    assert model.num_params() == count


def test_head_is_tied_to_token_embedding():
    model = GPT(TINY)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_initialisation_follows_gpt2():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=512, block_size=64, n_layer=8, n_head=4, n_embd=256)
    model = GPT(config)
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    for block in model.transformer.h:
        assert block.attn.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert torch.all(block.mlp.c_fc.bias == 0)
        assert torch.all(block.ln_1.weight == 1) and torch.all(block.ln_1.bias == 0)


def test_logits_shape_and_loss_is_shifted_cross_entropy(ids):
    model = GPT(TINY).eval()
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100  # the last position has no next token
    out = model(ids, targets=targets)
    assert out.logits.shape == (3, 17, 99)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 99), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    assert model(ids).loss is None


def test_causal_future_tokens_do_not_change_the_past(ids):
    model = GPT(TINY).eval()
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 99
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_left_padded_rows_equal_unpadded_rows():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    rows = [torch.randint(0, 99, (n,)) for n in (1, 5, 17)]
    T = max(len(r) for r in rows)
    idx = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        idx[i, T - len(r) :] = r
        mask[i, T - len(r) :] = 1
    batched = model(idx, attention_mask=mask).logits
    assert torch.isfinite(batched).all()  # padding rows too: no NaN from an empty softmax
    for i, r in enumerate(rows):
        alone = model(r[None]).logits[0]
        torch.testing.assert_close(batched[i, T - len(r) :], alone, atol=1e-5, rtol=1e-5)


def test_input_longer_than_block_size_names_the_numbers():
    model = GPT(TINY)
    with pytest.raises(ValueError, match="input has 33 tokens but this model's block_size is 32"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_padded_vocabulary_is_never_predicted(ids):
    torch.manual_seed(0)
    model = GPT(TINY.replace(padded_vocab_size=128)).eval()
    assert model.transformer.wte.weight.shape == (128, 32)
    with torch.no_grad():  # make the padded rows as attractive as possible
        model.transformer.wte.weight[99:] = 100.0
    out = model(ids, targets=ids)
    assert out.logits.shape == (3, 17, 99)
    assert torch.isfinite(out.loss)


def test_no_bias_model_has_no_bias_parameters():
    model = GPT(TINY.replace(bias=False))
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


def test_dropout_only_in_training(ids):
    model = GPT(TINY.replace(dropout=0.5))
    model.train()
    a, b = model(ids).logits, model(ids).logits
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(ids).logits, model(ids).logits)


def test_backward_reaches_every_parameter(ids):
    model = GPT(TINY)
    model(ids, targets=ids).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_attention_maps_are_what_the_layer_computes(ids):
    model = GPT(TINY).eval()
    maps = model.attention_maps(ids)
    assert len(maps) == 2 and maps[0].shape == (3, 4, 17, 17)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(3, 4, 17))
    assert torch.all(maps[1].triu(1) == 0)  # causal
    # the weights applied to v reproduce the layer's output
    block = model.transformer.h[0]
    x = model.transformer.wte(ids) + model.transformer.wpe(torch.arange(17))
    h = block.ln_1(x)
    v = block.attn.c_attn(h).split(32, dim=2)[2].view(3, 17, 4, 8).transpose(1, 2)
    y = (maps[0] @ v).transpose(1, 2).reshape(3, 17, 32)
    torch.testing.assert_close(block.attn.c_proj(y), block.attn(h), rtol=1e-5, atol=1e-5)


def test_a_linear_on_its_own_is_initialised():
    from gptlab.model.gpt import Linear

    layer = Linear(64, 32)
    assert torch.isfinite(layer.weight).all() and 0.015 < layer.weight.std().item() < 0.025
    assert torch.all(layer.bias == 0)
