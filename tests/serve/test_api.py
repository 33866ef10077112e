"""The web page's API, in-process (Starlette's TestClient): the numbers it serves are the
model's own, and bad requests get a 4xx with a one-line reason."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch

from gptlab import GPT
from gptlab.cli import main
from gptlab.serve import analysis
from gptlab.serve.analysis import Lab
from gptlab.serve.app import Server, load_lab


@pytest.fixture(scope="module")
def lab(serve_folder) -> Lab:
    return load_lab(str(serve_folder), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def client(lab):
    from starlette.testclient import TestClient

    with TestClient(Server([lab, lab]).app()) as c:
        yield c


def weights(response) -> np.ndarray:
    data = response.json()
    flat = np.frombuffer(base64.b64decode(data["weights_f32"]), dtype="<f4")
    return flat.reshape(data["shape"])


def events(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.text.split("\n\n") if line.startswith("data")]


@pytest.mark.parametrize("prompt", ["To be", "To be, or not to be: that is the question. To"])
def test_generation_streams_what_gptlab_sample_prints(client, serve_folder, capsys, prompt):
    """...also from a prompt longer than the block (32 here): both read its last 32 tokens."""
    settings = {"prompt": prompt, "max_new_tokens": 25, "temperature": 0.9, "top_k": 20, "seed": 7}
    with client.stream("POST", "/api/generate", json=settings) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        response.read()
    got = events(response)
    assert got[-1]["done"] is True and len(got) == 26
    streamed = prompt + "".join(e["text"] for e in got)
    assert (
        main(
            [
                "sample",
                str(serve_folder),
                "--prompt",
                prompt,
                "--max-new-tokens",
                "25",
                "--temperature",
                "0.9",
                "--top-k",
                "20",
                "--seed",
                "7",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == streamed + "\n"


def test_an_int8_page_streams_what_gptlab_sample_int8_prints(serve_folder, capsys):
    """serve --quantize int8 loads the model as sample --quantize int8 does."""
    from starlette.testclient import TestClient

    from gptlab.model.int8 import Int8Linear

    lab = load_lab(str(serve_folder), device="cpu", quantize="int8")
    assert isinstance(lab.model.transformer.h[0].attn.c_proj, Int8Linear)
    settings = {"prompt": "To be", "max_new_tokens": 15, "temperature": 0.9, "seed": 3}
    with TestClient(Server([lab]).app()) as client:
        with client.stream("POST", "/api/generate", json=settings) as response:
            response.read()
        heads = client.post("/api/heads", json={"prompt": "To be, or not"})
        parts = client.post("/api/model", json={}).json()
        info = client.get("/api/info").json()["models"][0]
    assert heads.status_code == 200  # the views work on int8 projections too
    # the float model's parameters, said to be int8 (the int8 tensors are buffers, not
    # parameters: num_params() counts only the embeddings and LayerNorms)
    assert (
        parts["parameters"] == info["parameters"] == GPT.from_pretrained(serve_folder).num_params()
    )
    assert parts["quantized"] == info["quantized"] == "int8"
    assert info["decoding"].startswith("int8 weights, float32 sums")
    streamed = "To be" + "".join(e["text"] for e in events(response))
    assert (
        main(
            [
                "sample",
                str(serve_folder),
                "--prompt",
                "To be",
                "--max-new-tokens",
                "15",
                "--temperature",
                "0.9",
                "--seed",
                "3",
                "--quantize",
                "int8",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == streamed + "\n"


def test_attention_is_the_models_own(client, lab):
    ids = lab.tokenizer.encode("To be, or not")
    want = lab.model.attention_maps(torch.tensor([ids]))
    for layer in range(2):
        got = weights(
            client.post("/api/attention", json={"prompt": "To be, or not", "layer": layer})
        )
        assert got.shape == (4, len(ids), len(ids))
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(got, want[layer][0].numpy(), atol=1e-6)
    one = weights(
        client.post("/api/attention", json={"prompt": "To be, or not", "layer": 1, "head": 2})
    )
    np.testing.assert_allclose(one[0], want[1][0, 2].numpy(), atol=1e-6)


def f32(field: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(field["f32"]), dtype="<f4").reshape(field["shape"])


def test_one_head_step_by_step_is_the_weights_arithmetic(client, lab, serve_folder):
    """/api/steps recomputed from the saved weights alone (safetensors, plain torch): the
    embedding sum, LayerNorm, the head's q/k/v, the scores, the scaling, the mask, the softmax
    and the weighted sum; and the block's attention output is what the network's own forward
    adds to the residual stream."""
    import torch.nn.functional as F
    from safetensors.torch import load_file

    sd = load_file(serve_folder / "model.safetensors")
    prompt, head, position = "To be, or not", 2, 6
    ids = lab.tokenizer.encode(prompt)
    T, C, nh = len(ids), 32, 4
    hs = C // nh
    body = {"prompt": prompt, "layer": 0, "head": head, "position": position}
    got = {k: f32(v) for k, v in client.post("/api/steps", json=body).json()["steps"].items()}

    def w(name):  # the file's name for a tensor (Hugging Face's, with or without "transformer.")
        return next(v for k, v in sd.items() if k.removeprefix("transformer.") == name)

    x = w("wte.weight")[ids] + w("wpe.weight")[:T]
    ln = F.layer_norm(x, (C,), w("h.0.ln_1.weight"), w("h.0.ln_1.bias"), eps=1e-5)
    qkv = ln @ w("h.0.attn.c_attn.weight") + w("h.0.attn.c_attn.bias")  # stored (in, out)
    q, k, v = (qkv[:, i * C + head * hs : i * C + (head + 1) * hs] for i in range(3))
    scores = k @ q[position]
    scaled = scores / hs**0.5
    masked = torch.where(torch.arange(T) <= position, scaled, float("-inf"))
    weights_ = torch.softmax(masked, 0)
    want = {"x": x, "ln_1": ln, "q": q, "k": k, "v": v, "scores": scores, "scaled": scaled}
    want.update(masked=masked, weights=weights_, head_out=weights_ @ v)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value.numpy(), atol=1e-5, err_msg=name)
    assert (
        np.isneginf(got["masked"][position + 1 :]).all()
        and got["weights"][position + 1 :].sum() == 0
    )
    np.testing.assert_allclose(
        got["heads"][head * hs : (head + 1) * hs], got["head_out"], atol=1e-6
    )
    block = lab.model.transformer.h[0]
    with torch.no_grad():
        own = block.attn(block.ln_1(lab.model.embed(torch.tensor([ids]))))[0, position]
    np.testing.assert_allclose(got["attn_out"], own.numpy(), atol=1e-5)


def test_the_model_view_lists_the_state_dicts_tensors(client, lab):
    data = client.post("/api/model", json={}).json()
    sd = lab.model.state_dict()
    assert [t["name"] for t in data["tensors"]] == list(sd)
    assert all(t["shape"] == list(sd[t["name"]].shape) for t in data["tensors"])
    head = next(t for t in data["tensors"] if t["name"] == "lm_head.weight")
    assert head["tied_to"] == "transformer.wte.weight"
    assert (data["n_embd"], data["n_head"], data["head_size"]) == (32, 4, 8)
    assert data["parameters"] == lab.model.num_params() and data["dtype"] == "float32"
    assert data["quantized"] is None


def test_thumbnails_keep_each_blocks_largest_weight(lab):
    maps = torch.rand(3, 100, 100)
    small = analysis.shrink(maps, 48)
    assert small.shape == (3, 48, 48)
    assert torch.equal(small.amax((-1, -2)), maps.amax((-1, -2)))  # no peak lost
    assert torch.equal(analysis.shrink(maps[:, :20, :20], 48), maps[:, :20, :20])


def test_logit_lens_last_layer_is_the_models_prediction(client, lab):
    prompt = "that is the question"
    rows = client.post("/api/lens", json={"prompt": prompt}).json()["rows"]
    assert len(rows) == lab.model.config.n_layer + 1
    with torch.no_grad():
        logits = lab.model(torch.tensor([lab.tokenizer.encode(prompt)])).logits[0]
    probs = torch.softmax(logits, -1)
    assert [c["id"] for c in rows[-1]] == probs.argmax(-1).tolist()
    np.testing.assert_allclose([c["p"] for c in rows[-1]], probs.max(-1).values, atol=1e-5)
    ids = lab.tokenizer.encode(prompt)  # a window of positions: the same numbers
    part = analysis.logit_lens(lab, ids, 3, 7)
    assert [row[3:7] for row in rows] == part


def test_ablating_a_head_is_zeroing_its_slice_of_c_proj(client, lab):
    prompt = "To be, or not to"
    table = client.post("/api/next", json={"prompt": prompt, "ablate": [[1, 2]]}).json()
    ids = torch.tensor([lab.tokenizer.encode(prompt)])
    model = GPT(lab.model.config)
    model.load_state_dict(lab.model.state_dict())
    model.eval()
    hs = model.config.n_embd // model.config.n_head
    with torch.no_grad():  # c_proj computes y @ W (W stored (in, out)): head 2's rows of W
        model.transformer.h[1].attn.c_proj.weight[2 * hs : 3 * hs] = 0
        probs = torch.softmax(model(ids).logits[0, -1], -1)
    top = torch.topk(probs, 10)
    assert [c["id"] for c in table["candidates"]] == top.indices.tolist()
    np.testing.assert_allclose([c["p"] for c in table["candidates"]], top.values, atol=1e-6)
    plain = client.post("/api/next", json={"prompt": prompt}).json()
    assert plain["candidates"] != table["candidates"]  # the head mattered
    again = analysis.next_tokens(lab, ids[0].tolist())  # and the hooks are gone afterwards
    assert [c["p"] for c in again["candidates"]] == [c["p"] for c in plain["candidates"]]
    # beside each candidate, the intact model's p: the before and after the table shows
    with torch.no_grad():
        whole = torch.softmax(lab.model(ids).logits[0, -1], -1)
    got = [c["p_intact"] for c in table["candidates"]]
    np.testing.assert_allclose(got, whole[top.indices].numpy(), atol=1e-6)
    assert "p_intact" not in plain["candidates"][0]


def test_next_table_after_sampling_filters(client):
    table = client.post(
        "/api/next", json={"prompt": "To be", "top_k": 3, "temperature": 0.5}
    ).json()
    sampled = [c["p_sampled"] for c in table["candidates"]]
    assert sum(sampled[:3]) == pytest.approx(1.0, abs=1e-5) and sampled[3:] == [0.0] * 7
    assert table["candidates"][0]["p_sampled"] > table["candidates"][0]["p"]  # sharper


def test_next_table_at_a_tiny_temperature_is_greedy(client):
    """1e-39 made logits / T overflow: NaN in the JSON (a 500) and an empty stream before."""
    table = client.post("/api/next", json={"prompt": "To be", "temperature": 1e-39}).json()
    sampled = [c["p_sampled"] for c in table["candidates"]]
    assert sampled == [1.0] + [0.0] * (len(sampled) - 1)
    body = {"prompt": "To be", "max_new_tokens": 5, "temperature": 1e-39, "seed": 1}
    tiny = client.post("/api/generate", json=body)
    greedy = client.post("/api/generate", json={**body, "temperature": 0})
    assert tiny.status_code == 200 and greedy.text and tiny.text == greedy.text


def test_head_scores(client, lab):
    heads = client.post("/api/heads", json={"prompt": "To be, or not to be"}).json()["heads"]
    assert len(heads) == 2 * 4
    ids = torch.tensor([lab.tokenizer.encode("To be, or not to be")])
    a = lab.model.attention_maps(ids)[0][0, 1]
    row = next(h for h in heads if h["layer"] == 0 and h["head"] == 1)
    assert row["prev"] == pytest.approx(float(a.diagonal(-1).mean()), abs=1e-4)
    assert row["sink"] == pytest.approx(float(a[1:, 0].mean()), abs=1e-4)
    assert 0 <= row["induction"] <= 1 and row["entropy"] >= 0


def test_planted_heads_get_their_scores(lab, monkeypatch):
    """Attention built by hand: head 0 looks at the previous token, head 1 at the first,
    head 2 at the token after the current token's earlier occurrence (on the repeated
    sequence), head 3 evenly at everything before it."""

    def planted(idx):
        T = idx.size(1)
        n = T // 2
        maps = torch.zeros(1, 4, T, T)
        for i in range(T):
            maps[0, 0, i, max(i - 1, 0)] = 1
            maps[0, 1, i, 0] = 1
            maps[0, 2, i, i - n + 1 if i >= n else 0] = 1
            maps[0, 3, i, : i + 1] = 1 / (i + 1)
        return [maps, maps]

    fresh = Lab(lab.model, lab.tokenizer, "planted")  # (a lab keeps its induction scores)
    monkeypatch.setattr(lab.model, "iter_attention_maps", lambda idx: iter(planted(idx)))
    monkeypatch.setattr(fresh, "maps", lambda ids, layer: planted(torch.tensor([ids]))[0][0])
    ids = lab.tokenizer.encode("To be, or not to be")
    rows = {h["head"]: h for h in analysis.head_scores(fresh, ids) if h["layer"] == 0}
    assert rows[0]["prev"] == 1 and rows[1]["sink"] == 1 and rows[2]["induction"] == 1
    assert rows[0]["entropy"] == 0 and rows[3]["entropy"] > 1
    assert rows[3]["induction"] < 0.2 and rows[0]["induction"] == 0


def test_tokenize_info_and_openapi(client):
    tokens = client.post("/api/tokenize", json={"prompt": "To be"}).json()["tokens"]
    assert [t["piece"] for t in tokens] == list("To be")
    info = client.get("/api/info").json()
    assert [m["n_layer"] for m in info["models"]] == [2, 2]
    assert [m["dtype"] for m in info["models"]] == ["float32", "float32"]
    schema = client.get("/openapi.json").json()
    assert {
        "/api/generate",
        "/api/attention",
        "/api/lens",
        "/api/heads",
        "/api/tokenize",
        "/api/info",
        "/api/next",
        "/api/model",
        "/api/steps",
        "/api/embeddings",
        "/api/residual",
        "/api/snapshots",
    } <= schema["paths"].keys()
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "http" not in client.get("/static/app.js").text.split("fetch(")[1][:20]  # no CDN


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/api/generate", {"seed": "x"}, 422, "seed must be an integer"),
        ("/api/next", {"top_p": -(10**400)}, 422, "top_p must be a finite number"),
        (
            "/api/generate",
            {"seed": -1, "max_new_tokens": 2},
            400,
            "seed must be in [0, 2**63), got -1",
        ),
        ("/api/generate", {"seed": 2**64, "max_new_tokens": 2}, 400, "seed must be in [0, 2**63)"),
        ("/api/generate", {"max_new_tokens": 33}, 400, "max_new_tokens must be in [0, 32]"),
        ("/api/generate", {"top_k": -1}, 400, "top_k must be at least 1"),
        ("/api/generate", {"temperature": "hot"}, 422, "temperature must be a number"),
        ("/api/next", {"prompt": "Zebra"}, 400, "'Z' at position 0 is not in the vocabulary"),
        ("/api/next", {"ablate": [[5, 0]]}, 400, "layer must be in [0, 1]"),
        ("/api/next", {"ablate": [1, 2]}, 422, "[layer, head] pairs"),
        ("/api/next", {"position": 99, "prompt": "To"}, 400, "position must be in [0, 1]"),
        ("/api/attention", {"layer": 7}, 400, "layer must be in [0, 1]"),
        ("/api/attention", {"head": 4}, 400, "head must be in [0, 3]"),
        ("/api/steps", {"prompt": "To be", "position": 5}, 400, "position must be in [0, 4]"),
        ("/api/steps", {"prompt": "To be", "head": 9}, 400, "head must be in [0, 3]"),
        ("/api/model", {"model": 2}, 422, "model must be in [0, 1]"),
        ("/api/attention", {"file": "/etc/passwd"}, 422, "unknown field 'file'"),
        ("/api/lens", {"model": 2}, 422, "model must be in [0, 1]"),
        ("/api/heads", {"prompt": ""}, 400, "at least 2 tokens"),
        ("/api/tokenize", [1, 2], 422, "must be a JSON object"),
        ("/api/embeddings", {"token": 999}, 400, "token must be an id in [0, "),
        ("/api/residual", {"layer": 3}, 400, "layer must be in [0, 2] (2: ln_f)"),
        ("/api/residual", {"norm": "ln_3"}, 400, "norm must be ln_1 or ln_2"),
        ("/api/residual", {"step": 3}, 400, "no snapshot at step 3 (saved steps: none)"),
    ],
)
def test_bad_requests_are_4xx_with_one_line(client, path, body, status, message):
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error


def test_generations_beyond_the_limit_get_429(lab):
    from starlette.testclient import TestClient

    server = Server([lab], max_generations=1)
    server.running = 1  # one generation is streaming
    with TestClient(server.app()) as c:
        response = c.post("/api/generate", json={"max_new_tokens": 2})
    assert response.status_code == 429 and "busy" in response.json()["error"]
    server.running = 0
    with TestClient(server.app()) as c:
        assert c.post("/api/generate", json={"max_new_tokens": 2}).status_code == 200
    assert server.running == 0  # released when the stream ended


def test_a_client_that_leaves_stops_its_generation(serve_folder):
    """Over a real socket: read the first token of a slow generation (50 ms per step), hang
    up, and the server stops computing: far fewer than 32 steps are ever made, and the one
    generation slot is free again."""
    import time

    import httpx

    from gptlab.serve.app import Background

    lab = load_lab(str(serve_folder), device="cpu", dtype="float32")
    steps = {"n": 0}
    original = lab.model.hidden_states

    def slow(*args, **kwargs):
        steps["n"] += 1
        time.sleep(0.05)
        return original(*args, **kwargs)

    lab.model.hidden_states = slow
    with Background([lab], max_generations=1) as url:
        body = {"max_new_tokens": 32, "temperature": 1.0}
        with httpx.stream("POST", url + "api/generate", json=body, timeout=30) as response:
            assert next(line for line in response.iter_lines() if line.startswith("data"))
        left = steps["n"]
        time.sleep(1.0)  # time for 20 more steps, were the generation still running
        assert steps["n"] <= left + 2
        assert httpx.post(url + "api/generate", json={"max_new_tokens": 1}).status_code == 200


def test_a_bfloat16_model_is_analysed_in_float32(serve_folder):
    """Issue 23's defect 13: the page says the dtype the model runs in, and its views compute
    in float32 (a bfloat16 row of weights summed to 0.998-1.002), from the same weights."""
    from starlette.testclient import TestClient

    lab = load_lab(str(serve_folder), device="cpu", dtype="bfloat16")
    with TestClient(Server([lab]).app()) as c:
        info = c.get("/api/info").json()["models"][0]
        assert info["dtype"] == "bfloat16" and info["decoding"].startswith("bfloat16 weights")
        assert c.post("/api/model", json={}).json()["dtype"] == "bfloat16"
        maps = weights(c.post("/api/attention", json={"prompt": "To be, or not", "layer": 1}))
        np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-6)
        body = {"prompt": "To be, or not", "layer": 1, "head": 0}
        step = c.post("/api/steps", json=body).json()["steps"]
        assert abs(f32(step["weights"]).sum() - 1.0) < 1e-6
        table = c.post("/api/next", json={"prompt": "To be"}).json()
    assert lab.model.transformer.wte.weight.dtype == torch.bfloat16  # the model itself stays
    want = lab.model.transformer.h[0].attn.c_attn.weight.float()
    assert torch.equal(lab.analysed.transformer.h[0].attn.c_attn.weight, want)
    assert len(table["candidates"]) == 10


def test_views_of_a_text_longer_than_the_block_read_its_last_block_size_tokens(client, lab):
    """Issue 23's defect 2: after a generation past block_size every view failed ("the prompt
    has 164 tokens"); the views now analyse the window the model reads, and say where it
    starts, with positions counted in the whole text."""
    text = "To be, or not to be: that is the question.\n" * 2  # 86 tokens, block_size 32
    ids = lab.tokenizer.encode(text)
    window, offset = ids[-32:], len(ids) - 32
    assert client.post("/api/tokenize", json={"prompt": text}).json()["window_start"] == offset
    got = client.post("/api/attention", json={"prompt": text, "layer": 1})
    assert got.json()["offset"] == offset
    want = lab.model.attention_maps(torch.tensor([window]))[1][0]
    np.testing.assert_allclose(weights(got), want.numpy(), atol=1e-6)
    table = client.post("/api/next", json={"prompt": text, "position": len(ids) - 3}).json()
    alone = analysis.next_tokens(lab, window, position=29)
    assert table["position"] == len(ids) - 3
    assert [c["id"] for c in table["candidates"]] == [c["id"] for c in alone["candidates"]]
    step = client.post("/api/steps", json={"prompt": text, "position": len(ids) - 1}).json()
    assert step["position"] == len(ids) - 1 and len(step["tokens"]) == 32
    lens = client.post("/api/lens", json={"prompt": text}).json()
    assert lens["offset"] == offset and len(lens["rows"][0]) == 32
    early = client.post("/api/next", json={"prompt": text, "position": 3})
    assert early.status_code == 400
    assert f"position must be in [{offset}, {len(ids) - 1}], got 3" in early.json()["error"]


def test_a_text_generated_from_an_empty_prompt_keeps_its_start_token(client, lab):
    """Issue 23's defect 7: the page showed the start token while generating and dropped it
    after the analysis, so every view was about another sequence; with start=true the views
    see the text as the generation did."""
    start = lab.tokenizer.encode("\n")  # a character vocabulary's start: its newline
    tokens = client.post("/api/tokenize", json={"prompt": "To be", "start": True}).json()
    assert [t["id"] for t in tokens["tokens"]] == start + lab.tokenizer.encode("To be")
    got = weights(client.post("/api/attention", json={"prompt": "To be", "start": True}))
    want = lab.model.attention_maps(torch.tensor([start + lab.tokenizer.encode("To be")]))[0]
    np.testing.assert_allclose(got, want[0].numpy(), atol=1e-6)
    empty = client.post("/api/tokenize", json={"prompt": ""}).json()["tokens"]
    assert [t["id"] for t in empty] == start  # an empty prompt is the start token alone


def test_byte_tokens_show_their_bytes_and_continuing_decodes_ids(tmp_path):
    """Issue 23's defect 4: GPT-2-style tokens that are part of a UTF-8 character showed as
    "�" and continuing re-encoded that display text ("我爱北京天安门" became "���..."):
    pieces show their bytes, and /api/decode gives the text of the ids themselves."""
    from starlette.testclient import TestClient

    from gptlab import GPTConfig, train_bpe

    tok = train_bpe(["hello world " * 20], vocab_size=260)  # no merge inside a CJK character
    GPT(
        GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    ).save_pretrained(tmp_path / "m")
    tok.save(tmp_path / "m")
    lab = load_lab(str(tmp_path / "m"), device="cpu", dtype="float32")
    with TestClient(Server([lab]).app()) as c:
        tokens = c.post("/api/tokenize", json={"prompt": "我爱"}).json()["tokens"]
        assert [t["piece"] for t in tokens] == ["‹e6›", "‹88›", "‹91›", "‹e7›", "‹88›", "‹b1›"]
        ids = [t["id"] for t in tokens]
        assert c.post("/api/decode", json={"ids": ids}).json() == {"text": "我爱", "whole": True}
        assert c.post("/api/decode", json={"ids": ids[:4]}).json()["whole"] is False
        bad = c.post("/api/decode", json={"ids": [ids[0], 10**6]})
        assert bad.status_code == 400 and "ids must be token ids" in bad.json()["error"]


def test_the_guide_ships_with_the_page_and_opens_at_a_section(client):
    """Issue 23's defect 12: § links opened the raw English Markdown at its top, and only from
    a source checkout. The guide is package data now (src/gptlab/serve/guide links to docs/),
    served as a page whose numbered sections are anchors, in both languages."""
    from gptlab.serve import app as serve_app

    assert (serve_app.GUIDE / "concepts.md").read_text(encoding="utf-8").startswith("# gptlab")
    page = client.get("/guide/concepts.zh-CN.md")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<h2 id="13">13. GPT-2 small 中的多头自注意力' in page.text
    assert '<h2 id="7">7. Multi-head attention</h2>' in client.get("/guide/concepts.md").text
    assert "&lt;details&gt;" in page.text  # the text as written, escaped
    assert client.get("/guide/../../pyproject.toml").status_code == 404
    assert client.get("/guide/README.md").status_code == 404


def test_embeddings_are_cosine_neighbours_pca_and_position_similarity(client, lab, serve_folder):
    """/api/embeddings recomputed from the saved weights with numpy: a token's nearest rows of
    wte by cosine similarity, the points' coordinates on wte's two principal directions, and
    the cosine similarity of wpe's rows and of the sinusoidal table's."""
    from safetensors.numpy import load_file

    sd = {
        k.removeprefix("transformer."): v
        for k, v in load_file(serve_folder / "model.safetensors").items()
    }
    wte, wpe = sd["wte.weight"].astype(np.float64), sd["wpe.weight"].astype(np.float64)
    token = lab.tokenizer.encode("q")[0]
    data = client.post("/api/embeddings", json={"prompt": "To be", "token": token}).json()
    unit = wte / np.linalg.norm(wte, axis=1, keepdims=True)
    cos = unit @ unit[token]
    cos[token] = -np.inf
    want = np.argsort(-cos)[:10]
    assert [n["id"] for n in data["nearest"]] == want.tolist()
    np.testing.assert_allclose([n["cosine"] for n in data["nearest"]], cos[want], atol=1e-5)
    centred = wte - wte.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(data["pca"]["explained"], (s[:2] ** 2) / (s**2).sum(), atol=1e-5)
    points = data["pca"]["points"]
    xy = centred[[p["id"] for p in points]] @ vt[:2].T
    got = np.array([[p["x"], p["y"]] for p in points])
    np.testing.assert_allclose(np.abs(got), np.abs(xy), atol=1e-4)  # an axis's sign is free
    assert {p["id"] for p in points if p["in_text"]} == set(lab.tokenizer.encode("To be"))
    assert len(points) == lab.model.config.vocab_size  # a small vocabulary: every token
    where = data["positions"]
    rows = wpe[where] / np.linalg.norm(wpe[where], axis=1, keepdims=True)
    np.testing.assert_allclose(f32(data["wpe_similarity"]), rows @ rows.T, atol=1e-5)
    sim = f32(data["sinusoid_similarity"])
    assert sim.shape == (32, 32) and np.allclose(np.diag(sim), 1, atol=1e-5)
    assert sim[0, 1] > sim[0, 31]  # the sinusoids: near positions are alike, far ones less


def test_residual_stream_adds_up_and_layernorm_is_taken_apart(client, lab):
    """Embeddings + every block's attention and MLP add up to the network's own stream; the
    LayerNorm's pieces: mean 0 and variance 1 after normalising, then gain and bias give the
    module's output."""
    import torch.nn.functional as F

    prompt = "To be, or not"
    ids = torch.tensor([lab.tokenizer.encode(prompt)])
    data = client.post("/api/residual", json={"prompt": prompt, "layer": 1, "position": 4}).json()
    with torch.no_grad():
        stream = lab.model.residual_stream(ids)
    norms = f32(data["norms"])
    assert norms.shape == (3, ids.size(1)) and f32(data["attn"]).shape == (2, ids.size(1))
    for layer, x in enumerate(stream):
        np.testing.assert_allclose(norms[layer], x[0].norm(dim=-1).numpy(), rtol=1e-5)
    x = stream[1][0, 4]
    np.testing.assert_allclose(f32(data["x"]), x.numpy(), atol=1e-6)
    normalized = f32(data["normalized"])
    # mean 0, variance 1 but for eps (this small random model's stream has a small variance)
    var, eps = data["var"], data["eps"]
    assert abs(normalized.mean()) < 1e-5
    assert normalized.var() == pytest.approx(var / (var + eps), rel=1e-4)
    ln = lab.model.transformer.h[1].ln_1
    with torch.no_grad():
        want = F.layer_norm(x, (32,), ln.weight, ln.bias, ln.eps).numpy()
    np.testing.assert_allclose(f32(data["out"]), want, atol=1e-5)
    np.testing.assert_allclose(f32(data["layer_norm"]), want, atol=1e-5)
    np.testing.assert_allclose(f32(data["gain"]), ln.weight.detach().numpy())
    assert data["mean"] == pytest.approx(float(x.mean()), abs=1e-6)
    # ln_2 reads the stream after the block's attention; the MLP's output completes the block
    body = {"prompt": prompt, "layer": 1, "position": 4, "norm": "ln_2"}
    two = client.post("/api/residual", json=body).json()
    block = lab.model.transformer.h[1]
    with torch.no_grad():
        mid = x + block.attn(block.ln_1(stream[1]))[0, 4]
        want = F.layer_norm(mid, (32,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
    np.testing.assert_allclose(f32(two["x"]), mid.numpy(), atol=1e-5)
    np.testing.assert_allclose(f32(two["out"]), want.numpy(), atol=1e-5)
    assert f32(two["mlp_hidden"]).shape == (128,)
    np.testing.assert_allclose(f32(two["mlp_out"]) + mid.numpy(), stream[2][0, 4], atol=1e-5)
    ln_f = client.post("/api/residual", json={"prompt": prompt, "layer": 2}).json()
    with torch.no_grad():
        final = lab.model.transformer.ln_f(stream[2][0, -1]).numpy()
    np.testing.assert_allclose(f32(ln_f["out"]), final, atol=1e-5)


def test_a_runs_snapshots_are_views_of_their_own_weights(serve_run):
    """A run folder with snapshots: /api/snapshots lists their steps with the run's losses, and
    a request's `step` computes with that snapshot's weights (attention recomputed from its
    file), generation included; a step never saved is a 400."""
    from starlette.testclient import TestClient

    run = serve_run
    lab = load_lab(str(run), device="cpu", dtype="float32")
    with TestClient(Server([lab]).app()) as client:
        listed = client.post("/api/snapshots", json={}).json()
        assert listed["steps"] == [
            {"step": 0, "train_loss": None, "val_loss": None},
            {"step": 10, "train_loss": 3.5, "val_loss": 3.25},
        ]
        body = {"prompt": "To be", "layer": 1, "head": 2, "step": 10}
        got = weights(client.post("/api/attention", json=body))[0]
        final = weights(client.post("/api/attention", json={**body, "step": None}))[0]
        tok = lab.tokenizer
        ids = torch.tensor([tok.encode("To be")])
        snapshot = GPT.from_pretrained(run / "snapshots" / "step-000010")
        with torch.no_grad():
            x = snapshot.transformer.h[0](snapshot.embed(ids))
            q, k, _ = snapshot.transformer.h[1].attn.heads(snapshot.transformer.h[1].ln_1(x))
            scores = (q[0, 2] @ k[0, 2].T) / 8**0.5
            want = torch.softmax(
                scores.masked_fill(torch.ones(5, 5).triu(1).bool(), -torch.inf), -1
            )
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
        assert not np.allclose(got, final, atol=1e-3)
        generation = {"prompt": "To", "max_new_tokens": 8, "temperature": 0, "step": 0}
        with client.stream("POST", "/api/generate", json=generation) as response:
            response.read()
        greedy = "".join(e.get("text", "") for e in events(response))
        want_ids = snapshot_greedy(run / "snapshots" / "step-000000", tok.encode("To"), 8)
        assert greedy == tok.decode(want_ids)
        missing = client.post("/api/next", json={"step": 5})
        assert missing.status_code == 400 and "saved steps: 0, 10" in missing.json()["error"]


def test_a_snapshot_of_another_model_or_damaged_losses_are_said_not_500(serve_run, tmp_path):
    """A snapshot folder of another shape (copied in by hand) is a 400 naming the difference,
    and a loss that is not a number in metrics.jsonl is null (JSON has no NaN)."""
    import shutil

    from starlette.testclient import TestClient

    from gptlab import GPTConfig
    from gptlab.train.checkpoint import save_snapshot

    run = tmp_path / "run"
    shutil.copytree(serve_run, run)
    tok = load_lab(str(run), device="cpu").tokenizer
    other = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8)
    save_snapshot(run, 20, tok, GPT(other))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 20, "train_loss": NaN, "val_loss": Infinity}\n')
    with TestClient(Server([load_lab(str(run), device="cpu")]).app()) as client:
        wrong = client.post("/api/next", json={"prompt": "To", "step": 20})
        assert wrong.status_code == 400
        assert "is not a snapshot of" in wrong.json()["error"]
        assert "block_size=16" in wrong.json()["error"]
        listed = client.post("/api/snapshots", json={}).json()["steps"]
        assert listed[-1] == {"step": 20, "train_loss": None, "val_loss": None}


def snapshot_greedy(folder, ids, n) -> list[int]:
    """Greedy continuation by the plain network, one full forward per token."""
    model = GPT.from_pretrained(folder).eval()
    out = []
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(x).logits[0, -1].argmax())
            out.append(nxt)
            x = torch.cat([x, torch.tensor([[nxt]])], 1)
    return out
