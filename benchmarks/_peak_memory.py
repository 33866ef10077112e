"""`gptlab ...` under torchrun, then this rank's peak memory on one line (fsdp_memory.py)."""

import os
import resource
import sys

import torch

from gptlab.cli import main

code = main(sys.argv[1:])
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
cuda = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if torch.cuda.is_available() else "-"
print(f"peak rank={os.environ.get('RANK', '0')} rss_mb={rss_mb:.0f} cuda_mb={cuda}", flush=True)
sys.exit(code)
