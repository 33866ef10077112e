"""What the web page shows, computed with the model's own code (no web here): tokens, the
next-token table, attention maps, the logit lens, head diagnostics and head ablation.

Every function takes a `Lab` (a model, its tokenizer and a lock) and token ids; the lock
serialises the model's use, so one request's ablation hooks never reach another's forward.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gptlab.errors import GptlabError
from gptlab.generate import sample_filter, scale
from gptlab.model import GPT
from gptlab.tokenizers import Tokenizer

TOP = 10  # candidates in the next-token table


@dataclass
class Lab:
    """One model the page looks at."""

    model: GPT
    tokenizer: Tokenizer
    name: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    snapshots: dict[int, Path] = field(default_factory=dict)  # step -> a run's model folder
    _float32: GPT | None = field(default=None, repr=False)
    _pca: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    _at: dict[int, Lab] = field(default_factory=dict, repr=False)
    _at_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _copy_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _streams: dict[tuple[int, ...], list[torch.Tensor]] = field(default_factory=dict, repr=False)
    _induction: torch.Tensor | None = field(default=None, repr=False)

    @property
    def analysed(self) -> GPT:
        """The model the views compute with: the model itself where it computes in float32
        (int8 does too), else a float32 copy made once, so that a learner checking that a
        row of weights sums to 1 sees 1.0000, not bfloat16's 0.998."""
        if self.model.transformer.wte.weight.dtype == torch.float32:
            return self.model
        with self._copy_lock:  # made once, whichever request asks first
            if self._float32 is None:
                import copy

                self._float32 = copy.deepcopy(self.model).float().eval()
        return self._float32

    def at(self, step: int) -> Lab:
        """The model as it was at a snapshot of its run (float32, the same tokenizer), which
        must have the served model's shape; the two last used are kept."""
        if step not in self.snapshots:
            saved = ", ".join(map(str, self.snapshots)) or "none"
            raise GptlabError(f"no snapshot at step {step} (saved steps: {saved})")
        with self._at_lock:  # (not the model's lock: the model goes on serving meanwhile)
            if step not in self._at:
                from gptlab.model.load import load_model

                folder = self.snapshots[step]
                model = load_model(folder, self.device, "float32")
                mine, theirs = asdict(self.model.config), asdict(model.config)
                if mine != theirs:
                    what = ", ".join(f"{k}={theirs[k]}" for k in mine if mine[k] != theirs[k])
                    raise GptlabError(f"{folder} is not a snapshot of {self.name} ({what})")
                while len(self._at) >= 2:
                    self._at.pop(next(iter(self._at)))
                self._at[step] = Lab(model, self.tokenizer, f"{self.name} @ step {step}")
            self._at[step] = self._at.pop(step)  # the last used goes last
            return self._at[step]

    def pca(self) -> tuple[torch.Tensor, torch.Tensor]:
        """wte's two principal directions (C, 2) and the share of the variance each explains
        (2,), fitted once on every row (the eigenvectors of wte's covariance)."""
        if self._pca is None:
            wte = self.analysed.transformer.wte.weight[: self.model.config.vocab_size]
            centred = wte.detach().double() - wte.detach().double().mean(0)
            values, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending
            top = vectors[:, -2:].flip(-1)
            top = top * top.sum(0).sign().where(top.sum(0) != 0, torch.ones(2, dtype=top.dtype))
            self._pca = (top.float(), (values[-2:].flip(0) / values.sum()).float())
        return self._pca

    def stream(self, ids: Sequence[int]) -> list[torch.Tensor]:
        """The residual stream of the analysed model for ids (the caller holds the lock):
        n_layer + 1 tensors (T, C), the embeddings first. The last two texts' are kept: a page
        asks about one text many times (each layer's maps, the lens, one head's steps)."""
        key = tuple(ids)
        if key not in self._streams:
            states = [x[0] for x in self.analysed.residual_stream(self.tensor(ids))]
            while len(self._streams) >= 2:
                self._streams.pop(next(iter(self._streams)))
            self._streams[key] = states
        self._streams[key] = self._streams.pop(key)  # the last used goes last
        return self._streams[key]

    def maps(self, ids: Sequence[int], layer: int) -> torch.Tensor:
        """Layer `layer`'s attention weights (n_head, T, T) from the cached stream (caller
        holds the lock)."""
        block = self.analysed.transformer.h[layer]
        return block.attn.weights(block.ln_1(self.stream(ids)[layer][None]))[0].float()

    @property
    def device(self) -> torch.device:
        return self.model.transformer.wte.weight.device

    def tensor(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(ids)], dtype=torch.long, device=self.device)

    def piece(self, i: int) -> str:
        """The text of one token; a byte-level token that is only part of a UTF-8 character
        shows its bytes, as ‹e6 97›, rather than a replacement character."""
        raw = getattr(self.tokenizer, "decode_bytes", None)
        if raw is None:
            return self.tokenizer.decode([i])
        data = raw([i])
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "‹" + " ".join(f"{b:02x}" for b in data) + "›"

    def decode(self, ids: Sequence[int]) -> tuple[str, bool]:
        """ids -> (their text, whether it ends on a whole character): the text a page may
        continue from, made from ids, never from pieces' display text."""
        raw = getattr(self.tokenizer, "decode_bytes", None)
        if raw is None:
            return self.tokenizer.decode(list(ids)), True
        data = raw(list(ids))
        try:
            return data.decode("utf-8"), True
        except UnicodeDecodeError:
            return data.decode("utf-8", errors="replace"), False


