"""A bounded load test of `gptlab serve` on loopback: N clients ask for generations for T
seconds; prints requests served, 429s, errors, latency to the first token and per token
(p50 / p95), and the server's memory (RSS) before and after.

    python benchmarks/serve_load.py [--clients 16] [--seconds 60] [--model FOLDER]

Without --model, a random model of the main job's shape (shakespeare-char: 4 layers x 128,
block 128, a character vocabulary) is made in a temporary folder. The server runs as its own
process (`gptlab serve`), so its RSS is its own.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from _data import print_machine


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_model(folder: Path) -> None:
    import torch

    from gptlab import GPT, CharTokenizer, GPTConfig

    tok = CharTokenizer.from_text("".join(chr(c) for c in range(32, 127)) + "\n")
    torch.manual_seed(0)
    GPT(GPTConfig.preset("shakespeare-char", vocab_size=tok.vocab_size)).save_pretrained(folder)
    tok.save(folder)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def client(url: str, until: float, tokens: int, stats: dict, lock: threading.Lock) -> None:
    with httpx.Client(timeout=120) as http:
        while time.monotonic() < until:
            body = {"prompt": "ROMEO:\n", "max_new_tokens": tokens, "temperature": 0.8}
            start = time.monotonic()
            try:
                with http.stream("POST", url + "api/generate", json=body) as response:
                    if response.status_code == 429:
                        with lock:
                            stats["busy"] += 1
                        time.sleep(0.05)
                        continue
                    if response.status_code != 200:
                        raise RuntimeError(f"status {response.status_code}")
                    first, last, gaps = None, None, []
                    for line in response.iter_lines():
                        if not line.startswith("data"):
                            continue
                        now = time.monotonic()
                        if first is None:
                            first = now - start
                        elif last is not None:
                            gaps.append(now - last)
                        last = now
            except Exception as e:  # noqa: BLE001 - every failure is counted, none hidden
                with lock:
                    stats["errors"].append(repr(e))
                continue
            with lock:
                stats["served"] += 1
                stats["first"].append(first)
                stats["per_token"].extend(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--tokens", type=int, default=64, help="max_new_tokens per request")
    parser.add_argument("--model", help="a model folder (default: a random one)")
    args = parser.parse_args()
    print_machine()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = str(Path(tmp) / "model")
            make_model(Path(model))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gptlab",
                "serve",
                model,
                "--port",
                str(port),
                "--device",
                "cpu",
                "--dtype",
                "float32",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "2"},
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            for _ in range(600):
                try:
                    httpx.get(url + "api/info", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            httpx.post(url + "api/next", json={"prompt": "ROMEO:"}, timeout=60)  # warm up
            before = rss_mb(server.pid)
            stats = {"served": 0, "busy": 0, "errors": [], "first": [], "per_token": []}
            lock = threading.Lock()
            until = time.monotonic() + args.seconds
            threads = [
                threading.Thread(target=client, args=(url, until, args.tokens, stats, lock))
                for _ in range(args.clients)
            ]
            for t in threads:
                t.start()
            peak = before
            while any(t.is_alive() for t in threads):
                peak = max(peak, rss_mb(server.pid))
                time.sleep(0.5)
            after = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    first, per = stats["first"], stats["per_token"]
    print(
        f"{args.clients} clients for {args.seconds:g} s, {args.tokens} tokens per request, "
        f"server's limit 2 generations at once:"
    )
    print(f"  served {stats['served']}, 429 (busy) {stats['busy']}, errors {len(stats['errors'])}")
    print(
        f"  first token: p50 {percentile(first, 0.5) * 1e3:.0f} ms, "
        f"p95 {percentile(first, 0.95) * 1e3:.0f} ms"
    )
    rate = 1 / statistics.mean(per) if per else float("nan")
    print(
        f"  per token:   p50 {percentile(per, 0.5) * 1e3:.1f} ms, "
        f"p95 {percentile(per, 0.95) * 1e3:.1f} ms ({rate:.0f} tokens/s per stream)"
    )
    print(f"  server RSS: {before:.0f} MB before, {peak:.0f} MB peak, {after:.0f} MB after")
    for e in stats["errors"][:5]:
        print("  error:", e)


if __name__ == "__main__":
    main()
