"""gptlab.model.fast and gptlab.model.kernels, the CPU decoding path: the same tokens and (to
float rounding) the same logits as the plain network, and nothing changed for training."""

import copy
import io
import shutil

import pytest
import torch

from gptlab.config import GPTConfig
from gptlab.generate import generate, simple_generate
from gptlab.model import GPT, kernels
from gptlab.model.fast import (
    DecodingAttention,
    DecodingHead,
    DecodingLinear,
    decoding_matmul,
    few_rows_matmul,
    prepare_for_decoding,
)
from gptlab.model.gpt import CausalSelfAttention, Linear

# The split and the kernel sum the same products in another order, so each output may differ
# by float32 rounding of a sum: bounded here by 1e-6 x the sum of the products' magnitudes
# (|x| @ |w|, plus |bias|), about 8 float32 ulps of it. Measured on a 2-core AMD EPYC: up to
# 7e-6 absolute (0.2e-6 of |x| @ |w|) for 3072 x 768; the kernel's largest was 0.18e-6.
RELATIVE = 1e-6
HAS_COMPILER = shutil.which("cc") is not None or shutil.which("gcc") is not None


@pytest.fixture(scope="module")
def gpt2():
    """GPT-2 small's shape, random weights: the plain network."""
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("gpt2")).eval()


@pytest.fixture(scope="module")
def prepared(gpt2):
    """The same weights set up for decoding, as the inference loader does."""
    return prepare_for_decoding(copy.deepcopy(gpt2))


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


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: the split is the path, above")
@pytest.mark.parametrize("shape", [(768, 2304), (3072, 768), (13, 301), (5, 7)])
@pytest.mark.parametrize("rows", [1, 2, 3, 8, 16])
def test_the_kernels_product_equals_the_plain_one_to_rounding(shape, rows):
    """Odd shapes reach every tail of the kernel: rows of w not in fours, columns not in
    eights, an odd row of x, fewer rows of w than threads."""
    assert kernels.library() is not None, "a compiler is here, so the kernels must build"
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(shape, generator=gen) * 0.02
    x = torch.randn(rows, 2 * shape[0], generator=gen)[:, ::2]  # strided: made contiguous
    bias = torch.randn(shape[1], generator=gen)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            for b in (bias, None):
                y = kernels.matmul(x, w, b)
                expected = x @ w if b is None else torch.addmm(b, x, w)
                bound = RELATIVE * (x.abs() @ w.abs() + (0 if b is None else b.abs()))
                assert y.shape == expected.shape
                assert ((y - expected).abs() <= bound).all(), (threads, b is None)
    finally:
        torch.set_num_threads(before)


def test_what_the_kernel_cannot_read_goes_the_plain_way(monkeypatch):
    """float64, mixed dtypes, a transposed (non-contiguous) weight, or no kernel at all:
    decoding_matmul still gives the product."""
    gen = torch.Generator().manual_seed(4)
    w, x, b = torch.randn(32, 24, generator=gen), torch.randn(3, 32, generator=gen), None
    expected = x @ w
    assert kernels.matmul(x.double(), w.double()) is None
    assert kernels.matmul(x, w.bfloat16()) is None
    assert kernels.matmul(x.bfloat16(), w.bfloat16(), torch.zeros(24)) is None
    wider = decoding_matmul(x.double(), w.double()).float()
    assert (wider - expected).abs().max().item() <= 1e-5
    wide = w.t().contiguous().t()  # the same numbers, column-major
    assert kernels.matmul(x, wide) is None
    assert (decoding_matmul(x, wide, b) - expected).abs().max().item() <= 1e-5
    monkeypatch.setattr(kernels, "library", lambda: None)
    assert kernels.matmul(x, w) is None
    assert (decoding_matmul(x[None], w)[0] - expected).abs().max().item() <= 1e-5


