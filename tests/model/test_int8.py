"""Weight-only int8 (gptlab.model.int8): the kernel computes what the dequantised matrix
does, and a quantised model predicts what its float32 original predicts."""

import json
import math
import shutil

import pytest
import torch

from gptlab.config import GPTConfig, TrainConfig
from gptlab.generate import generate
from gptlab.model import GPT
from gptlab.model import int8 as int8_module
from gptlab.model.fast import prepare_for_decoding
from gptlab.model.int8 import Int8Linear, int8_matmul, kernel, quantize


def test_quantize_rounds_each_weight_to_its_rows_grid():
    w = torch.randn(40, 24, generator=torch.Generator().manual_seed(0))
    q, scale = quantize(w)
    assert q.dtype == torch.int8 and q.abs().max() == 127  # each row's largest hits 127
    err = (q.float() * scale[:, None] - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all()


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="no C compiler: the dequantised fallback is tested below",
)
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 17, 64])
@pytest.mark.parametrize("k", [768, 13])  # a K that is not a multiple of 8: the scalar tail
def test_the_kernel_equals_the_dequantised_product(rows, k):
    assert kernel() is not None, "a compiler is here, so the kernel must build"
    for n in (300, 301, 303):  # N % 4 = 0, 1, 3: the last outputs go the plain way
        gen = torch.Generator().manual_seed(rows * n)
        q, scale = quantize(torch.randn(n, k, generator=gen) * 0.02)
        x, bias = torch.randn(rows, k, generator=gen), torch.randn(n, generator=gen)
        reference = x @ (q.float() * scale[:, None]).t()
        for b in (bias, None):
            y = int8_matmul(x, q, scale, b)
            expected = reference + bias if b is not None else reference
            assert (y - expected).abs().max().item() <= 1e-5


def test_the_kernel_never_sees_what_it_cannot_read():
    """A float16 scale or a non-contiguous weight goes the dequantised way (the kernel reads
    float32 scales and row-major int8 through raw pointers)."""
    gen = torch.Generator().manual_seed(5)
    q, scale = quantize(torch.randn(40, 16, generator=gen))
    x = torch.randn(2, 16, generator=gen)
    reference = x @ (q.float() * scale[:, None]).t()
    half = int8_matmul(x, q, scale.half())
    assert (half - reference).abs().max().item() < 1e-2
    wide = torch.zeros(40, 32, dtype=torch.int8)
    wide[:, ::2] = q
    assert (int8_matmul(x, wide[:, ::2], scale) - reference).abs().max().item() <= 1e-5


