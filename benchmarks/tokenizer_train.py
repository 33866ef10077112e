"""BPE training speed: gptlab's `train_bpe` against Hugging Face `tokenizers`' BpeTrainer on
the same input (tinyshakespeare.txt), the same vocabulary size and pre-tokenizer, in one run.

    python benchmarks/tokenizer_train.py [--vocab-size 4096] [--repeat 3]
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
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print_machine()

    import tokenizers
    from tokenizers import models, pre_tokenizers, trainers

    text = shared_file("tinyshakespeare.txt").read_text(encoding="utf-8")

    def ours():
        return train_bpe([text], args.vocab_size)

    def theirs():
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=args.vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=["<|endoftext|>"],
            show_progress=False,
        )
        tok.train_from_iterator([text], trainer=trainer)
        return tok

    times: dict[str, list[float]] = {"gptlab": [], "tokenizers": []}
    for _ in range(args.repeat):
        for name, fn in (("gptlab", ours), ("tokenizers", theirs)):
            t0 = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - t0)
    ours_tok, theirs_tok = ours(), theirs()
    print(
        f"tinyshakespeare.txt ({len(text):,} characters), vocabulary {args.vocab_size}, "
        f"median of {args.repeat}; tokenizers {tokenizers.__version__} "
        f"({result.get_vocab_size()} ids)"
    )
    seconds = {name: statistics.median(t) for name, t in times.items()}
    for name, s in seconds.items():
        print(f"  {name:<11} {s:6.2f} s")
    print(f"  ratio gptlab / tokenizers speed = {seconds['tokenizers'] / seconds['gptlab']:.3f}")
    n_ours = len(ours_tok.encode(text))
    n_theirs = len(theirs_tok.encode(text).ids)
    print(f"  tokens for the corpus: gptlab {n_ours:,}, tokenizers {n_theirs:,}")


if __name__ == "__main__":
    main()
