"""gptlab's evaluation against lm-evaluation-harness itself, run offline (its Python API, tasks
defined from local JSONL files) on a small model that gptlab trains and saves as a Hugging Face
folder with a BPE vocabulary. Perplexity to 1e-4 relative, identical per-example choices."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from gptlab import GPT, GPTConfig, train_bpe
from gptlab.data.corpus import shakespeare
from gptlab.eval import Example, evaluate_multiple_choice, perplexity
from gptlab.eval.multiple_choice import evaluate_last_word

TASKS = {
    "gptlab_ppl": """
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
    "gptlab_mc": """
output_type: multiple_choice
doc_to_text: "{{query}}"
doc_to_target: "{{gold}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "gptlab_lambada": """
output_type: loglikelihood
doc_to_text: "{{text.split(' ')[:-1]|join(' ')}}"
doc_to_target: "{{' '+text.split(' ')[-1]}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
""",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 2-layer model trained for 150 steps on the built-in Shakespeare, its BPE vocabulary,
    the three tasks' data, and the harness's results on them (one run)."""
    root = tmp_path_factory.mktemp("harness")
    text = "".join(d.text for d in shakespeare()[:3])
    tok = train_bpe([text[:200_000]], 400)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32))
    # a refrain the model learns by heart, so that greedy decoding gets some last words right
    refrain = "the king and the queen went to the tower. " * 300
    ids = torch.tensor(tok.encode(text[:60_000] + refrain))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        starts = torch.randint(0, len(ids) - 65, (16,), generator=g)
        x = torch.stack([ids[s : s + 64] for s in starts])
        y = torch.stack([ids[s + 1 : s + 65] for s in starts])
        opt.zero_grad()
        model(x, targets=y).loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(root / "model")
    tok.save(root / "model")

    held_out = text[300_000:]
    docs = [{"text": held_out[:3000]}, {"text": held_out[5000:5400]}]
    lines = [ln for ln in held_out[10_000:60_000].split("\n") if len(ln.split()) > 5]
    r = random.Random(0)
    mc = [
        {
            "query": " ".join(ln.split(" ")[:3]),
            "choices": [" ".join(x.split(" ")[3:]) for x in [ln, *r.sample(lines, 3)]],
            "gold": i % 4,
        }
        for i, ln in enumerate(lines[:12])
    ]
    for row in mc:  # the gold ending is the true one, moved to position `gold`
        row["choices"].insert(row["gold"], row["choices"].pop(0))
    # last words: lines cut after each word; half the passages kept are ones this weak model
    # gets right greedily (found with gptlab), so that the comparison can tell right from wrong
    words = refrain.split(" ")
    candidates = [" ".join(words[: k + 1]) for k in range(12, 30)]
    candidates += [" ".join(ln.split(" ")[:5]) for ln in lines[12:60]]
    split = [c.rsplit(" ", 1) for c in candidates]
    found = evaluate_last_word(model, tok, [(c, " " + w, 0) for c, w in split])
    right = [c for c, s in zip(candidates, found["scores"], strict=True) if s["greedy"]]
    wrong = [c for c, s in zip(candidates, found["scores"], strict=True) if not s["greedy"]]
    lam = [{"text": t} for pair in zip(right[:10], wrong[:10], strict=False) for t in pair]
    data = {"gptlab_ppl": docs, "gptlab_mc": mc, "gptlab_lambada": lam}
    for name, rows in data.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        (root / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {root / f'{name}.jsonl'}\ntest_split: test\n" + TASKS[name]
        )
    return root, model, tok, data, run_harness(root)


def run_harness(root):
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lm_eval  # in the dev extra: a missing harness fails, never skips
    from lm_eval.tasks import TaskManager

    threads = torch.get_num_threads()
    try:
        return lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={root / 'model'},dtype=float32",
            tasks=list(TASKS),
            task_manager=TaskManager(include_path=str(root)),
            device="cpu",
            batch_size=4,
            log_samples=True,
        )
    finally:
        torch.set_num_threads(threads)  # the harness may change it


def by_doc(results, task):
    return {s["doc_id"]: s for s in results["samples"][task]}


def test_rolling_perplexity_equals_the_harness(setup):
    _, model, tok, data, results = setup
    total = words = nbytes = 0.0
    for doc in data["gptlab_ppl"]:
        ours = perplexity(
            model, tok.encode(doc["text"]), method="lm-eval", prefix_id=tok.eot_id, text=doc["text"]
        )
        total += -ours["nll"] * ours["tokens"]
        words += ours["words"]
        nbytes += ours["bytes"]
    theirs = results["results"]["gptlab_ppl"]
    assert math.exp(-total / words) == pytest.approx(theirs["word_perplexity,none"], rel=1e-4)
    assert math.exp(-total / nbytes) == pytest.approx(theirs["byte_perplexity,none"], rel=1e-4)
    bpb = -total / nbytes / math.log(2)
    assert bpb == pytest.approx(theirs["bits_per_byte,none"], rel=1e-4)


def test_multiple_choice_choices_equal_the_harness(setup):
    _, model, tok, data, results = setup
    examples = [
        Example(row["query"], row["choices"], row["gold"], i)
        for i, row in enumerate(data["gptlab_mc"])
    ]
    ours = evaluate_multiple_choice(model, tok, examples, batch_size=5)
    samples = by_doc(results, "gptlab_mc")
    for i, score in enumerate(ours["scores"]):
        theirs = [float(r[0]) for r in samples[i]["filtered_resps"]]
        assert score["logprob_sum"] == pytest.approx(theirs, rel=1e-4)
        assert samples[i]["acc"] == float(score["choice"]["acc"] == examples[i].label)
        assert samples[i]["acc_norm"] == float(score["choice"]["acc_norm"] == examples[i].label)
    for metric in ("acc", "acc_norm"):
        assert ours[metric] == pytest.approx(results["results"]["gptlab_mc"][f"{metric},none"])


def test_last_word_accuracy_equals_the_harness(setup):
    _, model, tok, data, results = setup
    passages = [(*row["text"].rsplit(" ", 1), i) for i, row in enumerate(data["gptlab_lambada"])]
    passages = [(c, " " + w, i) for c, w, i in passages]
    ours = evaluate_last_word(model, tok, passages, batch_size=3)
    samples = by_doc(results, "gptlab_lambada")
    greedy = [s["greedy"] for s in ours["scores"]]
    assert greedy == [bool(samples[i]["filtered_resps"][0][1]) for i in range(len(passages))]
    assert 0 < sum(greedy) < len(greedy)  # the data tells right from wrong
    lls = [s["logprob_sum"] for s in ours["scores"]]
    assert lls == pytest.approx(
        [float(samples[i]["filtered_resps"][0][0]) for i in range(len(passages))], rel=1e-4
    )
    theirs = results["results"]["gptlab_lambada"]
    assert ours["acc"] == pytest.approx(theirs["acc,none"])
    assert ours["perplexity"] == pytest.approx(theirs["perplexity,none"], rel=1e-4)
