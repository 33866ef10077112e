"""Each demo draws what it says: the numbers behind every panel are checked (rows of attention
weights sum to 1, causal maps are zero above the diagonal, the positional table is the sine /
cosine formula), and the PNG is written at its fixed size with a picture in it."""

import math
import struct

import numpy as np
import pytest
import torch

from gptlab import GPT, CharTokenizer, GPTConfig, figures
from gptlab.attention import demos
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


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures the demos save, kept for inspection: {name: figure}."""
    kept = {}
    save = demos._save

    def keep(fig, out, name):
        kept[name] = fig
        return save(fig, out, name)

    monkeypatch.setattr(demos, "_save", keep)
    return kept


def heatmaps(fig):
    """The arrays of every heatmap panel (NaN where the panel leaves a cell blank)."""
    return [
        np.ma.filled(ax.images[0].get_array().astype(float), np.nan) for ax in fig.axes if ax.images
    ]


def assert_rows_are_distributions(weights):
    w = np.nan_to_num(weights, nan=0.0)
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, atol=1e-5)


def assert_causal(weights):
    assert np.allclose(np.triu(weights, k=1), 0.0), "a query attends to a later key"


def assert_a_picture(path, name):
    import matplotlib.pyplot as plt

    assert png_size(path) == expected(name)
    pixels = plt.imread(path)[..., :3].reshape(-1, 3)
    colours = np.unique((pixels * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50, "the image is (nearly) blank"


def test_pooling_draws_the_regression_and_its_weights(tmp_path, drawn):
    from gptlab.attention.pooling import synthetic_task

    path = DEMOS["pooling"](tmp_path, quick=True)
    assert_a_picture(path, "pooling")
    fig = drawn["pooling"]
    _, _, x_test, truth = synthetic_task()
    line = next(ln for ln in fig.axes[0].lines if ln.get_label() == "truth")
    np.testing.assert_allclose(line.get_ydata(), truth.numpy(), rtol=1e-6)
    plain, learned = heatmaps(fig)
    assert plain.shape == learned.shape == (len(x_test), 50)
    assert_rows_are_distributions(plain)
    assert_rows_are_distributions(learned)
    # a Gaussian kernel puts each query's largest weight on the nearest training x
    assert np.abs(np.diff(plain.argmax(axis=1))).max() <= 3


def test_scoring_masks_the_padded_keys(tmp_path, drawn):
    path = DEMOS["scoring"](tmp_path, quick=True)
    assert_a_picture(path, "scoring")
    additive, dot = heatmaps(drawn["scoring"])
    for weights in (additive, dot):
        assert weights.shape == (4, 10)
        assert np.isnan(weights[:, 6:]).all() and not np.isnan(weights[:, :6]).any()
        assert_rows_are_distributions(weights)
    assert not np.allclose(additive[:, :6], dot[:, :6])  # two scoring functions, two pictures


def test_multihead_heads_are_causal_and_differ(tmp_path, drawn):
    path = DEMOS["multihead"](tmp_path, quick=True)
    assert_a_picture(path, "multihead")
    maps = heatmaps(drawn["multihead"])
    assert len(maps) == 4
    for weights in maps:
        assert weights.shape == (12, 12)
        assert_causal(weights)
        assert_rows_are_distributions(weights)
    assert not np.allclose(maps[0], maps[1])


def test_positional_table_is_the_sine_cosine_formula(tmp_path, drawn):
    path = DEMOS["positional"](tmp_path, quick=True)
    assert_a_picture(path, "positional")
    table, similarity = heatmaps(drawn["positional"])
    assert table.shape == (64, 32)
    pos, i = 5, 3
    angle = pos / 10000 ** (2 * i / 32)
    assert table[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
    assert table[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)
    # the similarity of two positions depends only on how far apart they are
    np.testing.assert_allclose(similarity[10, 13], similarity[40, 43], rtol=1e-5)
    np.testing.assert_allclose(similarity, table @ table.T, rtol=1e-5, atol=1e-5)


def test_bahdanau_alignments_are_distributions_over_the_source(tmp_path, drawn):
    path = DEMOS["bahdanau"](tmp_path, quick=True)
    assert_a_picture(path, "bahdanau")
    fig = drawn["bahdanau"]
    maps = heatmaps(fig)
    assert [m.shape[1] for m in maps] == [4, 3, 2, 4]  # one column per digit of 4072 913 58 1600
    for weights in maps:
        assert_rows_are_distributions(weights)
    assert "held-out exact match" in fig._suptitle.get_text()


def gpt2_argv(folder, out, prompt) -> list[str]:
    """`gptlab attention gpt2` of a model folder on a prompt, drawn into out."""
    return ["attention", "gpt2", "--model", str(folder), "--out", str(out), "--prompt", prompt]


def test_gpt2_demo_on_a_run_folder(tmp_path, capsys, drawn):
    folder = tmp_path / "model"
    tok = CharTokenizer.from_text("To be, or not to be, that is the question")
    model = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size, n_head=4)).eval()
    model.save_pretrained(folder)
    tok.save(folder)
    prompt = "To be, or not"
    argv = [*gpt2_argv(folder, tmp_path / "fig", prompt), "--layer", "1"]
    assert main(argv) == 0
    assert_a_picture(tmp_path / "fig" / "gpt2.png", "gpt2")
    maps = heatmaps(drawn["gpt2"])
    want = model.attention_maps(torch.tensor([tok.encode(prompt)]))[1][0]
    assert len(maps) == 4
    for h, weights in enumerate(maps):
        assert_causal(weights)
        assert_rows_are_distributions(weights)
        np.testing.assert_allclose(weights, want[h].numpy(), rtol=1e-5, atol=1e-6)
    labels = [t.get_text() for t in drawn["gpt2"].axes[0].get_xticklabels()]
    assert labels == list(prompt)
    assert main(argv[:-1] + ["9"]) == 2
    assert "layer must be in [0, 1]" in capsys.readouterr().err


def test_tokens_no_font_draws_are_named_once(tmp_path, capsys, monkeypatch):
    """Token labels fall back to an installed CJK font; where none is installed, one note names
    the characters drawn as boxes instead of matplotlib's warning per glyph."""
    from matplotlib import font_manager

    folder = tmp_path / "model"
    tok = CharTokenizer.from_text("hello 日本語")
    GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size)).save_pretrained(folder)
    tok.save(folder)
    argv = gpt2_argv(folder, tmp_path / "fig", "日本 hello 語")
    monkeypatch.setattr(figures, "CJK_FONTS", ())
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "no installed font draws '日本語'" in err and "fonts-wqy-microhei" in err
    installed = {f.name for f in font_manager.fontManager.ttflist}
    monkeypatch.undo()
    if not installed & set(figures.CJK_FONTS):
        pytest.skip("no CJK font installed (apt-get install fonts-wqy-microhei)")
    assert main(argv) == 0
    assert capsys.readouterr().err == ""


