import json
import string

import pytest
import torch
import torch.nn.functional as F

from gptlab import GPT, CharTokenizer, GptlabError
from gptlab.eval import evaluate_multiple_choice, read_examples

ROWS = [
    {
        "ctx": "A man is sitting on a roof. he",
        "label": 3,
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
    },
    {
        "ctx_a": "A woman is outside.",
        "ctx_b": "she",
        "label": 0,
        "endings": ["waves.", "is baking a cake in the rain with friends.", "sits."],
    },
]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return path


def test_scores_equal_transformers(tmp_path, data):
    from conftest import make_hf_model

    hf_model = make_hf_model(seed=3, n_positions=128)
    hf_model.save_pretrained(tmp_path / "model")
    model = GPT.from_pretrained(tmp_path / "model")
    tok = CharTokenizer(string.printable[:95])  # 95 ids < the model's 99
    examples = read_examples(data)
    assert examples[1].context == "A woman is outside. she"
    result = evaluate_multiple_choice(model, tok, examples)
    assert result["examples"] == 2
    for ex, scored in zip(examples, result["scores"], strict=True):
        ctx = tok.encode(ex.context)
        for i, ending in enumerate(ex.endings):
            end = tok.encode(" " + ending)
            seq = torch.tensor([ctx + end])
            with torch.no_grad():
                logp = F.log_softmax(hf_model(seq).logits[0].double(), dim=-1)
            direct = sum(logp[len(ctx) + j - 1, t].item() for j, t in enumerate(end))
            assert abs(scored["logprob_sum"][i] - direct) <= 1e-4 * abs(direct)
            assert scored["tokens"][i] == len(end)
    for key in ("acc", "acc_norm_token", "acc_norm"):
        assert result[key] in (0.0, 0.5, 1.0)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"endings": ["a", "b"], "label": 0}, "line 2: missing field 'ctx'"),
        ({"ctx": "x", "label": 0}, "line 2: missing field 'endings'"),
        ({"ctx": "x", "endings": ["a", "b"], "label": 2}, "line 2: label 2 is not an index"),
        ({"ctx": "x", "endings": ["a", "b"]}, "line 2: missing field 'label'"),
    ],
)
def test_malformed_line_is_named(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(GptlabError, match=message):
        read_examples(path)


def test_not_json_and_limit(tmp_path, data):
    assert len(read_examples(data, limit=1)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    with pytest.raises(GptlabError, match="line 1: not valid JSON"):
        read_examples(bad)


def test_batched_scoring_equals_one_at_a_time(tmp_path, data):
    from conftest import make_hf_model

    make_hf_model(seed=3, n_positions=128).save_pretrained(tmp_path / "model")
    model = GPT.from_pretrained(tmp_path / "model")
    tok = CharTokenizer(string.printable[:95])
    examples = read_examples(data) * 3
    one = evaluate_multiple_choice(model, tok, examples, batch_size=1)
    many = evaluate_multiple_choice(model, tok, examples, batch_size=4)
    for a, b in zip(one["scores"], many["scores"], strict=True):
        assert a["choice"] == b["choice"]
        assert a["logprob_sum"] == pytest.approx(b["logprob_sum"], rel=1e-6)


def test_hellaswag_rows_are_cleaned_as_the_harness_does(tmp_path):
    row = {
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "endings": [
            "is using wrap [title] to wrap a pair of skis.",
            "is ripping  level tiles off.",
        ],
        "label": "1",
    }
    path = tmp_path / "hs.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (ex,) = read_examples(path, hellaswag=True)
    assert ex.context == "Roof shingle removal: A man is sitting on a roof. He"
    assert ex.endings == ["is using wrap. to wrap a pair of skis.", "is ripping level tiles off."]
    assert ex.label == 1


def test_an_empty_context_is_scored_after_end_of_text_and_a_long_ending_is_one_line(tmp_path):
    """The harness scores a continuation of "" after the end-of-text token; without one (a
    character vocabulary) that is one line naming the example, as is an ending longer than the
    model's block (both were tracebacks)."""
    from gptlab import GPTConfig, train_bpe

    bpe = train_bpe(["the quick brown fox jumps over the lazy dog " * 20], 280)
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=bpe.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    ).eval()
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"ctx": "", "endings": ["the fox", "a dog"], "label": 0}) + "\n")
    scored = evaluate_multiple_choice(model, bpe, read_examples(path))["scores"][0]
    for ending, total in zip(["the fox", "a dog"], scored["logprob_sum"], strict=True):
        ids = [bpe.eot_id, *bpe.encode(" " + ending)]
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        direct = sum(logp[j, t].item() for j, t in enumerate(ids[1:]))
        assert abs(total - direct) <= 1e-9 * abs(direct)
    chars = CharTokenizer.from_text("the fox a dog")
    small = GPT(
        GPTConfig(vocab_size=chars.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    ).eval()
    where = "mc.jsonl, line 1, ending 0"
    with pytest.raises(GptlabError, match=f"{where}: an empty context .* end-of-text"):
        evaluate_multiple_choice(small, chars, read_examples(path))
    path.write_text(json.dumps({"ctx": "the", "endings": ["fox " * 5, "dog"], "label": 0}) + "\n")
    with pytest.raises(GptlabError, match=f"{where}: the continuation has 21 tokens, .*8"):
        evaluate_multiple_choice(small, chars, read_examples(path))
