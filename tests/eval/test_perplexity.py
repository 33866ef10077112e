import math

import pytest
import torch
import torch.nn.functional as F

from gptlab import GPT, GptlabError
from gptlab.eval import perplexity, windows


def direct_with_transformers(hf, ids, L, stride):
    """Score every token t >= 1 once, by the first window (starts 0, stride, ...) whose
    predictions include it, computed with transformers' logits."""
    nll, scored = 0.0, set()
    begin = 0
    while len(scored) < len(ids) - 1:
        end = min(begin + L, len(ids) - 1)
        with torch.no_grad():
            logp = F.log_softmax(hf(torch.tensor([ids[begin:end]])).logits[0].double(), dim=-1)
        for t in range(begin + 1, end + 1):
            if t not in scored:
                scored.add(t)
                nll -= logp[t - 1 - begin, ids[t]].item()
        begin += stride
    return math.exp(nll / len(scored)), len(scored)


@pytest.mark.parametrize("n, stride", [(100, 32), (100, 16), (100, 7), (12, 1)])
def test_equals_transformers_on_the_same_windows(hf_model, hf_folder, n, stride):
    model = GPT.from_pretrained(hf_folder)
    ids = torch.randint(0, 99, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    ours = perplexity(model, ids, stride=stride, batch_size=3)
    theirs, count = direct_with_transformers(hf_model, ids, 32, stride)
    assert ours["tokens"] == count == n - 1
    assert abs(ours["perplexity"] - theirs) / theirs <= 1e-4


def test_windows_score_each_token_once():
    for n, L, stride in [(50, 8, 8), (50, 8, 3), (9, 8, 8), (5, 8, 1), (2, 8, 8)]:
        seen = []
        for w in windows(n, L, stride):
            assert w.end - w.begin <= L
            seen += range(w.first_scored, w.end + 1)
        assert seen == list(range(1, n)), (n, L, stride)


def test_bad_settings():
    with pytest.raises(GptlabError, match=r"stride must be in \[1, block_size=8\], got 9"):
        windows(20, 8, 9)
    with pytest.raises(GptlabError, match="perplexity needs at least 2"):
        windows(1, 8, 8)


def transformers_docs_recipe(hf, ids, max_length, stride):
    """The recipe of transformers' "Perplexity of fixed-length models", as published: labels
    are the window's last (end - previous end) tokens, the model's mean loss is weighted by
    the valid labels less the batch size (the internal shift)."""
    encodings = torch.tensor([ids])
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = hf(input_ids, labels=target_ids).loss
        num_valid_tokens = (target_ids != -100).sum().item()
        num_loss_tokens = num_valid_tokens - target_ids.size(0)
        nll_sum += loss.item() * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return math.exp(nll_sum / n_tokens)


@pytest.mark.parametrize("stride", [1, 7, 16, 32])  # 1, 7, block_size / 2, block_size
def test_hf_guide_equals_the_transformers_docs_recipe(hf_model, hf_folder, stride):
    model = GPT.from_pretrained(hf_folder)
    ids = torch.randint(0, 99, (90,), generator=torch.Generator().manual_seed(stride)).tolist()
    ours = perplexity(model, ids, stride=stride, batch_size=5, method="hf-guide")
    theirs = transformers_docs_recipe(hf_model, ids, 32, stride)
    assert ours["perplexity"] == pytest.approx(theirs, rel=1e-4)


def test_the_three_methods_differ_where_they_should(hf_folder):
    """On a text of several windows the methods score different tokens with different context,
    so their numbers differ; lm-eval scores every token (the first from the prefix)."""
    model = GPT.from_pretrained(hf_folder)
    ids = torch.randint(1, 99, (100,), generator=torch.Generator().manual_seed(0)).tolist()
    lm = perplexity(model, ids, method="lm-eval", prefix_id=0)
    ours = perplexity(model, ids, method="gptlab", stride=8)
    guide = perplexity(model, ids, method="hf-guide", stride=8)
    assert lm["tokens"] == 100 and ours["tokens"] == 99
    assert len({round(r["perplexity"], 6) for r in (lm, ours, guide)}) == 3
    with pytest.raises(GptlabError, match="end-of-text token"):
        perplexity(model, ids, method="lm-eval")
