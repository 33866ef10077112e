"""BPE training speed: gptlab's `train_bpe` (its default engine, rustbpe where installed, and
the Python trainer) against Hugging Face `tokenizers`' BpeTrainer on the same input, the same
vocabulary size and pre-tokenizer (GPT-2's), in one run; gptlab's two engines must give the
same merges.

    python benchmarks/tokenizer_train.py [--vocab-size 4096] [--megabytes 1] [--repeat 3]

The input is tinyshakespeare.txt, repeated to --megabytes (a larger corpus of the same words:
counting grows with it, the merges do not). The Python trainer runs up to 10 MB only.
"""

from __future__ import annotations

import argparse
import statistics
import time

from gptlab import train_bpe

from _data import print_machine, shared_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--megabytes", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print_machine()

    import tokenizers
    from tokenizers import models, pre_tokenizers, trainers

    one = shared_file("tinyshakespeare.txt").read_text(encoding="utf-8")
    copies = max(1, round(args.megabytes * 1e6 / len(one.encode("utf-8"))))
    texts = [one] * copies  # streamed a text at a time to every trainer

    def theirs():
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=args.vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=["<|endoftext|>"],
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return tok

    runs = {
        "gptlab": lambda: train_bpe(texts, args.vocab_size),
        "tokenizers": theirs,
    }
    if args.megabytes <= 10:
        runs["gptlab python"] = lambda: train_bpe(texts, args.vocab_size, engine="python")
    times: dict[str, list[float]] = {name: [] for name in runs}
    results = {}
    for _ in range(args.repeat):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    if "gptlab python" in results:
        assert results["gptlab"].merges == results["gptlab python"].merges, "engines differ"
    print(
        f"tinyshakespeare.txt x {copies} ({copies * len(one):,} characters), vocabulary "
        f"{args.vocab_size}, median of {args.repeat}; tokenizers {tokenizers.__version__} "
        f"({results['tokenizers'].get_vocab_size()} ids), gptlab "
        f"{results['gptlab'].vocab_size} ids"
    )
    seconds = {name: statistics.median(t) for name, t in times.items()}
    for name, s in seconds.items():
        print(f"  {name:<14} {s:7.2f} s   speed vs tokenizers {seconds['tokenizers'] / s:.2f}x")


if __name__ == "__main__":
    main()
