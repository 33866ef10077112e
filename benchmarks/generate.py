"""Greedy decoding speed against the memory-bandwidth bound: transformers (float32), gptlab
float32 and gptlab int8 (weight-only) on the same random gpt2-preset weights, CPU, a 16-token
prompt and 128 new tokens, batch 1 and 8.

A decoding step reads every weight once, so tokens/s cannot beat (read bandwidth) / (bytes of
weights per step); the bandwidth is measured in the same run (summing a 1 GiB tensor), and
each figure is printed as a fraction of its bound. gptlab float32 and transformers must
produce the same tokens (asserted); int8 prints how many of its tokens agree with float32.

gptlab bfloat16 (--bfloat16) decodes with bfloat16 weights widened to float32 in gptlab's kernel
(what `gptlab sample` runs under dtype=auto on a CPU with native bfloat16); its tokens are
checked against PyTorch's own bfloat16 network on the first prompt.

    python benchmarks/generate.py [--new 128] [--repeat 3] [--batches 1 8] [--bfloat16]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

from gptlab import GPT, GPTConfig
from gptlab.generate import generate
from gptlab.model import kernels
from gptlab.model.fast import prepare_for_decoding

from _data import print_machine


def read_bandwidth(gib: float = 1.0, repeat: int = 5) -> float:
    """Bytes/s of reading a large float32 tensor once (a sum, every thread), best of repeat."""
    x = torch.ones(int(gib * 2**30) // 4)
    x.sum()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best


def weight_bytes(model: GPT, int8: bool) -> int:
    """Bytes of weights one decoding step reads: every block matrix and the head (the
    embedding lookup reads one row; biases, LayerNorms and scales are counted too)."""
    total = 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name.startswith(("transformer.wte", "transformer.wpe")):
            continue
        total += t.numel() * t.element_size()
    # float32: the head is the tied embedding table (skipped above), read whole per step;
    # int8: the head is its own Int8Linear, already counted among the buffers
    return total if int8 else total + 4 * model.config.vocab_size * model.config.n_embd


def median_rate(fn, tokens: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return tokens / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--bfloat16", action="store_true", help="also gptlab in bfloat16")
    args = parser.parse_args()
    print_machine()
    import transformers

    torch.manual_seed(0)
    base = GPT(GPTConfig.preset(args.preset)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp)
        hf = transformers.GPT2LMHeadModel.from_pretrained(tmp).eval()
    # each set up for decoding as the inference loader does (gptlab.model.load)
    int8 = prepare_for_decoding(copy.deepcopy(base), quantize="int8")
    models = {"gptlab float32": prepare_for_decoding(copy.deepcopy(base)), "gptlab int8": int8}
    if args.bfloat16:
        models["gptlab bfloat16"] = prepare_for_decoding(copy.deepcopy(base).to(torch.bfloat16))
    bandwidth = read_bandwidth()
    sizes = {
        "gptlab float32": weight_bytes(base, False),
        "gptlab int8": weight_bytes(int8, True),
        "gptlab bfloat16": weight_bytes(base, False) // 2,
    }
    sizes["transformers float32"] = sizes["gptlab float32"]
    print(
        f"{args.preset}, prompt {args.prompt}, {args.new} new tokens, greedy, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, transformers "
        f"{transformers.__version__}; median of {args.repeat}"
    )
    print(
        f"read bandwidth {bandwidth / 1e9:.1f} GB/s; weights read per step: float32 "
        f"{sizes['gptlab float32'] / 1e6:.0f} MB, int8 {sizes['gptlab int8'] / 1e6:.0f} MB; "
        f"kernels: {kernels.describe()}"
    )
    for batch in args.batches:
        idx = torch.randint(
            0, 50257, (batch, args.prompt), generator=torch.Generator().manual_seed(batch)
        )
        runs = {
            name: (lambda m=m, idx=idx: generate(m, idx, args.new, temperature=0))
            for name, m in models.items()
        }
        runs["transformers float32"] = lambda idx=idx: hf.generate(
            idx,
            attention_mask=torch.ones_like(idx),
            max_new_tokens=args.new,
            min_new_tokens=args.new,
            do_sample=False,
            pad_token_id=0,
        )
        out = {name: fn() for name, fn in runs.items()}  # warm-up, and the tokens
        assert torch.equal(out["gptlab float32"], out["transformers float32"]), (
            "gptlab float32 and transformers chose different tokens"
        )
        new = slice(args.prompt, None)
        agree = (out["gptlab int8"][:, new] == out["gptlab float32"][:, new]).float().mean()
        if "gptlab bfloat16" in out and batch == args.batches[0]:  # (PyTorch's is slow: once)
            plain = copy.deepcopy(base).to(torch.bfloat16)
            same = torch.equal(
                generate(plain, idx[:1], 16, temperature=0),
                out["gptlab bfloat16"][:1, : args.prompt + 16],
            )
            print(
                f"bfloat16: the first 16 tokens {'equal' if same else 'DIFFER from'} "
                "PyTorch's bfloat16 network's"
            )
        rates = {name: median_rate(fn, batch * args.new, args.repeat) for name, fn in runs.items()}
        print(
            f"batch {batch} (float32 tokens equal to transformers'; int8 agrees on "
            f"{100 * agree:.0f}% of its tokens):"
        )
        for name in ("transformers float32", *models):
            bound = bandwidth / sizes[name] * batch
            vs_hf = rates[name] / rates["transformers float32"]
            vs_fp32 = rates[name] / rates["gptlab float32"]
            print(
                f"  {name:<22} {rates[name]:7.1f} tok/s  x{vs_hf:.2f} transformers  "
                f"x{vs_fp32:.2f} gptlab float32  {100 * rates[name] / bound:3.0f}% of its "
                f"bound ({bound:.0f})"
            )


if __name__ == "__main__":
    main()
