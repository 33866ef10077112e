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
