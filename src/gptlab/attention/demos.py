"""Pictures of the attention toolkit, one PNG per idea (matplotlib, headless).

    gptlab attention pooling|scoring|multihead|positional|bahdanau|architecture|gpt2|all --out DIR

Every figure has labelled axes and a colour bar on each heatmap; sizes are fixed
(`FIGSIZES`, at DPI dots per inch) so that a test can check the image it gets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from gptlab import figures
from gptlab.errors import GptlabError

DPI = 100
FIGSIZES = {  # inches; pixels = inches * DPI
    "pooling": (15, 4.5),
    "scoring": (11, 4.5),
    "multihead": (14, 4),
    "positional": (12, 5),
    "bahdanau": (14, 4),
    "gpt2": (16, 8),
    "architecture": (16, 8),
}


def _np(t):
    return torch.as_tensor(t).detach().float().numpy()


def _heatmap(fig, ax, matrix, title, xlabel, ylabel, xticks=None, yticks=None):
    image = ax.imshow(_np(matrix), cmap="Reds", aspect="auto", vmin=0)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticks is not None:
        ax.set_xticks(
            range(len(xticks)), xticks, rotation=90, fontsize=7, fontfamily=figures.label_fonts()
        )
    if yticks is not None:
        ax.set_yticks(range(len(yticks)), yticks, fontsize=7, fontfamily=figures.label_fonts())
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def _save(fig, out: Path, name: str) -> Path:
    """Lay the figure out and write out/name.png."""
    out.mkdir(parents=True, exist_ok=True)
    return figures.save(fig, out / f"{name}.png", DPI)


def pooling(out: Path, quick: bool = False) -> Path:
    """Average pooling and both Nadaraya-Watson kinds against the truth; their weights."""
    from gptlab.attention.pooling import (
        NadarayaWatson,
        attention_pool,
        average_weights,
        synthetic_task,
        train_nadaraya_watson,
    )

    x_train, y_train, x_test, y_truth = synthetic_task()
    plain = NadarayaWatson(1.0, learnable=False)
    y_plain = plain(x_test, x_train, y_train)
    model, losses = train_nadaraya_watson(x_train, y_train, epochs=3 if quick else 10)
    with torch.no_grad():
        y_learned = model(x_test, x_train, y_train)
    y_avg = attention_pool(average_weights(len(x_test), len(x_train)), y_train)

    fig, axes = figures.subplots(1, 3, figsize=FIGSIZES["pooling"])
    ax = axes[0]
    x_test, x_train, y_train = _np(x_test), _np(x_train), _np(y_train)
    ax.plot(x_test, _np(y_truth), "k-", label="truth")
    ax.plot(x_test, _np(y_avg), "--", label="average pooling")
    ax.plot(x_test, _np(y_plain), label="Nadaraya-Watson, w = 1")
    ax.plot(x_test, _np(y_learned), label=f"Nadaraya-Watson, learned w = {model.w.item():.2f}")
    ax.plot(x_train, y_train, "o", alpha=0.4, markersize=4, label="training points (noisy)")
    ax.set_xlabel("x (query)")
    ax.set_ylabel("y")
    ax.set_title("Attention pooling as kernel regression")
    ax.legend(fontsize=7)
    _heatmap(
        fig,
        axes[1],
        plain.attention_weights,
        "weights, w = 1",
        "keys (training x, sorted)",
        "queries (test x)",
    )
    _heatmap(
        fig,
        axes[2],
        model.attention_weights,
        f"weights, learned w = {model.w.item():.2f}",
        "keys (training x, sorted)",
        "queries (test x)",
    )
    return _save(fig, out, "pooling")


@torch.random.fork_rng(devices=[])  # seeds its own weights; the caller's stream stays
def scoring(out: Path, quick: bool = False) -> Path:
    """Additive vs scaled dot-product weights on the same inputs; masked keys in white."""
    from gptlab.attention.scoring import AdditiveAttention, DotProductAttention

    torch.manual_seed(0)
    queries, keys = torch.randn(2, 4, 8), torch.randn(2, 10, 8)
    values = torch.randn(2, 10, 3)
    valid = torch.tensor([6, 10])
    additive = AdditiveAttention(8, 8, 16).eval()
    dot = DotProductAttention().eval()
    with torch.no_grad():
        additive(queries, keys, values, valid)
        dot(queries, keys, values, valid)
    fig, axes = figures.subplots(1, 2, figsize=FIGSIZES["scoring"])
    for ax, module, name in ((axes[0], additive, "additive"), (axes[1], dot, "scaled dot-product")):
        weights = module.attention_weights[0].clone()
        weights[:, valid[0] :] = float("nan")  # masked: exactly zero weight, drawn blank
        _heatmap(fig, ax, weights, f"{name} (keys 6-9 masked)", "keys", "queries")
    return _save(fig, out, "scoring")


@torch.random.fork_rng(devices=[])  # seeds its own weights; the caller's stream stays
def multihead(out: Path, quick: bool = False) -> Path:
    """The weights of each head of one multi-head self-attention (causal)."""
    from gptlab.attention.multihead import MultiHeadAttention

    torch.manual_seed(0)
    heads = 4
    mha = MultiHeadAttention(32, heads).eval()
    x = torch.randn(1, 12, 32)
    with torch.no_grad():
        mha(x, x, x, causal=True)
    fig, axes = figures.subplots(1, heads, figsize=FIGSIZES["multihead"])
    for h, ax in enumerate(axes):
        _heatmap(
            fig,
            ax,
            mha.attention_weights[0, h],
            f"head {h}",
            "keys (positions)",
            "queries (positions)",
        )
    fig.suptitle(
        "Multi-head self-attention, the mechanics: an untrained layer on random inputs (each "
        "head's own causal weights); trained heads specialise: gptlab attention gpt2 --model RUN"
    )
    return _save(fig, out, "multihead")


def positional(out: Path, quick: bool = False) -> Path:
    """The sinusoidal table and the dot-product similarity between positions."""
    from gptlab.attention.positional import sinusoidal_table

    P = sinusoidal_table(64, 32)
    fig, axes = figures.subplots(1, 2, figsize=FIGSIZES["positional"])
    P = _np(P)
    image = axes[0].imshow(P, cmap="RdBu", aspect="auto", vmin=-1, vmax=1)
    axes[0].set_title("PE[pos, 2i] = sin, PE[pos, 2i+1] = cos")
    axes[0].set_xlabel("encoding dimension")
    axes[0].set_ylabel("position")
    fig.colorbar(image, ax=axes[0], fraction=0.046, pad=0.04)
    image = axes[1].imshow(P @ P.T, cmap="viridis", aspect="auto")
    axes[1].set_title("similarity PE[i] . PE[j]: depends on |i - j| only")
    axes[1].set_xlabel("position j")
    axes[1].set_ylabel("position i")
    fig.colorbar(image, ax=axes[1], fraction=0.046, pad=0.04)
    return _save(fig, out, "positional")


def bahdanau(out: Path, quick: bool = False) -> Path:
    """Alignment of source digits and target words in a trained seq2seq model."""
    from gptlab.attention.seq2seq import encode_pairs, train_numbers

    result = train_numbers(steps=100 if quick else 1500)
    numbers = [4072, 913, 58, 1600]
    src, lens, _ = encode_pairs(numbers)
    words, weights = result.model.translate(src, lens)
    fig, axes = figures.subplots(1, len(numbers), figsize=FIGSIZES["bahdanau"])
    for i, (ax, n) in enumerate(zip(axes, numbers, strict=True)):
        steps = max(1, len(words[i]))
        _heatmap(
            fig,
            ax,
            weights[i, :steps, : lens[i]],
            str(n),
            "source digits",
            "target words",
            list(str(n)),
            words[i] or ["(nothing)"],
        )
    fig.suptitle(
        f"Bahdanau attention: where the decoder looks (held-out exact match "
        f"{result.exact_match:.1%} after {result.steps} steps)"
    )
    return _save(fig, out, "bahdanau")


DEFAULT_PROMPT = "To be, or not to be, that is the question"


def gpt2(
    out: Path, model, tokenizer, quick: bool = False, prompt: str | None = None, layer: int = 0
) -> Path:
    """Every head of one layer of a loaded GPT (`gptlab.load_for_inference`) on a prompt."""
    net, tok = model, tokenizer
    prompt = DEFAULT_PROMPT if prompt is None else prompt  # "" is a prompt, and too short
    ids = tok.encode(prompt)[: net.config.block_size]
    if len(ids) < 2:
        raise GptlabError("the prompt needs at least 2 tokens")
    if not 0 <= layer < net.config.n_layer:
        raise GptlabError(f"layer must be in [0, {net.config.n_layer - 1}], got {layer}")
    maps = net.attention_maps(torch.tensor([ids]))[layer][0]  # (nh, T, T)
    labels = [tok.decode([i]) for i in ids]
    heads = maps.size(0)
    cols = min(heads, 6)
    rows = (heads + cols - 1) // cols
    fig, axes = figures.subplots(rows, cols, figsize=FIGSIZES["gpt2"], squeeze=False)
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= heads:
            ax.axis("off")
            continue
        _heatmap(
            fig, ax, maps[h], f"layer {layer}, head {h}", "key token", "query token", labels, labels
        )
    return _save(fig, out, "gpt2")


def architecture_steps(config=None) -> list[tuple[str, str]]:
    """GPT-2's path from ids to logits as (step, output shape) rows, from a GPTConfig (default:
    GPT-2 small): what `architecture` draws, kept apart so it can be checked."""
    from gptlab.config import GPTConfig

    c = config or GPTConfig.preset("gpt2")
    C, V, L, nh = c.n_embd, c.vocab_size, c.block_size, c.n_head
    return [
        ("token ids", "(B, T), T <= " + str(L)),
        (f"wte ({V}, {C}) + wpe ({L}, {C})", f"(B, T, {C})"),
        (f"{c.n_layer} x block:", ""),
        ("    ln_1", f"(B, T, {C})"),
        (f"    attention: c_attn ({C}, {3 * C}) -> {nh} heads", f"(B, {nh}, T, {C // nh}) each"),
        (f"    softmax(q k^T / sqrt({C // nh}) + causal mask) v", f"(B, {nh}, T, {C // nh})"),
        (f"    c_proj ({C}, {C}), then x = x + attention", f"(B, T, {C})"),
        ("    ln_2", f"(B, T, {C})"),
        (f"    MLP: ({C}, {4 * C}), GELU, ({4 * C}, {C}); x = x + MLP", f"(B, T, {C})"),
        ("ln_f", f"(B, T, {C})"),
        (f"head = wte^T (tied) ({C}, {V})", f"(B, T, {V}) logits"),
    ]


_TRANSFORMER_2017 = [  # (encoder, decoder), row by row
    ("source ids", "target ids (shifted right)"),
    ("embed x sqrt(d) + sinusoids", "embed x sqrt(d) + sinusoids"),
    ("N x encoder layer:", "N x decoder layer:"),
    ("  self-attention, add, LN", "  causal self-attn, add, LN"),
    ("  FFN (ReLU), add, LN", "  cross-attn (encoder), add, LN"),
    ("", "  FFN (ReLU), add, LN"),
    ("", "linear (tied), softmax"),
]


def architecture(out: Path, quick: bool = False) -> Path:
    """GPT-2 small's path from ids to logits with each step's shape, beside the encoder-decoder
    Transformer of 2017 it comes from (post-LN, cross-attention, fixed positions)."""
    fig, (left, right) = figures.subplots(
        1, 2, figsize=FIGSIZES["architecture"], gridspec_kw={"width_ratios": [1.7, 1]}
    )
    steps = architecture_steps()
    for ax in (left, right):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, len(steps) + 1)
        ax.invert_yaxis()
        ax.axis("off")
    block = [i for i, (name, _) in enumerate(steps) if name.startswith("    ")]
    from matplotlib.patches import Rectangle

    left.add_patch(Rectangle((0.02, block[0] + 0.5), 0.96, len(block), color="#dde8f5", zorder=0))
    for i, (name, shape) in enumerate(steps):
        left.text(0.04, i + 1, name, va="center", fontsize=10, family="monospace")
        left.text(0.97, i + 1, shape, va="center", ha="right", fontsize=10, color="#1f4e96")
        if i:
            left.annotate("", (0.015, i + 0.75), (0.015, i + 0.25), arrowprops={"arrowstyle": "->"})
    left.set_title("GPT-2 small (decoder only, pre-LN): each step and its output shape")
    for i, (enc, dec) in enumerate(_TRANSFORMER_2017):
        right.text(0.0, i + 1, enc, va="center", fontsize=9, family="monospace")
        right.text(0.5, i + 1, dec, va="center", fontsize=9, family="monospace")
    right.text(
        0.0,
        len(_TRANSFORMER_2017) + 1.7,
        "The encoder's output feeds every decoder layer's cross-attention;\n"
        "LayerNorm comes after each residual addition (post-LN).\n"
        "GPT-2 keeps the decoder without cross-attention, moves LayerNorm\n"
        "before each sub-layer, adds ln_f, learns its positions (wpe).",
        va="top",
        fontsize=10,
    )
    right.set_title("The Transformer of 2017 (encoder | decoder)")
    return _save(fig, out, "architecture")


DEMOS: dict[str, Callable[..., Path]] = {
    "pooling": pooling,
    "scoring": scoring,
    "multihead": multihead,
    "positional": positional,
    "bahdanau": bahdanau,
    "gpt2": gpt2,
    "architecture": architecture,
}
