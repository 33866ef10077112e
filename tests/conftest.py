"""Shared fixtures: tiny random models made by the tests themselves (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gptlab import GPT, CharTokenizer, GPTConfig

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY_HF = dict(
    vocab_size=99, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
)


def make_hf_model(seed: int = 0, **overrides):
    """A GPT2LMHeadModel with random weights, biases and LayerNorms made non-trivial so that a
    wrong mapping (a missing transpose, a swapped bias) cannot hide behind zeros and ones."""
    import transformers  # the dev extra requires it: a missing one fails, never skips

    torch.manual_seed(seed)
    config = transformers.GPT2Config(**{**TINY_HF, **overrides})
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def hf_model():
    return make_hf_model()


@pytest.fixture(scope="session")
def hf_folder(hf_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf_gpt2")
    hf_model.save_pretrained(folder)
    return folder


@pytest.fixture
def ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, TINY_HF["vocab_size"], (3, 17), generator=g)


def bf16_emulated() -> bool:
    """True where `auto` means bfloat16 only because GPTLAB_NATIVE_BF16=1 says so: this CPU
    emulates it (15-40x slower), so timings say nothing about a CPU that has it."""
    from gptlab import hardware

    flags = hardware.cpu_flags()
    return (
        hardware.native_bf16_override() is True
        and flags is not None
        and not hardware.cpu_has_native_bf16(flags)
    )


def shared_data(name: str) -> Path:
    """A file from ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared test data lies beside the repository)")
    return path


@pytest.fixture(scope="module")
def serve_folder(tmp_path_factory):
    """A small random character-level model folder (weights and tokenizer) for the web page's
    tests."""
    root = tmp_path_factory.mktemp("serve") / "model"
    tok = CharTokenizer.from_text("To be, or not to be: that is the question.\n")
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=32)
    GPT(config).save_pretrained(root)
    tok.save(root)
    return root


@pytest.fixture(scope="module")
def serve_run(serve_folder, tmp_path_factory):
    """serve_folder as a run that kept snapshots (snapshots=true): other random weights at
    steps 0 and 10, and a metrics row for step 10."""
    import json
    import shutil

    from gptlab.tokenizers import Tokenizer
    from gptlab.train.checkpoint import save_snapshot

    run = tmp_path_factory.mktemp("serve-run") / "run"
    shutil.copytree(serve_folder, run)
    config = GPT.from_pretrained(serve_folder).config
    tok = Tokenizer.from_pretrained(serve_folder)
    for step in (0, 10):
        torch.manual_seed(100 + step)
        save_snapshot(run, step, tok, GPT(config))
    row = {"step": 10, "train_loss": 3.5, "val_loss": 3.25, "lr": 1e-3}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    return run


def pytest_report_header(config):
    """The machine the figures and tolerances of this run come from (and the bf16 switch)."""
    from gptlab import hardware

    return f"machine: {hardware.describe()}"
