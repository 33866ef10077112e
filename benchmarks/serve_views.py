"""How long each view of `gptlab serve`'s page takes to compute on a GPT-2-shaped model (124 M
parameters, random weights, float32, GPT-2's tokenizer) for a 200-token text, as the page asks
for them: the first analysis of a text (every view, one after another, as the server's lock
serialises them), then switching to layer 11, then choosing another position.

    python benchmarks/serve_views.py [--tokens 200] [--repeat 3]

Each figure is the best of --repeat runs of the request, through the app in this process
(Starlette's TestClient: the JSON and base64 included, the browser's drawing not). The first
view of a new text also computes the text's residual stream, which the other views then read
(the server keeps the last two texts'): each repeat of that first view starts without it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _data import print_machine, shared_file


def make_model(folder: Path) -> None:
    import shutil

    import torch

    from gptlab import GPT, GPTConfig

    torch.manual_seed(0)
    GPT(GPTConfig.preset("gpt2")).save_pretrained(folder)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(shared_file("gpt2-tokenizer") / name, folder / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print_machine()
    from starlette.testclient import TestClient

    from gptlab.serve.app import Server, load_lab

    text = (shared_file("tinyshakespeare.txt").read_text()[:4000]).split("\n")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gpt2"
        make_model(folder)
        lab = load_lab(str(folder), device="cpu", dtype="float32")
        prompt, n = "", 0
        for line in text:
            if len(lab.tokenizer.encode(prompt + line + "\n")) > args.tokens:
                break
            prompt += line + "\n"
        n = len(lab.tokenizer.encode(prompt))
        client = TestClient(Server([lab]).app())
        body = {"prompt": prompt}
        L = lab.model.config.n_layer
        first = {
            "tokenize": ("/api/tokenize", body),
            "next": ("/api/next", body),  # the first to compute: the text's stream too
            "attention (big)": ("/api/attention", {**body, "layer": 0, "head": 0}),
            "grid (12 layers)": [
                ("/api/attention", {**body, "layer": i, "thumb": True}) for i in range(L)
            ],
            "steps": ("/api/steps", {**body, "layer": 0, "head": 0}),
            "lens (48 positions)": ("/api/lens", body),
            "heads": ("/api/heads", body),
            "embeddings": ("/api/embeddings", body),
            "residual": ("/api/residual", {**body, "layer": 0}),
            "model": ("/api/model", {}),
        }
        layer11 = {
            "attention (big), layer 11": ("/api/attention", {**body, "layer": 11, "head": 0}),
            "steps, layer 11": ("/api/steps", {**body, "layer": 11, "head": 0}),
        }
        position = {
            "next, position 100": ("/api/next", {**body, "position": 100}),
            "steps, position 100": ("/api/steps", {**body, "layer": 11, "position": 100}),
            "embeddings, token 100": ("/api/embeddings", {**body, "token": 100}),
            "residual, position 100": ("/api/residual", {**body, "layer": 11, "position": 100}),
            "lens, position 100": ("/api/lens", {**body, "position": 100}),
        }

        def timed(requests, fresh: bool) -> float:
            best = float("inf")
            for _ in range(args.repeat):
                if fresh:  # a text the server has not seen: its stream is computed anew
                    getattr(lab, "_streams", {}).clear()
                start = time.perf_counter()
                for path, json in requests if isinstance(requests, list) else [requests]:
                    response = client.post(path, json=json)
                    assert response.status_code == 200, response.text
                best = min(best, time.perf_counter() - start)
            return best

        print(f"a {n}-token text, GPT-2 small's shape (random weights, float32):")
        lab._induction = None
        timed(first["heads"], True)  # the induction scores: once per model (0.1 s here)
        for title, views in (
            ("first analysis", first),
            ("switching to layer 11", layer11),
            ("choosing position 100", position),
        ):
            times = {
                name: timed(req, fresh=title == "first analysis" and name == "next")
                for name, req in views.items()
            }
            print(f"  {title}: {sum(times.values()):.2f} s in all")
            for name, s in times.items():
                print(f"    {name:28s} {s:6.3f} s")


if __name__ == "__main__":
    main()
