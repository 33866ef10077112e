"""Greedy decoding speed: gptlab's generate (KV cache) against transformers' generate on the
same random gpt2-preset weights, CPU, a 16-token prompt and 128 new tokens; batch 1 and 8,
float32 and bfloat16. Both must produce the same tokens in float32.

    python benchmarks/generate.py [--new 128] [--repeat 3] [--batches 1 8]
                                  [--dtypes float32 bfloat16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from gptlab import GPT, GPTConfig
from gptlab.generate import generate

from _data import print_machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    print_machine()

    import transformers

    torch.manual_seed(0)
    base = GPT(GPTConfig.preset(args.preset)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp)
        hf_base = transformers.GPT2LMHeadModel.from_pretrained(tmp).eval()
    print(
        f"{args.preset}, prompt {args.prompt}, {args.new} new tokens, greedy, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; median of {args.repeat}"
    )
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        ours, theirs = base.to(dtype), hf_base.to(dtype)
        for batch in args.batches:
            g = torch.Generator().manual_seed(batch)
            idx = torch.randint(0, 50257, (batch, args.prompt), generator=g)

            def run_ours(ours=ours, idx=idx):
                return generate(ours, idx, args.new, temperature=0)

            def run_theirs(theirs=theirs, idx=idx):
                return theirs.generate(
                    idx, attention_mask=torch.ones_like(idx), max_new_tokens=args.new,
                    min_new_tokens=args.new, do_sample=False, pad_token_id=0,
                )  # fmt: skip

            a, b = run_ours(), run_theirs()  # warm-up, and the outputs to compare
            same = torch.equal(a, b)
            times = {"gptlab": [], "transformers": []}
            for _ in range(args.repeat):
                for name, fn in (("gptlab", run_ours), ("transformers", run_theirs)):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            rate = {k: batch * args.new / statistics.median(v) for k, v in times.items()}
            print(
                f"  {dtype_name:<8} batch {batch}: gptlab {rate['gptlab']:7.1f} tok/s, "
                f"transformers {rate['transformers']:7.1f} tok/s, ratio "
                f"{rate['gptlab'] / rate['transformers']:.2f}, same tokens: {same}"
            )


if __name__ == "__main__":
    main()
