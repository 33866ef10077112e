"""Each demo draws a real PNG of the expected size (tiny training budgets)."""

import struct

import pytest

from gptlab import GPT, CharTokenizer, GPTConfig
from gptlab.attention.demos import DEMOS, DPI, FIGSIZES
from gptlab.cli import main


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def expected(name):
    w, h = FIGSIZES[name]
    return round(w * DPI), round(h * DPI)


@pytest.mark.parametrize("name", ["pooling", "scoring", "multihead", "positional", "bahdanau"])
def test_toolkit_demo_draws_a_png(name, tmp_path):
    path = DEMOS[name](tmp_path, quick=True)
    assert path == tmp_path / f"{name}.png"
    assert png_size(path) == expected(name)
    assert path.stat().st_size > 10_000  # drawn, not blank


def test_gpt2_demo_on_a_run_folder(tmp_path, capsys):
    folder = tmp_path / "model"
    tok = CharTokenizer.from_text("To be, or not to be, that is the question")
    GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size, n_head=4)).save_pretrained(folder)
    tok.save(folder)
    argv = ["attention", "gpt2", "--model", str(folder), "--out", str(tmp_path / "fig"),
            "--prompt", "To be, or not"]  # fmt: skip
    assert main(argv) == 0
    path = tmp_path / "fig" / "gpt2.png"
    assert png_size(path) == expected("gpt2") and path.stat().st_size > 10_000
    assert main(argv + ["--layer", "9"]) == 2
    assert "layer must be in [0, 1]" in capsys.readouterr().err