def test_without_a_kernel_the_fallback_gives_the_same_numbers(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    q, scale = quantize(torch.randn(64, 32, generator=gen))
    x = torch.randn(2, 32, generator=gen)
    with_kernel = int8_matmul(x, q, scale)
    monkeypatch.setattr(int8_module, "kernel", lambda: None)
    assert (int8_matmul(x, q, scale) - with_kernel).abs().max().item() <= 1e-5


def test_int8_linear_replaces_a_linear():
    from gptlab.model.gpt import Linear

    torch.manual_seed(0)
    linear = Linear(32, 48)
    torch.nn.init.normal_(linear.bias)
    x = torch.randn(3, 5, 32)
    with torch.no_grad():
        assert (Int8Linear.from_linear(linear)(x) - linear(x)).abs().max().item() < 0.01


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A character model trained by the test itself on a scene of the built-in Shakespeare,
    and the text that follows it (held out)."""
    from gptlab.data.corpus import shakespeare
    from gptlab.train import train

    root = tmp_path_factory.mktemp("int8")
    text = shakespeare()[0].text
    (root / "t.txt").write_text(text[:60_000])
    config = TrainConfig(
        data=str(root / "t.txt"),
        out=str(root / "run"),
        batch_size=16,
        max_iters=150,
        eval_interval=150,
        eval_iters=1,
        lr=3e-3,
        warmup_iters=20,
        lr_decay_iters=150,
        threads=2,
    )
    train(GPTConfig.preset("tiny", block_size=64, dropout=0.0), config, progress=False)
    return root / "run", text[60_000:62_500]


def quality(model: GPT, ids: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(top-1 prediction at every position, perplexity of the next tokens)."""
    with torch.no_grad():
        out = model(ids[:, :-1], targets=ids[:, 1:])
    return out.logits.argmax(-1), math.exp(out.loss.item())


def test_int8_predicts_what_float32_predicts(trained):
    """>= 99% of held-out positions keep their top-1 token and perplexity rises < 1%, on a
    model trained by this test."""
    from gptlab.tokenizers import Tokenizer

    run, held_out = trained
    ids = torch.tensor(Tokenizer.from_pretrained(run).encode(held_out)[: 16 * 65]).view(16, 65)
    model = GPT.from_pretrained(run).eval()
    top1, ppl = quality(model, ids)
    top1_q, ppl_q = quality(prepare_for_decoding(model, quantize="int8"), ids)
    agree = (top1 == top1_q).float().mean().item()
    assert agree >= 0.99, agree
    assert ppl_q < ppl * 1.01, (ppl, ppl_q)
    assert ppl < 20  # it did learn (a uniform guess over its characters is ~60)


def test_int8_on_the_gpt2_preset_keeps_every_clear_choice_and_generates():
    """Random weights give nearly flat logits (here a median gap of 0.09 between the two
    likeliest tokens, against int8's logit error of up to 0.06), so about 8% of raw top-1
    choices flip: a near-tie, not a quality loss. Every choice with a clear margin (0.2) is
    kept, and the perplexity moves by less than 1%."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("gpt2")).eval()
    ids = torch.randint(0, 50257, (2, 33), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids[:, :-1]).logits
    top2 = logits.topk(2, dim=-1).values
    clear = top2[..., 0] - top2[..., 1] > 0.2
    top1, ppl = quality(model, ids)
    quantized = prepare_for_decoding(model, quantize="int8")
    top1_q, ppl_q = quality(quantized, ids)
    assert clear.sum() >= 10 and torch.equal(top1[clear], top1_q[clear])
    assert abs(ppl_q / ppl - 1) < 0.01
    out = generate(quantized, ids[:, :8], 8, temperature=0.0)
    assert out.shape == (2, 16)
    assert all(
        isinstance(m, Int8Linear)
        for m in (
            quantized.transformer.h[0].attn.c_attn,
            quantized.transformer.h[11].mlp.c_proj,
            quantized.lm_head,
        )
    )


def test_an_int8_folder_loads_back_as_it_was_saved(trained, tmp_path, capsys):
    """gptlab convert --quantize int8: int8 weights and scales on disk, loaded back without
    quantising again (the same tensors, the same logits, bitwise), and sampled like any run."""
    from safetensors.torch import load_file

    from gptlab.cli import main

    run, held_out = trained
    assert main(["convert", str(run), str(tmp_path / "q"), "--quantize", "int8"]) == 0
    on_disk = load_file(tmp_path / "q" / "model.safetensors")
    assert on_disk["transformer.h.0.attn.c_attn.weight_int8"].dtype == torch.int8
    assert on_disk["lm_head.weight_int8"].dtype == torch.int8
    import transformers  # a test dependency (pyproject dev extra): never skipped

    with pytest.raises(ValueError, match="does not recognize this architecture"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "q")  # not misloaded
    expected = prepare_for_decoding(GPT.from_pretrained(run), quantize="int8")
    loaded = GPT.from_pretrained(tmp_path / "q")
    c_fc = loaded.transformer.h[1].mlp.c_fc
    assert isinstance(c_fc, Int8Linear)
    assert torch.equal(c_fc.weight_int8, expected.transformer.h[1].mlp.c_fc.weight_int8)
    ids = torch.randint(0, loaded.config.vocab_size, (2, 20), generator=torch.Generator())
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected(ids).logits)
    capsys.readouterr()
    argv = ["--prompt", "KING", "--max-new-tokens", "30", "--temperature", "0"]
    assert main(["sample", str(tmp_path / "q"), *argv]) == 0
    from_folder = capsys.readouterr().out
    assert main(["sample", str(run), *argv, "--quantize", "int8"]) == 0
    assert capsys.readouterr().out == from_folder


def test_a_damaged_int8_folder_is_one_line(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    from gptlab.cli import main
    from gptlab.errors import GptlabError

    run, _ = trained
    assert main(["convert", str(run), str(tmp_path / "q"), "--quantize", "int8"]) == 0
    path = tmp_path / "q" / "model.safetensors"
    tensors = load_file(path)
    del tensors["lm_head.scale"]
    save_file(tensors, path)
    with pytest.raises(GptlabError, match=r"not a complete int8 checkpoint \(lm_head.scale"):
        GPT.from_pretrained(tmp_path / "q")
    tensors["lm_head.scale"] = torch.zeros(3)
    save_file(tensors, path)
    with pytest.raises(GptlabError, match=r"lm_head.scale is torch.float32 \(3,\), expected"):
        GPT.from_pretrained(tmp_path / "q")


def test_eval_with_int8_weights_scores_within_one_percent(trained, tmp_path, capsys):
    from gptlab.cli import main

    run, held_out = trained
    (tmp_path / "held_out.txt").write_text(held_out)
    argv = [
        "eval",
        "perplexity",
        str(run),
        "--input",
        str(tmp_path / "held_out.txt"),
        "--method",
        "gptlab",
        "--json",
    ]
    capsys.readouterr()
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)["perplexity"]
    assert main(argv + ["--quantize", "int8"]) == 0
    int8 = json.loads(capsys.readouterr().out)["perplexity"]
    assert plain != int8 and abs(int8 / plain - 1) < 0.01


def test_an_unwritable_cache_builds_the_kernels_in_a_temporary_folder(tmp_path, monkeypatch):
    """An unwritable HOME once made --quantize int8 blame a missing compiler: the kernels are
    built in a temporary folder of the user's instead (the build itself is recorded here,
    not run)."""
    from gptlab.model import kernels

    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(kernels, "cache_dir", lambda: tmp_path / "afile" / "cache")  # no mkdir
    monkeypatch.setattr(kernels.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    built = []
    monkeypatch.setattr(kernels, "_build", lambda compiler, path: built.append(path) or True)
    monkeypatch.setenv("CC", "cc")
    kernels.library.cache_clear()
    try:
        kernels.library()  # (the recorded build wrote nothing, so nothing loads)
    finally:
        kernels.library.cache_clear()  # the real kernels again for the tests after this one
    assert len(built) == 1 and built[0].parent.parent == tmp_path / "tmp"
    assert built[0].parent.name.startswith("gptlab-") and built[0].parent.is_dir()
    # in a shared /tmp, a folder others may write to is never used (a planted library)
    built[0].parent.chmod(0o777)
    built.clear()
    kernels.library.cache_clear()
    try:
        assert kernels.library() is None and built == []
    finally:
        kernels.library.cache_clear()
