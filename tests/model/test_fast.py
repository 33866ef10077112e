"""gptlab.model.fast, the CPU decoding path: the same tokens and (to float rounding) the same
logits as the plain network, and nothing changed for training."""

import pytest
import torch

from gptlab.config import GPTConfig
from gptlab.generate import generate
from gptlab.model import GPT
from gptlab.model.fast import (
    DecodingHead,
    SplitLinear,
    few_rows_matmul,
    prepare_for_decoding,
)
from gptlab.model.gpt import Linear

# The split sums the same products in another order, so each output may differ by float32
# rounding of a sum: bounded here by 1e-6 x the sum of the products' magnitudes (|x| @ |w|),
# about 8 float32 ulps of it. Measured on a 2-core AMD EPYC: up to 7e-6 absolute (0.2e-6 of
# |x| @ |w|) for 3072 x 768.
RELATIVE = 1e-6


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("gpt2")).eval()


@pytest.mark.parametrize("shape", [(768, 2304), (768, 3072), (3072, 768), (768, 768)])
@pytest.mark.parametrize("rows", [1, 8, 16])
def test_the_split_product_equals_the_plain_one_to_rounding(shape, rows):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(shape, generator=gen) * 0.02
    x = torch.randn(rows, shape[0], generator=gen)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            bound = RELATIVE * (x.abs() @ w.abs())
            assert ((few_rows_matmul(x, w) - x @ w).abs() <= bound).all()
    finally:
        torch.set_num_threads(before)


def test_greedy_decoding_gives_the_same_tokens_and_close_logits(gpt2):
    prompts = torch.randint(0, 50257, (3, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = generate(gpt2, prompts[:1], 16, temperature=0.0, fast=True)  # batch 1
        assert torch.equal(a, generate(gpt2, prompts[:1], 16, temperature=0.0, fast=False))
        assert torch.equal(generate(gpt2, prompts, 16, temperature=0.0, fast=True),
                           generate(gpt2, prompts, 16, temperature=0.0, fast=False))  # fmt: skip
        hidden = gpt2.hidden_states(prompts)[:, -1]
        fast = DecodingHead(prepare_for_decoding(gpt2), fast=True)(hidden)
        plain = DecodingHead(gpt2, fast=False)(hidden)
        bound = RELATIVE * (hidden.abs() @ gpt2.lm_head.weight.abs().t())
    assert fast.shape == plain.shape == (3, 50257)
    assert ((fast - plain).abs() <= bound).all()


def test_preparing_is_in_place_idempotent_and_reversible():
    model = GPT(GPTConfig.preset("tiny", block_size=16, vocab_size=40))
    keys = list(model.state_dict())
    params = [p.data_ptr() for p in model.parameters()]
    prepare_for_decoding(prepare_for_decoding(model))
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert linears and all(type(m) is SplitLinear for m in linears)
    assert list(model.state_dict()) == keys
    assert [p.data_ptr() for p in model.parameters()] == params
    prepare_for_decoding(model, enabled=False)
    assert all(type(m) is Linear for m in linears)


def test_a_prepared_model_trains_exactly_as_before():
    """With autograd on, SplitLinear is Linear: the same loss and gradients, bitwise."""
    torch.manual_seed(0)
    plain = GPT(GPTConfig.preset("tiny", block_size=16, vocab_size=40, dropout=0.0))
    fast = prepare_for_decoding(GPT(plain.config))
    fast.load_state_dict(plain.state_dict())
    x = torch.randint(0, 40, (1, 8))  # few rows: the fast path would apply without autograd
    for model in (plain, fast):
        model(x, targets=x).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name


def test_the_heads_copy_follows_the_weights():
    model = GPT(GPTConfig.preset("tiny", block_size=16, vocab_size=40))
    head = DecodingHead(model)
    hidden = torch.randn(2, model.config.n_embd)
    with torch.no_grad():
        before = head(hidden)
        model.lm_head.weight.mul_(2.0)  # an optimizer step changes the weights in place
        after = head(hidden)
    assert torch.allclose(after, 2 * before, atol=1e-6)
