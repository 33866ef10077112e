"""Sampling: the KV cache changes nothing but speed; batches of different lengths equal their
rows alone; greedy equals transformers; eos, sliding window, seeds, bad options."""

import pytest
import torch

from gptlab import GPT, GPTConfig, GptlabError
from gptlab.generate import generate, sample_next

CONFIG = GPTConfig(vocab_size=99, block_size=32, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(CONFIG).eval()
    with torch.no_grad():  # sharper distributions than the initialisation gives
        for p in m.parameters():
            p.mul_(3.0)
    return m


def prompt(n, seed=0):
    return torch.randint(0, 99, (1, n), generator=torch.Generator().manual_seed(seed))


def test_cache_changes_nothing(model):
    idx = prompt(7)
    with_cache = generate(model, idx, 20, temperature=0)
    without = generate(model, idx, 20, temperature=0, use_cache=False)
    assert with_cache.shape == (1, 27) and torch.equal(with_cache[:, :7], idx)
    assert torch.equal(with_cache, without)


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
            idx, attention_mask=torch.ones_like(idx), max_new_tokens=15, do_sample=False,
            pad_token_id=0, eos_token_id=None,
        )  # fmt: skip
        assert torch.equal(ours, theirs), n


def test_batch_of_different_lengths_equals_each_alone(model):
    rows = [prompt(n, seed=n)[0] for n in (1, 5, 17)]
    T = max(len(r) for r in rows)
    idx = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(rows):
        idx[i, T - len(r) :], mask[i, T - len(r) :] = r, 1
    for use_cache in (True, False):
        batch = generate(model, idx, 12, temperature=0, attention_mask=mask, use_cache=use_cache)
        for i, r in enumerate(rows):
            alone = generate(model, r[None], 12, temperature=0)
            assert torch.equal(batch[i, T:], alone[0, len(r) :]), (i, use_cache)


def test_rows_stop_at_eos_while_others_go_on(model):
    idx = torch.cat([prompt(4, seed=1), prompt(4, seed=2)])
    free = generate(model, idx, 10, temperature=0)
    eos = int(free[0, 6])  # the third new token of row 0 becomes its end
    out = generate(model, idx, 10, temperature=0, eos_id=eos)
    first = (free[0, 4:] == eos).nonzero()[0].item() + 4
    assert torch.all(out[0, first:] == eos)
    assert torch.equal(out[0, : first + 1], free[0, : first + 1])
    stop_1 = (free[1, 4:] == eos).nonzero()
    end = stop_1[0].item() + 4 if len(stop_1) else 14
    assert torch.equal(out[1, :end], free[1, :end])  # row 1 unaffected until its own eos


def test_all_rows_done_pads_to_full_length(model):
    idx = prompt(3)
    first = int(generate(model, idx, 1, temperature=0)[0, -1])
    out = generate(model, idx, 8, temperature=0, eos_id=first)
    assert out.shape == (1, 11) and torch.all(out[0, 3:] == first)


def test_window_slides_past_block_size(model):
    idx = prompt(30)
    out = generate(model, idx, 10, temperature=0)  # 40 > block_size 32
    assert out.shape == (1, 40)
    assert torch.equal(out, generate(model, idx, 10, temperature=0, use_cache=False))
    with pytest.warns(UserWarning, match="reads only the last 32"):
        long = generate(model, prompt(40), 3, temperature=0)
    assert torch.equal(long[0, 40:], generate(model, prompt(40)[:, -32:], 3, temperature=0)[0, 32:])


def test_seeded_sampling_repeats(model):
    idx = prompt(5)
    runs = [
        generate(model, idx, 20, temperature=1.0, top_k=20, top_p=0.9,
                 generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]  # fmt: skip
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