def test_greedy_decoding_gives_the_reference_tokens_and_close_logits(gpt2, prepared):
    prompts = torch.randint(0, 50257, (3, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batch = generate(prepared, prompts, 16, temperature=0.0)
        for row, ids in zip(prompts.tolist(), batch.tolist(), strict=True):
            assert ids == simple_generate(gpt2, row, 16)  # the plain loop, the plain network
        assert torch.equal(generate(prepared, prompts[:1], 16, temperature=0.0), batch[:1])
        hidden = gpt2.hidden_states(prompts)[:, -1]
        fast = prepared.lm_head(hidden)
        plain = gpt2.lm_head(hidden)
        bound = RELATIVE * (hidden.abs() @ gpt2.lm_head.weight.abs().t())
    assert isinstance(prepared.lm_head, DecodingHead) and fast.shape == plain.shape == (3, 50257)
    assert ((fast - plain).abs() <= bound).all()


def classes(model):
    return [(name, type(m)) for name, m in model.named_modules()]


def test_preparing_is_in_place_and_idempotent_and_sampling_changes_no_class():
    model = GPT(GPTConfig.preset("tiny", block_size=16, vocab_size=40))
    keys = list(model.state_dict())
    params = [p.data_ptr() for p in model.parameters()]
    plain = classes(model)
    model.generate(torch.zeros(1, 1, dtype=torch.long), 3)  # sampling sets nothing up
    assert classes(model) == plain
    assert prepare_for_decoding(prepare_for_decoding(model)) is model
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    attentions = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
    assert linears and all(type(m) is DecodingLinear for m in linears)
    assert attentions and all(type(m) is DecodingAttention for m in attentions)
    assert type(model.lm_head) is DecodingHead
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    assert list(model.state_dict()) == keys  # the head's (C, V) copy is not saved
    assert [p.data_ptr() for p in model.parameters()] == params
    fast = classes(model)
    model.generate(torch.zeros(1, 1, dtype=torch.long), 3)
    assert classes(model) == fast


def test_a_prepared_model_trains_exactly_as_before():
    """With autograd on, DecodingLinear is Linear: the same loss and gradients, bitwise."""
    torch.manual_seed(0)
    plain = GPT(GPTConfig.preset("tiny", block_size=16, vocab_size=40, dropout=0.0))
    fast = prepare_for_decoding(GPT(plain.config))
    fast.load_state_dict(plain.state_dict())
    x = torch.randint(0, 40, (1, 8))  # few rows: the fast path would apply without autograd
    for model in (plain, fast):
        model(x, targets=x).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name


def test_the_heads_copy_is_the_table_transposed_and_lives_with_the_model():
    """No cache outside the model: the copy is the head module's own buffer, made once."""
    model = prepare_for_decoding(GPT(GPTConfig.preset("tiny", block_size=16, vocab_size=40)))
    head = model.lm_head
    assert torch.equal(head.weight_t, model.transformer.wte.weight.t())
    assert head.weight_t.is_contiguous()
    hidden = torch.randn(2, model.config.n_embd)
    other = GPT(model.config).state_dict()
    model.load_state_dict(other)  # new weights: a new copy
    with torch.no_grad():
        head(hidden)
    assert torch.equal(head.weight_t, other["transformer.wte.weight"].t())
    with torch.no_grad():
        model.transformer.wte.weight.mul_(2.0)  # an optimizer step changes them in place
        assert torch.allclose(head(hidden), hidden @ model.transformer.wte.weight.t(), atol=1e-6)
    torch.save(model, io.BytesIO())  # a prepared model pickles
    with torch.no_grad():
        assert torch.allclose(head(hidden), hidden @ model.transformer.wte.weight.t(), atol=1e-6)
    # with autograd (training, a gradient through the head) the tied Parameter is read
    hidden.requires_grad_(True)
    head(hidden).sum().backward()
    assert model.transformer.wte.weight.grad is not None


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: attention takes the plain path")
@pytest.mark.parametrize("masked", [False, True])
def test_one_positions_attention_equals_the_plain_one(masked):
    """kernels.decode_attention against CausalSelfAttention's own step (the cache update, then
    scaled_dot_product_attention), padded keys included."""
    import torch.nn.functional as F

    from gptlab.model.gpt import KVCache

    config = GPTConfig.preset("tiny", block_size=24, vocab_size=40)
    B, H, D = 3, config.n_head, config.head_size
    gen = torch.Generator().manual_seed(6)
    before = torch.get_num_threads()
    try:
        for threads, pos in ((1, 0), (2, 7), (3, 23)):
            torch.set_num_threads(threads)
            cache = KVCache(config, B, config.block_size, "cpu", torch.float32)
            for layer_k, layer_v in zip(cache.k, cache.v, strict=True):
                layer_k.normal_(generator=gen)
                layer_v.normal_(generator=gen)
            qkv = torch.randn(B, 1, 3 * H * D, generator=gen)
            mask = torch.rand(B, pos + 1, generator=gen) > 0.3 if masked else None
            if mask is not None:
                mask[:, -1] = True  # a row's own new position is always real
            plain_k, plain_v = cache.k[0].clone(), cache.v[0].clone()
            y = kernels.decode_attention(qkv, cache.k[0], cache.v[0], pos, mask)
            q, k, v = (t.view(B, 1, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=2))
            plain_k[:, :, pos : pos + 1], plain_v[:, :, pos : pos + 1] = k, v
            expected = (
                F.scaled_dot_product_attention(
                    q,
                    plain_k[:, :, : pos + 1],
                    plain_v[:, :, : pos + 1],
                    attn_mask=None if mask is None else mask[:, None, None, :],
                )
                .transpose(1, 2)
                .reshape(B, 1, H * D)
            )
            assert torch.equal(cache.k[0], plain_k) and torch.equal(cache.v[0], plain_v)
            assert (y - expected).abs().max().item() <= 1e-5, (threads, pos)
    finally:
        torch.set_num_threads(before)


def test_attention_the_kernel_cannot_take_goes_the_plain_way():
    """float64, mixed dtypes, a cache that is a view, or a model in training mode (dropout)
    run CausalSelfAttention's own forward."""
    from gptlab.model.gpt import KVCache

    config = GPTConfig.preset("tiny", block_size=8, vocab_size=40)
    cache = KVCache(config, 1, 8, "cpu", torch.float32)
    qkv = torch.randn(1, 1, 3 * config.n_embd)
    assert kernels.decode_attention(qkv.bfloat16(), cache.k[0], cache.v[0], 0) is None
    assert (
        kernels.decode_attention(qkv.double(), cache.k[0].double(), cache.v[0].double(), 0) is None
    )
    assert kernels.decode_attention(qkv, cache.k[0][:, :, ::2], cache.v[0], 0) is None
    assert kernels.decode_attention(qkv, cache.k[0], cache.v[0], 8) is None  # no room
    # shapes that do not fit: the kernel reads raw pointers, so it must never see them
    assert kernels.decode_attention(qkv[:, :, :-1], cache.k[0], cache.v[0], 0) is None
    wrong_mask = torch.ones(1, 2, dtype=torch.bool)  # (B, pos + 1) would be (1, 1)
    assert kernels.decode_attention(qkv, cache.k[0], cache.v[0], 0, wrong_mask) is None
    w = torch.randn(8, 4)
    assert kernels.matmul(torch.randn(2, 7), w) is None
    assert kernels.matmul(torch.randn(2, 8), w, torch.zeros(5)) is None
    assert kernels.decode_attention(qkv, cache.k[0], cache.v[0], -1) is None
    float_mask = torch.zeros(1, 1)  # an additive mask: not the kernel's kind
    assert kernels.decode_attention(qkv, cache.k[0], cache.v[0], 0, float_mask) is None
    if kernels.library() is not None:  # no rows: an empty result, no call into C
        assert kernels.matmul(torch.empty(0, 8), w).shape == (0, 4)
    torch.manual_seed(0)
    plain = GPT(GPTConfig.preset("tiny", block_size=8, vocab_size=40, dropout=0.5))
    fast = prepare_for_decoding(GPT(plain.config))
    fast.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 40, (1, 4))
    outputs = []
    with torch.no_grad():
        for model in (plain, fast):  # training mode: dropout draws, the same on both
            cache = KVCache(model.config, 1, 8, "cpu", torch.float32)
            torch.manual_seed(1)
            model.hidden_states(ids[:, :3], None, cache)
            outputs.append(model.hidden_states(ids[:, 3:], None, cache))
    # equal to the products' rounding; without dropout they would differ at every position
    assert (outputs[0] - outputs[1]).abs().max().item() <= 1e-5


def test_the_default_path_runs_the_kernels_and_a_plain_step_runs_c_attn_once(monkeypatch):
    """With a compiler, sampling goes through the kernels (a silent fallback everywhere would
    pass the equality tests): the prompt's products, then each block's one-position step in
    one call; a step the kernel cannot take (float64) computes c_attn once."""
    if HAS_COMPILER:
        calls = {"matmul": 0, "block_step": 0}
        for name in calls:
            real = getattr(kernels, name)

            def counted(*args, _real=real, _name=name, **kwargs):
                calls[_name] += 1
                return _real(*args, **kwargs)

            monkeypatch.setattr(kernels, name, counted)
        torch.manual_seed(0)
        model = GPT(GPTConfig.preset("tiny", block_size=16, vocab_size=40)).eval()
        generate(prepare_for_decoding(model), torch.randint(0, 40, (2, 4)), 3, temperature=0.0)
        assert calls["matmul"] > 0 and calls["block_step"] == 2 * 2, calls  # 2 layers, 2 steps
    plain = GPT(GPTConfig.preset("tiny", block_size=16, vocab_size=40)).to(torch.float64)
    counts = []
    for model in (prepare_for_decoding(copy.deepcopy(plain)), plain):
        seen = []
        hook = model.transformer.h[0].attn.c_attn.register_forward_hook(
            lambda *_, seen=seen: seen.append(1)
        )
        generate(model.eval(), torch.randint(0, 40, (1, 4)), 3, temperature=0.0)
        hook.remove()
        counts.append(len(seen))
    assert counts[0] == counts[1] == 3  # the prompt, then two one-token steps


def test_padded_prompts_that_end_give_the_reference_tokens(gpt2, prepared):
    """Left padding and rows that finish (eos_id) reach the attention kernel's mask; each row
    is what the plain loop makes of it alone."""
    gen = torch.Generator().manual_seed(7)
    prompts = torch.randint(0, 50257, (3, 10), generator=gen)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[0, :6], mask[1, :2] = False, False  # 4, 8 and 10 real tokens
    rows = [p[m].tolist() for p, m in zip(prompts, mask, strict=True)]
    eos = simple_generate(gpt2, rows[1], 3)[-1]  # a token row 1 produces early: it ends there
    got = generate(prepared, prompts, 8, temperature=0.0, attention_mask=mask, eos_id=eos)
    for row, ids in zip(rows, got, strict=True):
        want = simple_generate(gpt2, row, 8, eos_id=eos)
        new = ids[10:].tolist()
        assert new[: len(want) - len(row)] == want[len(row) :]
        assert all(t == eos for t in new[len(want) - len(row) :])  # after eos: eos
    assert (got[1, 10:] == eos).any()


# ---- bfloat16: the kernel reads bfloat16 weights, sums in float32 and rounds once


def bf16_bound(exact: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """How far a bfloat16 result of a float32 sum may be from the exact value: the sum's
    rounding (as RELATIVE above) plus one rounding to bfloat16 (half a unit in the last
    place: 2^-8 of the value, or of the next power of two down)."""
    return RELATIVE * magnitude + exact.abs() * 2.0**-8 + 1e-30


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: bfloat16 is PyTorch's own")
@pytest.mark.parametrize(
    "rows, shape",
    # one row: its own path (16 weights per load, sums kept shuffled); columns past the last
    # 16, a band of columns past the 8,192 one thread's sums hold at once, rows of w not in 4s
    [
        (1, (768, 2304)),
        (1, (13, 301)),
        (1, (22, 8209)),
        (1, (3, 5)),
        (2, (33, 70)),
        (3, (768, 3072)),
        (16, (3072, 768)),
    ],
)
def test_the_bfloat16_product_is_pytorchs_to_one_rounding(rows, shape):
    gen = torch.Generator().manual_seed(rows * 7 + shape[1])
    w = (torch.randn(shape, generator=gen) * 0.02).bfloat16()
    x = torch.randn(rows, shape[0], generator=gen).bfloat16()
    bias = torch.randn(shape[1], generator=gen).bfloat16()
    exact = torch.addmm(bias.double(), x.double(), w.double())
    magnitude = x.double().abs() @ w.double().abs() + bias.double().abs()
    reference = torch.addmm(bias, x, w)  # PyTorch's own bfloat16 product
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            y = kernels.matmul(x, w, bias)
            assert y.dtype == torch.bfloat16 and y.shape == reference.shape
            assert ((y.double() - exact).abs() <= bf16_bound(exact, magnitude)).all(), threads
            # the same rounding as PyTorch's: different bits only where the float32 sums,
            # taken in another order, fall on either side of a rounding boundary
            assert (y == reference).float().mean().item() >= 0.99, threads
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: attention takes the plain path")
def test_one_positions_attention_in_bfloat16_is_the_float32_one_rounded():
    """kernels.decode_attention over a bfloat16 cache: the key and value stored bit for bit,
    the output the float32 attention of the same bfloat16 numbers, rounded once."""
    import torch.nn.functional as F

    from gptlab.model.gpt import KVCache

    config = GPTConfig.preset("tiny", block_size=24, vocab_size=40)
    B, H, D, pos = 2, config.n_head, config.head_size, 9
    gen = torch.Generator().manual_seed(8)
    cache = KVCache(config, B, config.block_size, "cpu", torch.bfloat16)
    cache.k[0].copy_(torch.randn(cache.k[0].shape, generator=gen))
    cache.v[0].copy_(torch.randn(cache.v[0].shape, generator=gen))
    qkv = torch.randn(B, 1, 3 * H * D, generator=gen).bfloat16()
    mask = torch.rand(B, pos + 1, generator=gen) > 0.3
    mask[:, -1] = True
    y = kernels.decode_attention(qkv, cache.k[0], cache.v[0], pos, mask)
    q, k, v = (t.view(B, 1, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=2))
    assert torch.equal(cache.k[0][:, :, pos : pos + 1], k)
    assert torch.equal(cache.v[0][:, :, pos : pos + 1], v)
    expected = F.scaled_dot_product_attention(
        q.double(),
        cache.k[0][:, :, : pos + 1].double(),
        cache.v[0][:, :, : pos + 1].double(),
        attn_mask=mask[:, None, None, :],
    )
    expected = expected.transpose(1, 2).reshape(B, 1, H * D)
    assert y.dtype == torch.bfloat16
    assert ((y.double() - expected).abs() <= expected.abs() * 2.0**-8 + 1e-5).all()


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: bfloat16 is PyTorch's own")
def test_bfloat16_decoding_gives_pytorchs_bfloat16_tokens_through_the_kernels(monkeypatch):
    """A bfloat16 model set up for decoding picks the tokens PyTorch's bfloat16 network picks,
    every block step and product in the kernels; on a CPU without native bfloat16 the
    prompt's products (more rows than MAX_ROWS) go through the kernel too, KERNEL_ROWS at a
    time (PyTorch's emulated bfloat16 is ~15x slower there), on one with it through PyTorch."""
    calls = {"matmul": [], "block_step": 0}
    real_matmul, real_step = kernels.matmul, kernels.block_step

    def matmul(x, *args):
        calls["matmul"].append(x.numel() // x.size(-1))
        return real_matmul(x, *args)

    def block_step(*args):
        calls["block_step"] += 1
        return real_step(*args)

    monkeypatch.setattr(kernels, "matmul", matmul)
    monkeypatch.setattr(kernels, "block_step", block_step)
    torch.manual_seed(0)
    plain = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=128, block_size=64, vocab_size=500))
    plain = plain.to(torch.bfloat16).eval()
    fast = prepare_for_decoding(copy.deepcopy(plain))
    prompts = torch.randint(0, 500, (2, 40), generator=torch.Generator().manual_seed(3))
    monkeypatch.setenv("GPTLAB_NATIVE_BF16", "0")
    got = generate(fast, prompts, 12, temperature=0.0)
    assert torch.equal(got, generate(plain, prompts, 12, temperature=0.0))
    # the prompt's 80 rows: 64, then 16 (KERNEL_ROWS at a time bounds the kernel's scratch)
    assert sorted(set(calls["matmul"])) == [2, 16, 64] and calls["block_step"] == 2 * 11
    calls["matmul"].clear()
    monkeypatch.setenv("GPTLAB_NATIVE_BF16", "1")
    assert torch.equal(generate(fast, prompts, 12, temperature=0.0), got)
    assert max(calls["matmul"]) == 2  # the prompt went to PyTorch's native bfloat16
    with torch.no_grad():
        hidden = plain.hidden_states(prompts)[:, -1]
        logits, reference = fast.lm_head(hidden).double(), plain.lm_head(hidden).double()
    magnitude = hidden.double().abs() @ plain.lm_head.weight.double().abs().t()
    assert ((logits - reference).abs() <= 2 * bf16_bound(reference, magnitude)).all()


def test_auto_decodes_in_bfloat16_on_a_cpu_only_where_the_kernel_is(monkeypatch, tmp_path):
    """On a CPU with native bfloat16, auto loads bfloat16 for inference only when gptlab's
    kernel is there: PyTorch's bfloat16 decoding is slower than float32 (0.87x measured on an
    AVX512-BF16 EPYC), so without the kernel auto is float32; without native bfloat16 it is
    float32 either way. An explicit dtype is kept."""
    from gptlab.model.load import inference_dtype

    cpu = torch.device("cpu")
    folder = str(tmp_path)  # (no int8 config there: a float model)
    monkeypatch.setenv("GPTLAB_NATIVE_BF16", "1")
    built = kernels.vectorised()
    assert inference_dtype(folder, cpu, "auto", "none") == (
        torch.bfloat16 if built else torch.float32
    )
    monkeypatch.setattr(kernels, "vectorised", lambda: False)  # none built, or plain C only
    assert inference_dtype(folder, cpu, "auto", "none") == torch.float32
    assert inference_dtype(folder, cpu, "bfloat16", "none") == torch.bfloat16
    monkeypatch.undo()
    monkeypatch.setenv("GPTLAB_NATIVE_BF16", "0")
    assert inference_dtype(folder, cpu, "auto", "none") == torch.float32


# ---- GPT-2's GELU through the kernel (every float32 forward and backward on a CPU)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: PyTorch's GELU is the path")
def test_the_gelu_kernel_is_pytorchs_tanh_gelu_to_rounding_forward_and_backward():
    """Against float64: the kernel's error is float32 rounding, as PyTorch's own (measured:
    5e-7 forward, 8e-7 backward over [-100, 100], PyTorch's 4e-7 and 4e-6); far below -10
    both are 0; NaN stays NaN; odd sizes reach the scalar tail; every thread count."""
    import torch.nn.functional as F

    if kernels._vector_library() is None:
        pytest.skip("the kernels were built without AVX2 and FMA: PyTorch's GELU is used")
    gen = torch.Generator().manual_seed(11)
    x = torch.cat(
        [torch.randn(12 * 64 * 512 + 5, generator=gen) * 3, torch.linspace(-100, 100, 20001)]
    )
    grad = torch.randn(x.shape, generator=gen)
    exact = x.double().requires_grad_(True)
    reference = F.gelu(exact, approximate="tanh")
    reference.backward(grad.double())
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            leaf = x.clone().requires_grad_(True)
            y = kernels.gelu_tanh(leaf)
            y.backward(grad)
            assert (y.double() - reference).abs().max().item() <= 1e-6
            assert (leaf.grad.double() - exact.grad).abs().max().item() <= 2e-6
    finally:
        torch.set_num_threads(before)
    odd = torch.tensor([float("nan"), -50.0, 0.0, 2.0])
    got = kernels.gelu_tanh(odd)
    assert got[0].isnan() and got[1] == 0 and got[2] == 0
    assert abs(got[3].item() - F.gelu(torch.tensor(2.0), approximate="tanh").item()) <= 1e-6


def test_the_mlps_gelu_runs_the_kernel_in_float32_on_a_cpu_and_pytorchs_elsewhere(monkeypatch):
    """The network's GELU (model.gpt.TanhGELU): the kernel where it can (float32, a CPU, a
    contiguous input), else PyTorch's F.gelu, the same function."""
    import torch.nn.functional as F

    from gptlab.model.gpt import TanhGELU

    calls = []
    real = kernels.gelu_tanh
    monkeypatch.setattr(kernels, "gelu_tanh", lambda x: calls.append(x.dtype) or real(x))
    gelu = TanhGELU()
    x = torch.randn(4, 6, 40)
    for value in (x, x.bfloat16(), x.transpose(0, 1)):
        want = F.gelu(value, approximate="tanh")
        got = gelu(value)
        assert got.dtype == value.dtype
        assert (got.float() - want.float()).abs().max().item() <= (
            1e-6 if value.dtype is torch.float32 else 1e-2
        )
    assert calls == [torch.float32, torch.bfloat16, torch.float32]
    model = GPT(GPTConfig.preset("tiny", block_size=16, vocab_size=40))
    assert all(type(block.mlp.gelu) is TanhGELU for block in model.transformer.h)
    if HAS_COMPILER and kernels._vector_library() is not None:  # the default path is the kernel
        calls.clear()
        x = torch.randint(0, 40, (2, 8))
        model(x, targets=x).loss.backward()
        assert calls == [torch.float32] * model.config.n_layer


# ---- the block's one-position step in one function (DecodingBlock)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: the block's own forward runs")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_product_adds_the_residual_in_its_pass_as_pytorchs_two_operations_would(dtype):
    """kernels.matmul(x, w, b, add) = (x @ w + b) + add: in float32 to the sum's rounding, in
    bfloat16 with the product rounded before the add, as PyTorch rounds each operation."""
    gen = torch.Generator().manual_seed(12)
    for rows, (k, n) in ((1, (768, 3072)), (3, (96, 77)), (1, (13, 301))):
        x = torch.randn(rows, k, generator=gen).to(dtype)
        w = (torch.randn(k, n, generator=gen) * 0.02).to(dtype)
        b = torch.randn(n, generator=gen).to(dtype)
        add = torch.randn(rows, n, generator=gen).to(dtype)
        got = kernels.matmul(x, w, b, add)
        want = add + torch.addmm(b, x, w)
        if dtype is torch.float32:
            bound = RELATIVE * (x.abs() @ w.abs() + b.abs()) + 1e-6 * add.abs()
            assert ((got - want).abs() <= bound).all()
        else:
            assert (got == want).float().mean().item() >= 0.99
            assert (got.float() - want.float()).abs().max().item() <= 2.0**-7 * want.abs().max()
        assert kernels.matmul(x, w, b, add[:, :-1]) is None  # a residual of another shape


def test_the_block_step_in_one_function_is_blocks_own_and_yields_to_hooks(gpt2, prepared):
    """A prepared block's one-position step (DecodingBlock) gives Block.forward's numbers to
    rounding; with a forward hook on one of its parts it runs Block.forward, so the hook sees
    its call."""
    from gptlab.model.fast import DecodingBlock
    from gptlab.model.gpt import KVCache

    assert all(type(b) is DecodingBlock for b in prepared.transformer.h)
    ids = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(13))
    outs = []
    with torch.no_grad():
        for model in (gpt2, prepared):
            cache = KVCache(model.config, 2, 16, "cpu", torch.float32)
            model.hidden_states(ids[:, :8], None, cache)
            outs.append(model.hidden_states(ids[:, 8:], None, cache))
        assert (outs[0] - outs[1]).abs().max().item() <= 1e-4 * outs[0].abs().max().item()
        seen = []
        block = prepared.transformer.h[3]
        hook = block.mlp.c_fc.register_forward_hook(lambda *_: seen.append(1))
        try:
            cache = KVCache(prepared.config, 2, 16, "cpu", torch.float32)
            prepared.hidden_states(ids[:, :8], None, cache)
            again = prepared.hidden_states(ids[:, 8:], None, cache)
        finally:
            hook.remove()
    assert seen == [1, 1]  # the prompt and the one-position step
    assert (again - outs[1]).abs().max().item() <= 1e-4 * outs[0].abs().max().item()