def test_architecture_names_each_steps_shape_from_the_config(tmp_path):
    """The figure's rows come from the config: GPT-2 small's numbers, and another preset's."""
    rows = dict(demos.architecture_steps())
    assert rows["wte (50257, 768) + wpe (1024, 768)"] == "(B, T, 768)"
    assert rows["    attention: c_attn (768, 2304) -> 12 heads"] == "(B, 12, T, 64) each"
    assert rows["head = wte^T (tied) (768, 50257)"] == "(B, T, 50257) logits"
    medium = dict(demos.architecture_steps(GPTConfig.preset("gpt2-medium")))
    assert medium["    attention: c_attn (1024, 3072) -> 16 heads"] == "(B, 16, T, 64) each"
    assert "24 x block:" in medium
    assert_a_picture(DEMOS["architecture"](tmp_path), "architecture")


def test_drawing_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    """A learner's notebook keeps its inline plots: drawing a demo or a run's loss.png neither
    switches matplotlib's backend nor leaves pyplot figures open."""
    import json

    import matplotlib
    import matplotlib.pyplot as plt

    from gptlab.train.metrics import plot_losses

    before = matplotlib.get_backend()
    plt.switch_backend("pdf")  # stands in for a notebook's inline backend
    try:
        open_before = plt.get_fignums()
        DEMOS["positional"](tmp_path / "demo", quick=True)
        run = tmp_path / "run"
        run.mkdir()
        rows = [{"step": s, "train_loss": 3.0 - s / 10, "val_loss": 3.1 - s / 10} for s in (1, 2)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        plot_losses(run)
        assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.get_backend() == "pdf"
        assert plt.get_fignums() == open_before
    finally:
        plt.switch_backend(before)


def test_drawing_leaves_the_callers_random_stream_alone(tmp_path):
    """The demos seed their own weights, and a learner's seeded notebook draws the same
    numbers after a figure as without it."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for name in ("scoring", "multihead", "bahdanau"):
        DEMOS[name](tmp_path, quick=True)
    assert torch.equal(torch.rand(3), expected)
