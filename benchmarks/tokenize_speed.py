"""Encode speed on tinyshakespeare.txt with GPT-2's vocabulary: gptlab against tiktoken (its own
loader on the same files) and Hugging Face `tokenizers`, measured in one run; all must agree.

    python benchmarks/tokenize_speed.py [--repeat 7]

(Not named tokenize.py: a script's folder comes first on sys.path, and a tokenize.py there
would hide the standard library module of that name, which Python itself imports.)
"""

from __future__ import annotations

import argparse
import statistics
import time

from gptlab import Tokenizer

from _data import print_machine, shared_file


def median_seconds(runs: dict, repeat: int) -> dict[str, float]:
    """Each function once per round, rounds repeated, so that noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print_machine()

    import tiktoken
    import tiktoken.load
    import tiktoken_ext.openai_public
    import tokenizers

    folder = shared_file("gpt2-tokenizer")
    text = shared_file("tinyshakespeare.txt").read_text(encoding="utf-8")
    megabytes = len(text.encode("utf-8")) / 1e6

    ours = Tokenizer.from_pretrained(folder)
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        str(folder / "vocab.bpe"), str(folder / "encoder.json")
    )
    peer = tiktoken.Encoding(
        "gpt2-local",
        pat_str=tiktoken_ext.openai_public.r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )
    hf = tokenizers.Tokenizer(
        tokenizers.models.BPE.from_file(str(folder / "encoder.json"), str(folder / "vocab.bpe"))
    )
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)

    ids = ours.encode(text)
    assert ids == peer.encode_ordinary(text) == hf.encode(text).ids, "the three disagree"

    def python_cold() -> None:  # the teaching encoder, its chunk cache emptied each time
        ours._cache.clear()
        ours.encode_python(text)

    runs = {
        "gptlab": lambda: ours.encode(text),
        "tiktoken": lambda: peer.encode_ordinary(text),
        "tokenizers": lambda: hf.encode(text),
        "gptlab python": python_cold,
    }
    print(
        f"tinyshakespeare.txt, {megabytes:.2f} MB -> {len(ids):,} tokens; median of "
        f"{args.repeat}; tiktoken {tiktoken.__version__}, tokenizers {tokenizers.__version__}"
    )
    rate = {name: megabytes / t for name, t in median_seconds(runs, args.repeat).items()}
    for name, r in rate.items():
        print(f"  {name:<14} {r:7.2f} MB/s")
    print(f"  ratio gptlab / tiktoken   = {rate['gptlab'] / rate['tiktoken']:.3f}")
    print(f"  ratio gptlab / tokenizers = {rate['gptlab'] / rate['tokenizers']:.3f}")


if __name__ == "__main__":
    main()
