import json
import struct
import warnings

import pytest

from gptlab import figures
from gptlab.train.metrics import plot_losses


def write_run(folder):
    folder.mkdir()
    rows = [{"step": s, "train_loss": 3.0 - s / 10, "val_loss": 3.1 - s / 10} for s in (1, 2, 3)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_run_named_in_chinese_gets_its_title_drawn_without_a_warning_per_glyph(
    tmp_path, monkeypatch
):
    """The title is the folder's name: with a CJK font installed it is drawn; without one, one
    warning names the characters (matplotlib warned once per glyph at every evaluation)."""
    from matplotlib import font_manager

    run = tmp_path / "莎士比亚"
    write_run(run)
    monkeypatch.setattr(figures, "CJK_FONTS", ())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_losses(run)
    assert [str(w.message) for w in caught] == [
        f"{run / 'loss.png'}: no installed font draws '莎士比亚', shown as boxes (install a "
        "CJK font such as fonts-wqy-microhei or fonts-noto-cjk)"
    ]
    png = (run / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (700, 400)
    monkeypatch.undo()
    installed = {f.name for f in font_manager.fontManager.ttflist}
    if not installed & set(figures.CJK_FONTS):
        pytest.skip("no CJK font installed (apt-get install fonts-wqy-microhei)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_losses(run)
    assert caught == []
