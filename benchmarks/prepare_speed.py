"""Preparing a big text file with GPT-2's tokenizer: `gptlab prepare` against tiktoken's
`encode_ordinary_batch` (and Hugging Face `tokenizers`' `encode_batch`, where installed) on the
same file, each in its own process, measured in one run: wall time and the peak memory of the
process tree (sampled every 50 ms). All three must give the same tokens.

    python benchmarks/prepare_speed.py [--megabytes 200] [--workers N]

The file is tinyshakespeare.txt repeated to --megabytes (a real text's mix of words). The peers
read the file whole, cut it in 1 MB pieces (after a word: a cut at a newline would split
"\n\n", one token) and encode the pieces with every core, then write the ids as uint16: the
short script people write for this.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _data import print_machine, shared_file

PEER = r"""
import sys, time, numpy as np
kind, text_path, out_path, folder, threads = sys.argv[1:6]
threads = int(threads)
text = open(text_path, encoding="utf-8").read()
pieces, start = [], 0
while start < len(text):  # 1 MB pieces, cut after a word (where no token changes)
    end = min(start + (1 << 20), len(text))
    while end < len(text) and not (text[end - 1].isalpha() and not text[end].isalpha()):
        end += 1
    pieces.append(text[start:end])
    start = end
if kind == "tiktoken":
    import tiktoken, tiktoken.load, tiktoken_ext.openai_public
    load = tiktoken.load.data_gym_to_mergeable_bpe_ranks
    ranks = load(folder + "/vocab.bpe", folder + "/encoder.json")
    enc = tiktoken.Encoding("gpt2-local", pat_str=tiktoken_ext.openai_public.r50k_pat_str,
                            mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})
    batches = enc.encode_ordinary_batch(pieces, num_threads=threads)
else:
    import tokenizers
    bpe = tokenizers.models.BPE.from_file(folder + "/encoder.json", folder + "/vocab.bpe")
    hf = tokenizers.Tokenizer(bpe)
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    batches = [e.ids for e in hf.encode_batch(pieces)]
with open(out_path, "wb") as f:
    for ids in batches:
        f.write(np.asarray(ids, dtype=np.uint16).tobytes())
"""


def tree_rss_mb(pid: int) -> float:
    """The resident memory of a process and all its descendants, in MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo += [int(c) for c in children]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


def measured(cmd: list[str], env: dict) -> tuple[float, float]:
    """(seconds, peak MB of the process tree) of one command."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env)
    peak = 0.0
    while child.poll() is None:
        peak = max(peak, tree_rss_mb(child.pid))
        time.sleep(0.05)
    if child.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return time.perf_counter() - start, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    print_machine()
    import numpy as np

    folder = shared_file("gpt2-tokenizer")
    source = shared_file("tinyshakespeare.txt").read_text(encoding="utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "corpus.txt"
        with open(text, "w", encoding="utf-8") as f:
            for _ in range(args.megabytes * 10**6 // len(source.encode("utf-8")) + 1):
                f.write(source)
        size = text.stat().st_size / 1e6
        print(f"{size:.0f} MB of text, GPT-2's tokenizer, {args.workers} workers / threads:")
        results = {}
        t, m = measured(
            [
                sys.executable,
                "-m",
                "gptlab",
                "prepare",
                "--input",
                str(text),
                "--tokenizer",
                str(folder),
                "--out",
                f"{tmp}/prepared",
                "--workers",
                str(args.workers),
                "--val-fraction",
                "0.0001",
            ],
            env,
        )
        results["gptlab prepare"] = (t, m)
        from gptlab.data import PreparedData

        data = PreparedData(Path(tmp) / "prepared")
        ours = np.concatenate([np.asarray(data.splits["train"]), np.asarray(data.splits["val"])])
        peers = ["tiktoken"]
        try:
            import tokenizers  # noqa: F401

            peers.append("tokenizers")
        except ImportError:
            pass
        for peer in peers:
            out = f"{tmp}/{peer}.bin"
            cmd = [sys.executable, "-c", PEER, peer, str(text), out, str(folder), str(args.workers)]
            results[peer] = measured(cmd, {**env, "RAYON_NUM_THREADS": str(args.workers)})
            theirs = np.fromfile(out, dtype=np.uint16)
            # (gptlab puts the end-of-text id after the one document; the peers do not)
            assert np.array_equal(ours[:-1], theirs), f"{peer} gives other tokens"
    base = results["tiktoken"][0]
    for name, (t, m) in results.items():
        print(
            f"  {name:<16} {t:6.1f} s  {size / t:5.1f} MB/s  peak {m:6.0f} MB  "
            f"speed vs tiktoken {base / t:.2f}x"
        )


if __name__ == "__main__":
    main()
