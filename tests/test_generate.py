"""Sampling: the engine (KV cache, batches of different lengths, eos, the sliding window)
gives the tokens of the plain loop, `simple_generate`, for the plain network, the network set
up for decoding and int8 weights; greedy equals transformers; seeds, bad options."""

import copy

import pytest
import torch

from gptlab import GPT, GPTConfig, GptlabError
from gptlab.generate import generate, sample_next, simple_generate
from gptlab.model.fast import prepare_for_decoding

CONFIG = GPTConfig(vocab_size=99, block_size=32, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(CONFIG).eval()
    with torch.no_grad():  # sharper distributions than the initialisation gives
        for p in m.parameters():
            p.mul_(3.0)
    return m


@pytest.fixture(scope="module", params=["plain", "decoding", "int8"])
def engine_model(request, model):
    """The model as the engine may get it: plain, set up for decoding (as loaded for
    inference), or with int8 weights (whose own forward is its reference)."""
    if request.param == "plain":
        return model
    quantize = "int8" if request.param == "int8" else None
    return prepare_for_decoding(copy.deepcopy(model), quantize=quantize)


def reference(model, rows, n, eos_id=None):
    """Each prompt alone through the plain loop; after eos, eos (as the engine pads)."""
    out = []
    for row in rows:
        ids = simple_generate(model, row, n, eos_id)
        out.append(ids[len(row) :] + [eos_id] * (n - (len(ids) - len(row))))
    return out


def prompt(n, seed=0):
    return torch.randint(0, 99, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("use_cache", [True, False])
def test_the_engine_gives_the_plain_loops_tokens(engine_model, use_cache):
    """Greedy, batch 1; then a batch of three lengths (left padding), a row that ends at eos,
    and a window that slides past block_size (32): each row as the plain loop makes it alone,
    from the same model."""
    ref = engine_model
    idx = prompt(7)
    out = generate(engine_model, idx, 20, temperature=0, use_cache=use_cache)
    assert out.shape == (1, 27) and torch.equal(out[:, :7], idx)
    assert out[0, 7:].tolist() == reference(ref, [idx[0].tolist()], 20)[0]
    rows = [prompt(n, seed=n)[0].tolist() for n in (1, 5, 17)]
    T = max(map(len, rows))
    idx = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(rows):
        idx[i, T - len(r) :], mask[i, T - len(r) :] = torch.tensor(r), 1
    eos = reference(ref, rows[1:2], 4)[0][-1]  # row 1's fourth new token ends it
    for eos_id in (None, eos):
        batch = generate(
            engine_model,
            idx,
            20,
            temperature=0,
            attention_mask=mask,
            eos_id=eos_id,
            use_cache=use_cache,
        )  # 17 + 20 > 32
        assert batch[:, T:].tolist() == reference(ref, rows, 20, eos_id), eos_id


def test_cache_logits_match_full_forward(model):
    from gptlab.model.gpt import KVCache

    idx = prompt(12)
    full = model(idx).logits
    cache = KVCache(CONFIG, 1, 32, "cpu", torch.float32)
    first = model.lm_head(model.hidden_states(idx[:, :8], cache=cache))
    rest = [
        model.lm_head(model.hidden_states(idx[:, i : i + 1], cache=cache)) for i in range(8, 12)
    ]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, rtol=1e-5, atol=1e-5)


def test_greedy_equals_transformers(model, tmp_path):
    import transformers

    model.save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    for n in (1, 5, 11):
        idx = prompt(n, seed=n)
        ours = generate(model, idx, 15, temperature=0)
        theirs = hf.generate(
            idx,
            attention_mask=torch.ones_like(idx),
            max_new_tokens=15,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
        assert torch.equal(ours, theirs), n


def test_all_rows_done_pads_to_full_length(model):
    idx = prompt(3)
    first = int(generate(model, idx, 1, temperature=0)[0, -1])
    out = generate(model, idx, 8, temperature=0, eos_id=first)
    assert out.shape == (1, 11) and torch.all(out[0, 3:] == first)


def test_a_prompt_past_block_size_is_read_from_its_end(model):
    with pytest.warns(UserWarning, match="reads only the last 32"):
        long = generate(model, prompt(40), 3, temperature=0)
    assert torch.equal(long[0, 40:], generate(model, prompt(40)[:, -32:], 3, temperature=0)[0, 32:])


def test_seeded_sampling_repeats(model):
    idx = prompt(5)
    runs = [
        generate(
            model,
            idx,
            20,
            temperature=1.0,
            top_k=20,
            top_p=0.9,
            generator=torch.Generator().manual_seed(7),
        )
        for _ in range(2)
    ]
    assert torch.equal(*runs)
    other = generate(model, idx, 20, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)


def test_top_k_and_top_p_restrict_the_choice():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, 1.0, top_k=2, generator=g)) for _ in range(200)}
    assert picks == {0, 1}
    # probabilities ~ .64 .23 .09 .03 .01: top_p=0.8 keeps the first two
    picks = {int(sample_next(logits, 1.0, top_p=0.8, generator=g)) for _ in range(200)}
    assert picks == {0, 1}
    assert int(sample_next(logits, 0.0)) == 0
    # a top_p that rounds to 0 in float32 dropped every token (NaN probabilities): the
    # likeliest stays
    assert {int(sample_next(logits, 1.0, top_p=1e-300, generator=g)) for _ in range(20)} == {0}


@pytest.mark.parametrize("temperature", [1e-5, 1e-30, 1e-39, 1e-45, 5e-324])
def test_a_tiny_temperature_is_the_limit_of_greedy(temperature):
    """logits / T overflows (inf - inf: NaN) or T rounds to 0 in float32: the row's argmax
    still comes out, and tied maxima share the draws."""
    logits = torch.tensor([[4.0, 30.0, -2.0, 29.9], [7.0, 1.0, 7.0, float("-inf")]])
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next(logits, temperature, generator=g) for _ in range(60)], 1)
    assert set(draws[0].tolist()) == {1}
    assert set(draws[1].tolist()) == {0, 2}
    assert set(sample_next(logits, temperature, top_k=1, top_p=0.5, generator=g)[0].tolist()) == {1}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1}, "temperature must be >= 0"),
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"max_new_tokens": -1}, "max_new_tokens must be >= 0"),
    ],
)
def test_bad_options(model, kwargs, message):
    args = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(GptlabError, match=message):
        generate(model, prompt(2), **args)


def test_model_generate_method(model):
    assert torch.equal(
        model.generate(prompt(3), 4, temperature=0), generate(model, prompt(3), 4, temperature=0)
    )