def tokens(lab: Lab, ids: Sequence[int]) -> list[dict]:
    """Each id with the text it stands for: [{"id", "piece"}]."""
    return [{"id": int(i), "piece": lab.piece(int(i))} for i in ids]


@contextlib.contextmanager
def ablated(model: GPT, heads: Sequence[tuple[int, int]]) -> Iterator[None]:
    """Zero the output of each (layer, head) while inside: that head's slice of the input of
    its layer's attention projection c_proj (B, T, C) is set to 0."""
    hs = model.config.n_embd // model.config.n_head
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def hook_for(chosen: list[int]):
        def zero_heads(module, args):
            (y,) = args
            y = y.clone()
            for h in chosen:
                y[..., h * hs : (h + 1) * hs] = 0
            return (y,)

        return zero_heads

    handles = [
        model.transformer.h[layer].attn.c_proj.register_forward_pre_hook(hook_for(chosen))
        for layer, chosen in by_layer.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def next_tokens(
    lab: Lab,
    ids: Sequence[int],
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    position: int | None = None,
    ablate: Sequence[tuple[int, int]] = (),
) -> dict:
    """The top candidates for the token after `position` (default: the last): each with its
    probability as the model gives it and after temperature / top-k / top-p, as sampling
    would draw it; with heads ablated, also "p_intact", the probability with every head on."""
    position = len(ids) - 1 if position is None else position
    model = lab.analysed
    with lab.lock:
        # the intact model's logits at `position`, from the text's stream (causal: the same as
        # reading the text up to there)
        last = model.transformer.ln_f(lab.stream(ids)[-1][position])
        logits = model.lm_head(last)[: model.config.vocab_size].float()
        intact = None
        if ablate:  # with heads switched off, the intact model's numbers beside them
            intact = torch.softmax(logits, -1)
            with ablated(model, ablate):
                x = lab.tensor(ids[: position + 1])
                logits = model(x).logits[0, -1, : model.config.vocab_size].float()
    probs = torch.softmax(logits, dim=-1)
    if temperature == 0:  # greedy: all of the mass on the argmax
        after = torch.zeros_like(probs)
        after[probs.argmax()] = 1.0
    else:
        after = torch.softmax(sample_filter(scale(logits[None], temperature), top_k, top_p)[0], -1)
    top = torch.topk(probs, min(TOP, probs.numel()))
    return {
        "position": position,
        "candidates": [
            {
                "id": int(i),
                "piece": lab.piece(int(i)),
                "p": float(p),
                "p_sampled": float(after[i]),
                **({"p_intact": float(intact[i])} if intact is not None else {}),
            }
            for p, i in zip(top.values, top.indices, strict=True)
        ],
        "logits": logits,  # for callers in Python (the API drops it)
    }


@torch.no_grad()
def attention(lab: Lab, ids: Sequence[int], layer: int) -> torch.Tensor:
    """Layer `layer`'s attention weights for ids: (n_head, T, T), rows summing to 1."""
    check_layer(lab, layer)
    with lab.lock:
        return lab.maps(ids, layer)


def shrink(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(nh, T, T) -> (nh, S, S) with S = min(T, size): the largest weight of each cell's
    block (a thumbnail keeps a sharp diagonal visible)."""
    T = maps.size(-1)
    if T <= size:
        return maps
    edges = torch.linspace(0, T, size + 1).round().long().tolist()
    cells = list(zip(edges, edges[1:], strict=False))
    rows = torch.stack([maps[:, a:b].amax(1) for a, b in cells], 1)  # (nh, S, T)
    return torch.stack([rows[..., a:b].amax(-1) for a, b in cells], -1)  # (nh, S, S)


@torch.no_grad()
def logit_lens(
    lab: Lab, ids: Sequence[int], first: int = 0, last: int | None = None
) -> list[list[dict]]:
    """For the embeddings and each block's output: at each position in [first, last) (default
    all), the token the model would predict if the stream ended there (ln_f, then the head)
    and its probability. (n_layer + 1) rows of entries {"id", "piece", "p"}; the last row is
    the model's own prediction. (A position costs n_layer + 1 products with the whole
    vocabulary: GPT-2's 200 positions take seconds, the page's 48 a fraction.)"""
    with lab.lock:
        model = lab.analysed
        rows = []
        for x in lab.stream(ids):
            x = x[first:last]
            logits = model.lm_head(model.transformer.ln_f(x))[:, : model.config.vocab_size]
            p, top = torch.softmax(logits.float(), -1).max(-1)
            rows.append(
                [
                    {"id": int(i), "piece": lab.piece(int(i)), "p": round(float(q), 5)}
                    for q, i in zip(p, top, strict=True)
                ]
            )
    return rows


def _induction_sequence(lab: Lab, n: int) -> list[int]:
    g = torch.Generator().manual_seed(0)
    vocab = lab.model.config.vocab_size
    half = torch.randint(vocab, (n,), generator=g).tolist()
    return half + half


@torch.no_grad()
def head_scores(lab: Lab, ids: Sequence[int]) -> list[dict]:
    """Per head, on ids: mean attention entropy (nats), previous-token score (mean weight on
    position i - 1), sink score (mean weight on position 0); and, on a random sequence
    repeated twice, the induction score (mean weight from position i of the repeat on the
    token after i's earlier occurrence)."""
    if len(ids) < 2:
        raise GptlabError("head diagnostics need at least 2 tokens")
    rows = []
    with lab.lock:  # a layer at a time: memory for one layer's maps, whatever the length
        induction = _induction_scores(lab)
        for layer in range(lab.model.config.n_layer):
            rows += _scores(layer, lab.maps(ids, layer), induction[layer])
    return rows


def _induction_scores(lab: Lab) -> torch.Tensor:
    """(n_layer, n_head) induction scores, on a random sequence repeated twice: the mean
    weight from position i of the repeat on the token after i's earlier occurrence. The same
    for every text: computed once (caller holds the lock)."""
    if lab._induction is None:
        n = max(2, min(50, lab.model.config.block_size // 2))
        q = torch.arange(n, 2 * n)
        maps = lab.analysed.iter_attention_maps(lab.tensor(_induction_sequence(lab, n)))
        lab._induction = torch.stack([r[0][:, q, q - n + 1].float().mean(-1) for r in maps])
    return lab._induction


def _scores(layer: int, a: torch.Tensor, induction: torch.Tensor) -> list[dict]:
    """One layer's head diagnostics from its maps on the text a (nh, T, T) and its heads'
    induction scores (nh,)."""
    entropy = -(a * torch.log(a.clamp_min(1e-12))).sum(-1).mean(-1)
    prev = a.diagonal(offset=-1, dim1=1, dim2=2).mean(-1)
    sink = a[:, 1:, 0].mean(-1)
    return [
        {
            "layer": layer,
            "head": h,
            "entropy": round(float(entropy[h]), 5),
            "prev": round(float(prev[h]), 5),
            "sink": round(float(sink[h]), 5),
            "induction": round(float(induction[h]), 5),
        }
        for h in range(a.size(0))
    ]


def check_layer(lab: Lab, layer: int) -> None:
    n = lab.model.config.n_layer
    if not 0 <= layer < n:
        raise GptlabError(f"layer must be in [0, {n - 1}], got {layer}")


def check_head(lab: Lab, head: int) -> None:
    n = lab.model.config.n_head
    if not 0 <= head < n:
        raise GptlabError(f"head must be in [0, {n - 1}], got {head}")


def parameters(lab: Lab) -> int:
    """The parameters of the float model of this shape (an int8 model stores int8 weights,
    their scales and its own copy of the head, but has these parameters)."""
    with torch.device("meta"):  # shapes only
        return GPT(lab.model.config).num_params()


def quantized(lab: Lab) -> str | None:
    """ "int8" for a model with int8 weights, else None."""
    int8 = any(b.dtype == torch.int8 for b in lab.model.buffers())
    return "int8" if int8 or any(p.dtype == torch.int8 for p in lab.model.parameters()) else None


def model_parts(lab: Lab) -> dict:
    """The loaded model as the guide's §11-§14 name it: every tensor of its state dict (name,
    shape, count, dtype; the head marked where it is the token embedding itself), the sizes
    the shapes come from (C = n_embd, head_size = C / n_head) and the parameters of the float
    model (an int8 model stores int8 weights, their scales and its own copy of the head)."""
    model, c = lab.model, lab.model.config
    storage = {}
    tensors = []
    for name, t in model.state_dict(keep_vars=True).items():
        tied = storage.get((t.data_ptr(), tuple(t.shape))) if t.numel() else None
        storage.setdefault((t.data_ptr(), tuple(t.shape)), name)
        tensors.append(
            {
                "name": name,
                "shape": list(t.shape),
                "count": t.numel(),
                "dtype": str(t.dtype).removeprefix("torch."),
                **({"tied_to": tied} if tied else {}),
            }
        )
    return {
        "n_embd": c.n_embd,
        "n_head": c.n_head,
        "head_size": c.n_embd // c.n_head,
        "n_layer": c.n_layer,
        "vocab_size": c.vocab_size,
        "block_size": c.block_size,
        "parameters": parameters(lab),
        "dtype": str(model.transformer.wte.weight.dtype).removeprefix("torch."),
        "quantized": quantized(lab),
        "tensors": tensors,
    }


@torch.no_grad()
def head_steps(lab: Lab, ids: Sequence[int], layer: int, head: int, position: int) -> dict:
    """One head of one layer, step by step, for the query at `position` (the guide's §13), in
    float32 whatever the model computes in: {name: tensor}, in order:
    x (T, C) what the block reads; ln_1 (T, C); q, k, v (T, hs) of this head; scores (T,)
    q[position] . k; scaled (T,) = scores / sqrt(hs); masked (T,) with -inf after position;
    weights (T,) its softmax; head_out (hs,) = weights @ v; heads (C,) every head's output at
    this position side by side; attn_out (C,) = c_proj(heads), what the block adds to x."""
    check_layer(lab, layer)
    check_head(lab, head)
    model = lab.analysed
    with lab.lock:
        x = lab.stream(ids)[layer][None]  # what block `layer` reads
        block = model.transformer.h[layer]
        h = block.ln_1(x)
        q, k, v = (t[0] for t in block.attn.heads(h))  # (nh, T, hs) each
        hs = q.size(-1)
        scores = k @ q[:, position].unsqueeze(-1)  # (nh, T, 1): every head's scores
        scaled = scores.squeeze(-1) / math.sqrt(hs)
        masked = scaled.clone()
        masked[:, position + 1 :] = float("-inf")
        weights = torch.softmax(masked, dim=-1)  # (nh, T)
        outs = torch.einsum("nt,nth->nh", weights, v)  # (nh, hs)
        heads = outs.reshape(-1)  # (C,): head 0's hs numbers first
        attn_out = block.attn.c_proj(heads.unsqueeze(0))[0]
    return {
        "x": x[0],
        "ln_1": h[0],
        "q": q[head],
        "k": k[head],
        "v": v[head],
        "scores": scores[head, :, 0],
        "scaled": scaled[head],
        "masked": masked[head],
        "weights": weights[head],
        "head_out": outs[head],
        "heads": heads,
        "attn_out": attn_out,
    }


def _cosine(rows: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N, N) cosine similarity of every pair of rows."""
    unit = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


def _spread(n: int, size: int) -> list[int]:
    """At most `size` indices spread evenly over range(n), first and last included."""
    if n <= size:
        return list(range(n))
    return torch.linspace(0, n - 1, size).round().long().tolist()


@torch.no_grad()
def embeddings(
    lab: Lab, token: int, ids: Sequence[int] = (), k: int = 10, n: int = 200, size: int = 96
) -> dict:
    """The embedding tables as the guide's §11 and §9 draw them, in float32:
    nearest: the k tokens whose wte rows are closest to `token`'s by cosine similarity;
    pca: the vocabulary's two principal directions (fitted on every row of wte) and the
    points of the text's tokens and of the first n ids (for a BPE vocabulary the earliest
    merges, from id 256: frequent pieces); positions: wpe at up to `size` positions spread
    over block_size (first 64 channels), the cosine similarity of those positions' rows, and
    the same similarity for the sinusoidal table of the same shape (what wpe replaced)."""
    from gptlab.attention.positional import sinusoidal_table

    vocab = lab.model.config.vocab_size
    if not 0 <= token < vocab:
        raise GptlabError(f"token must be an id in [0, {vocab - 1}], got {token}")
    with lab.lock:  # (the float32 copy and the PCA are made once, by one request)
        model = lab.analysed
        wte = model.transformer.wte.weight[:vocab].float()
        wpe = model.transformer.wpe.weight.float()
        axes, explained = lab.pca()
    unit = wte / wte.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sims = unit @ unit[token]
    sims[token] = -2.0  # not its own neighbour
    top = torch.topk(sims, min(k, vocab - 1))
    first = 256 if vocab >= 256 + n else 0
    chosen = list(dict.fromkeys([*ids, *range(first, min(vocab, first + n))]))
    xy = (wte[chosen] - wte.mean(0)) @ axes  # (len(chosen), 2)
    in_text = set(ids)
    where = _spread(wpe.size(0), size)
    C = wpe.size(1)
    sinusoid = sinusoidal_table(wpe.size(0), C - C % 2)
    return {
        "token": {"id": token, "piece": lab.piece(token)},
        "nearest": [
            {"id": int(i), "piece": lab.piece(int(i)), "cosine": float(c)}
            for c, i in zip(top.values, top.indices, strict=True)
        ],
        "pca": {
            "explained": [float(e) for e in explained],
            "points": [
                {
                    "id": i,
                    "piece": lab.piece(i),
                    "x": float(p[0]),
                    "y": float(p[1]),
                    "in_text": i in in_text,
                }
                for i, p in zip(chosen, xy, strict=True)
            ],
        },
        "positions": where,
        "wpe": wpe[where, :64],
        "wpe_similarity": _cosine(wpe[where]),
        "sinusoid_similarity": _cosine(sinusoid[where]),
    }


@torch.no_grad()
def residual(lab: Lab, ids: Sequence[int], layer: int, position: int, norm: str = "ln_1") -> dict:
    """The residual stream (the guide's §12) for ids, float32: the norm of the stream at each
    position after the embeddings and after each block, norms (n_layer + 1, T); what each
    block's attention and MLP add there, attn (n_layer, T), mlp (n_layer, T); and one LayerNorm
    taken apart at `position`: block `layer`'s ln_1 (its input is the stream entering the
    block) or ln_2 (the stream after the block's attention), or (layer == n_layer) ln_f: the
    vector x (C,), its mean and variance, normalized = (x - mean) / sqrt(var + eps) (mean 0,
    variance var / (var + eps), 1 unless var is as small as eps), then out = normalized * gain
    + bias, which equals the LayerNorm's output. For ln_2 also the MLP that reads it:
    mlp_hidden = GELU(c_fc(out)) (4C,) and mlp_out = c_proj(mlp_hidden) (C,)."""
    n_layer = lab.model.config.n_layer
    if not 0 <= layer <= n_layer:
        raise GptlabError(f"layer must be in [0, {n_layer}] ({n_layer}: ln_f), got {layer}")
    if norm not in ("ln_1", "ln_2"):
        raise GptlabError(f"norm must be ln_1 or ln_2, got {norm!r}")
    model = lab.analysed
    blocks = model.transformer.h
    with lab.lock:
        stream = lab.stream(ids)
        attn, mlp = [], []
        for block, x, after in zip(blocks, stream, stream[1:], strict=False):
            a = block.attn(block.ln_1(x[None]))[0]
            attn.append(a)
            mlp.append(after - x - a)  # the block's output is x + a + mlp(ln_2(x + a))
        x = stream[layer][position]
        if layer == n_layer:
            ln = model.transformer.ln_f
        elif norm == "ln_1":
            ln = blocks[layer].ln_1
        else:
            ln, x = blocks[layer].ln_2, x + attn[layer][position]  # after the attention
        v = x.float()
        mean, var = v.mean(), v.var(unbiased=False)
        normalized = (v - mean) / torch.sqrt(var + ln.eps)
        gain = ln.weight.float() if ln.weight is not None else torch.ones_like(v)
        bias = ln.bias.float() if ln.bias is not None else torch.zeros_like(v)
        out = normalized * gain + bias
        layer_norm = ln(x[None])[0].float()
        mlp_parts = {}
        if layer < n_layer and norm == "ln_2":
            hidden = blocks[layer].mlp.gelu(blocks[layer].mlp.c_fc(layer_norm[None]))
            mlp_parts = {"mlp_hidden": hidden[0], "mlp_out": blocks[layer].mlp.c_proj(hidden)[0]}
    return {
        **mlp_parts,
        "norms": torch.stack([s.float().norm(dim=-1) for s in stream]),
        "attn": torch.stack([a.float().norm(dim=-1) for a in attn]),
        "mlp": torch.stack([m.float().norm(dim=-1) for m in mlp]),
        "x": v,
        "mean": float(mean),
        "var": float(var),
        "eps": float(ln.eps),
        "normalized": normalized,
        "gain": gain,
        "bias": bias,
        "out": out,
        "layer_norm": layer_norm,  # the module's own output: equals out
    }
