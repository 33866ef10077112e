"""`gptlab ARGS` where rank 1's training loss turns NaN from its third forward pass on (run by
tests/train/test_distributed.py under torchrun)."""

import os
import sys

from gptlab import GPT
from gptlab.cli import main

original = GPT.forward
calls = {"n": 0}


def forward(self, idx, targets=None, attention_mask=None, cache=None):
    out = original(self, idx, targets, attention_mask, cache)
    if self.training and os.environ.get("RANK") == "1":
        calls["n"] += 1
        if calls["n"] >= 3:
            out.loss = out.loss * float("nan")
    return out


GPT.forward = forward
sys.exit(main(sys.argv[1:]))