def test_the_block_step_runs_blocks_own_forward_where_it_would_differ():
    """Masks the attention kernel does not read (broadcast over the batch, additive), dropout
    modules set to train under an eval model (Monte Carlo dropout), a replaced activation:
    the prepared block gives Block.forward's result, never an error or other numbers."""
    from gptlab.model.gpt import KVCache

    torch.manual_seed(0)
    config = GPTConfig.preset("tiny", block_size=16, vocab_size=40, dropout=0.3)
    plain = GPT(config).eval()
    fast = prepare_for_decoding(copy.deepcopy(plain))

    def step(model, mask, seed=0):
        block = model.transformer.h[0]
        cache = KVCache(config, 2, 16, "cpu", torch.float32)
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            block(torch.randn(2, 4, config.n_embd, generator=gen), None, cache, 0)
            cache.length = 4
            torch.manual_seed(seed)
            return block(torch.randn(2, 1, config.n_embd, generator=gen), mask, cache, 0)

    broadcast = torch.ones(1, 1, 1, 5, dtype=torch.bool)
    additive = torch.zeros(2, 1, 1, 5)
    for mask in (None, broadcast, additive):
        assert (step(fast, mask) - step(plain, mask)).abs().max().item() <= 1e-5
    for model in (plain, fast):  # Monte Carlo dropout: the draws are taken, the same on both
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.train()
    assert (step(fast, None) - step(plain, None)).abs().max().item() <= 1e-5
    assert (step(fast, None) - step(fast, None, seed=1)).abs().max().item() > 0
    for model in (plain, fast):
        model.eval()
        model.transformer.h[0].mlp.gelu = torch.nn.ReLU()
    assert (step(fast, None) - step(plain, None)).abs().max().item() <= 1e-5


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: PyTorch's GELU is the path")
def test_the_gelu_kernel_keeps_pytorchs_higher_derivatives_and_compiled_graphs():
    """A double backward (create_graph=True) and forward-mode AD give PyTorch's derivatives
    (the kernel has no graph of its own); torch.compile sees PyTorch's GELU, not a break."""
    import torch.nn.functional as F
    from torch.autograd import forward_ad

    from gptlab.model.gpt import TanhGELU

    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(9))
    grads = []
    for fn in (TanhGELU(), lambda t: F.gelu(t, approximate="tanh")):
        leaf = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(leaf).sum(), leaf, create_graph=True)
        (gg,) = torch.autograd.grad((g * g).sum(), leaf)
        grads.append((g.detach(), gg))
    assert (grads[0][0] - grads[1][0]).abs().max().item() <= 1e-5
    assert (grads[0][1] - grads[1][1]).abs().max().item() <= 1e-5
    tangent = torch.ones_like(x)
    with forward_ad.dual_level():
        out = TanhGELU()(forward_ad.make_dual(x, tangent))
        assert forward_ad.unpack_dual(out).tangent is not None
    from torch import _dynamo

    _dynamo.reset()
    explained = _dynamo.explain(TanhGELU())(x)
    assert explained.graph_break_count == 0
    _dynamo.reset()


