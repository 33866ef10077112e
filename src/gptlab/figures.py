"""Figures drawn without pyplot, and the fonts their labels use.

A `matplotlib.figure.Figure` of our own belongs to no pyplot state: drawing one neither imports
pyplot nor switches the caller's backend (a learner's notebook keeps its inline plots). Text
that may hold Chinese (token labels, a run folder's name) falls back glyph by glyph to an
installed CJK font; where none draws a character, one warning names them all.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from pathlib import Path

from gptlab.fileio import atomic_write

# fonts that draw Chinese, Japanese and Korean, tried after matplotlib's own for each glyph
CJK_FONTS = (
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Source Han Sans SC",
    "Microsoft YaHei",
    "SimHei",
    "PingFang SC",
    "Arial Unicode MS",
)


def subplots(*grid: int, figsize: tuple[float, float], **kwargs):
    """(figure, axes) as pyplot.subplots gives them, of a figure outside pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def label_fonts() -> list[str]:
    """Font families for text that may hold any script: matplotlib's default first, then every
    installed CJK font of CJK_FONTS."""
    from matplotlib import font_manager, rcParams

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return [*rcParams["font.sans-serif"][:1], *(f for f in CJK_FONTS if f in installed)]


def save(fig, path: Path, dpi: float) -> Path:
    """Lay the figure out and write it to `path` (whole or not at all, as every file gptlab
    writes; the format is the suffix's); characters no installed font draws (drawn
    as boxes) are named in one warning instead of matplotlib's one per glyph."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=path.suffix[1:]))
    missing = []
    for w in caught:
        found = re.match(r"Glyph \d+ \((.*)\) missing from font", str(w.message))
        if found:
            char = found.group(1)
            if char.startswith("\\N{"):
                char = unicodedata.lookup(char[3:-1])
            missing.append(char)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if missing:
        warnings.warn(
            f"{path}: no installed font draws {''.join(dict.fromkeys(missing))!r}, shown as "
            f"boxes (install a CJK font such as fonts-wqy-microhei or fonts-noto-cjk)",
            stacklevel=3,
        )
    return path
