"""Forward + backward tokens/s of the gpt2 preset: gptlab against transformers' GPT2LMHeadModel.

Both models hold the same random weights; each step is forward with a loss, backward, and
clearing the gradients. The two alternate step by step so that machine noise hits both alike.

    python benchmarks/forward_backward.py [--batch 4] [--seq 256] [--steps 5] [--preset gpt2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from gptlab import GPT, GPTConfig

from _data import print_machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print_machine()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    torch.manual_seed(0)
    ours = GPT(GPTConfig.preset(args.preset))
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="sdpa")
    ours.train()
    theirs.train()  # dropout is 0 in both (gptlab's config; transformers' config from ours)

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, ours.config.vocab_size, (args.batch, args.seq + 1), generator=g)
    x = ids[:, :-1]
    y = ids[:, 1:].clone()
    y[:, -1] = -100  # transformers' shifted labels score T - 1 positions; so do we here

    def step_ours() -> float:
        loss = ours(x, targets=y).loss
        loss.backward()
        ours.zero_grad(set_to_none=True)
        return loss.item()

    def step_theirs() -> float:
        loss = theirs(input_ids=x, labels=ids[:, :-1]).loss  # labels are shifted inside
        loss.backward()
        theirs.zero_grad(set_to_none=True)
        return loss.item()

    a, b = step_ours(), step_theirs()  # warm-up; also a correctness check
    print(f"loss gptlab {a:.5f}  transformers {b:.5f}  (same weights, should agree)")
    times: dict[str, list[float]] = {"gptlab": [], "transformers": []}
    for _ in range(args.steps):
        for name, step in (("gptlab", step_ours), ("transformers", step_theirs)):
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)

    tokens = args.batch * args.seq
    rate = {name: tokens / statistics.median(t) for name, t in times.items()}
    print(
        f"{args.preset}, batch {args.batch} x {args.seq}, float32, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, transformers {transformers.__version__}"
    )
    for name, r in rate.items():
        print(f"  {name:<13} {r:8.1f} tokens/s  (median of {args.steps} steps)")
    print(f"  ratio gptlab / transformers = {rate['gptlab'] / rate['transformers']:.3f}")


if __name__ == "__main__":
    main()