def _block_and_step(dtype, bias: bool, rows: int, masked: bool, width: int = 64, heads: int = 4):
    """A Block with random parameters, a cache holding 5 positions, and the inputs of a sixth:
    (block, cache, x (rows, 1, C), mask (rows, 1, 1, 6) or None)."""
    from gptlab.model.gpt import Block, KVCache

    config = GPTConfig(
        n_layer=1, n_head=heads, n_embd=width, block_size=16, vocab_size=40, bias=bias
    )
    torch.manual_seed(0)
    block = Block(config).eval()
    with torch.no_grad():
        for name, p in block.named_parameters():  # LayerNorm weights near 1, the rest near 0
            p.copy_(
                torch.randn_like(p) * 0.2
                + (1.0 if name.startswith("ln_") and "weight" in name else 0.0)
            )
    block = block.to(dtype)
    cache = KVCache(config, rows, 16, "cpu", dtype)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        block(torch.randn(rows, 5, width, generator=gen).to(dtype), None, cache, 0)
    cache.length = 5
    mask = None
    if masked:  # some past positions hidden, differently per row; a row's own always seen
        mask = torch.rand(rows, 1, 1, 6, generator=gen) > 0.3
        mask[..., -1] = True
    return block, cache, torch.randn(rows, 1, width, generator=gen).to(dtype), mask


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: Block.forward is the path")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "bias, rows, masked, width, heads, threads",
    # ... and widths of no whole 8s (36: heads 9 wide, c_attn 108 outputs; 38: heads 19 wide),
    # which leave every product's output and input tails, in 3 threads and 1
    [(True, 1, False, 64, 4, None), (True, 3, True, 64, 4, None), (False, 2, True, 64, 4, None)]
    + [(True, 2, True, 36, 4, 3), (True, 1, False, 38, 2, 1)],
)
def test_a_blocks_step_in_one_call_is_blocks_forward_to_rounding(
    dtype, bias, rows, masked, width, heads, threads
):
    """kernels.block_step (both LayerNorms, the four products with their residuals, attention
    over the cache and the GELU, in one parallel region) gives Block.forward's output and
    stores the same key and value in the cache: to float32 rounding; in bfloat16, as close to
    the exact (float64) block as PyTorch's bfloat16 block is (both round every stage to
    bfloat16, the sums in other orders: values differ by a few bfloat16 steps, the errors not
    in size; measured mean error 1.00-1.06x PyTorch's, largest 0.76-1.2x)."""
    block, cache, x, mask = _block_and_step(dtype, bias, rows, masked, width, heads)
    theirs, exact_cache = copy.deepcopy(cache), copy.deepcopy(cache)
    exact_cache.k = [k.double() for k in exact_cache.k]
    exact_cache.v = [v.double() for v in exact_cache.v]
    with torch.no_grad():
        want = block(x, mask, theirs, 0)
        exact = copy.deepcopy(block).double()(x.double(), mask, exact_cache, 0)
    params = []
    parts = (block.ln_1, block.attn.c_attn, block.attn.c_proj, block.ln_2, block.mlp.c_fc)
    for m in (*parts, block.mlp.c_proj):
        params += (m.weight, m.bias)
    eps = (block.ln_1.eps, block.ln_2.eps)
    flat = None if mask is None else mask[:, 0, 0, :]
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        got = kernels.block_step(x, params, cache.k[0], cache.v[0], 5, flat, eps)
    finally:
        torch.set_num_threads(before)
    assert got is not None and got.dtype is dtype and got.shape == want.shape
    if dtype is torch.float32:
        assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()
        for mine, ref in ((cache.k[0], theirs.k[0]), (cache.v[0], theirs.v[0])):
            assert (mine[:, :, 5] - ref[:, :, 5]).abs().max() <= 1e-5 * ref[:, :, 5].abs().max()
    else:
        pairs = [(got, want, exact)] + [
            (mine[:, :, 5], ref[:, :, 5], right[:, :, 5])
            for mine, ref, right in (
                (cache.k[0], theirs.k[0], exact_cache.k[0]),
                (cache.v[0], theirs.v[0], exact_cache.v[0]),
            )
        ]
        for mine, ref, right in pairs:
            ours, pytorchs = (mine.double() - right).abs(), (ref.double() - right).abs()
            assert ours.mean() <= 1.25 * pytorchs.mean() and ours.max() <= 2 * pytorchs.max()
    assert kernels.block_step(x, params[:-1], cache.k[0], cache.v[0], 5, flat, eps) is None
    assert kernels.block_step(x.double(), params, cache.k[0], cache.v[0], 5, flat, eps) is None


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: Block.forward is the path")
@pytest.mark.parametrize(
    "width, heads, quantised",
    # all four products int8; a width whose int8 rows end in a tail of 4 (36 = 4 x 8 + 4); and
    # a block where only some products are int8 (the others float32, in the same call)
    [(64, 4, "all"), (36, 4, "all"), (36, 4, ("c_attn", "c_fc"))],
)
def test_an_int8_blocks_step_in_one_call_is_the_dequantised_blocks(width, heads, quantised):
    """With int8 products (a model prepared with quantize="int8"), the block's step in one call
    gives, to float32 rounding, the block whose weights are the dequantised int8 ones (in
    float64), and a prepared int8 block takes that call."""
    from gptlab.model.fast import DecodingBlock, DecodingLinear
    from gptlab.model.int8 import Int8Linear

    block, cache, x, mask = _block_and_step(torch.float32, True, 3, True, width, heads)
    exact = copy.deepcopy(block).double()
    exact_cache = copy.deepcopy(cache)
    exact_cache.k = [k.double() for k in exact_cache.k]
    exact_cache.v = [v.double() for v in exact_cache.v]
    for parent, twin in ((block.attn, exact.attn), (block.mlp, exact.mlp)):
        for name, child in list(parent.named_children()):
            if isinstance(child, Linear) and quantised != "all" and name not in quantised:
                child.__class__ = DecodingLinear  # a float32 product, as prepared
            elif isinstance(child, Linear):
                q = Int8Linear.from_linear(child)
                setattr(parent, name, q)
                dequantised = q.weight_int8.double() * q.scale.double()[:, None]
                getattr(twin, name).weight.data = dequantised.t().contiguous()
    block.attn.__class__, block.__class__ = DecodingAttention, DecodingBlock  # as prepared
    calls = []
    real = kernels.block_step
    try:
        kernels.block_step = lambda *a, **k: calls.append(1) or real(*a, **k)
        with torch.no_grad():
            got = block(x, mask, cache, 0)
    finally:
        kernels.block_step = real
    with torch.no_grad():
        want = exact(x.double(), mask, exact_cache, 0)
    assert calls == [1]
    assert (got.double() - want).abs().max().item() <= 1e-5 * want.abs().max().item()


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: Block.forward is the path")
def test_a_block_step_without_layernorm_parameters_normalises_only():
    """LayerNorms without a gain or shift (elementwise_affine=False: None where block_step
    reads them) are plain normalisations in the one-call step, as in Block.forward."""
    block, cache, x, mask = _block_and_step(torch.float32, True, 2, True, 36, 4)
    block.ln_1 = torch.nn.LayerNorm(36, elementwise_affine=False)
    block.ln_2 = torch.nn.LayerNorm(36, eps=1e-3, elementwise_affine=False)
    theirs = copy.deepcopy(cache)
    with torch.no_grad():
        want = block(x, mask, theirs, 0)
    params = [None, None, block.attn.c_attn.weight, block.attn.c_attn.bias]
    params += [block.attn.c_proj.weight, block.attn.c_proj.bias, None, None]
    params += [block.mlp.c_fc.weight, block.mlp.c_fc.bias]
    params += [block.mlp.c_proj.weight, block.mlp.c_proj.bias]
    got = kernels.block_step(x, params, cache.k[0], cache.v[0], 5, mask[:, 0, 0, :], (1e-5, 1e-3))
    assert got is not None
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: Block.forward is the path")
def test_the_one_call_kernels_refuse_what_they_cannot_read_without_raising():
    """Arguments a raw pointer cannot read (a mask not in CPU memory, caches or weights of
    other ranks) make block_step and decode_attention return None, for the caller's PyTorch
    path, instead of raising or reading the wrong memory."""
    block, cache, x, mask = _block_and_step(torch.float32, True, 2, True, 36, 4)
    params = []
    parts = (block.ln_1, block.attn.c_attn, block.attn.c_proj, block.ln_2, block.mlp.c_fc)
    for m in (*parts, block.mlp.c_proj):
        params += (m.weight, m.bias)
    flat, eps = mask[:, 0, 0, :], (1e-5, 1e-5)
    k, v = cache.k[0], cache.v[0]
    assert kernels.block_step(x, params, k, v, 5, flat, eps) is not None  # (as given: taken)
    assert kernels.block_step(x, params, k, v, 5, flat.to("meta"), eps) is None
    assert kernels.block_step(x, params, k[0], v[0], 5, flat, eps) is None  # a 3-D cache
    short = params[:8] + [params[8][0]] + params[9:]  # c_fc's weight 1-D
    assert kernels.block_step(x, short, k, v, 5, flat, eps) is None
    qkv = block.attn.c_attn(block.ln_1(x)).detach()
    assert kernels.decode_attention(qkv, k, v, 5, flat) is not None
    assert kernels.decode_attention(qkv, k, v, 5, flat.to("meta")) is None
    assert kernels.decode_attention(qkv, k[0], v[0], 5, flat) is None


def test_a_model_without_biases_samples_the_plain_models_tokens():
    """bias=False (no bias Parameter at all): the prepared model's prompt and one-position
    steps run and pick the plain model's tokens."""
    torch.manual_seed(0)
    plain = GPT(GPTConfig.preset("tiny", block_size=16, vocab_size=40, bias=False)).eval()
    fast = prepare_for_decoding(copy.deepcopy(plain))
    ids = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(2))
    assert torch.equal(
        generate(fast, ids, 6, temperature=0.0), generate(plain, ids, 6, temperature=0.0)
    )
