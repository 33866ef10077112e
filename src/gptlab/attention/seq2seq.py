"""Bahdanau attention in a sequence-to-sequence model: a GRU encoder reads the source, a GRU
decoder writes the target one token at a time, and at every step its state (the query) attends
over all encoder states (keys = values) with additive attention. No fixed alignment: the
decoder learns where to look, and the weights show it (`bahdanau` demo).

The task is generated in code: numbers written with digits -> the same number in English words
("4072" -> "four thousand seventy two"). Source tokens are digits, target tokens are words.

Shapes: src (B, S) digit ids, src_lens (B,); tgt (B, T) word ids; encoder outputs (B, S, H);
attention weights (B, T, S).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.attention.scoring import AdditiveAttention

ONES = "zero one two three four five six seven eight nine".split()
TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SRC_VOCAB = [PAD, *"0123456789"]
TGT_VOCAB = [PAD, BOS, EOS, *ONES, *TEENS, *TENS[2:], "hundred", "thousand"]
TGT_INDEX = {w: i for i, w in enumerate(TGT_VOCAB)}


def number_to_words(n: int) -> list[str]:
    """0 <= n < 10000 -> English words, e.g. 4072 -> [four, thousand, seventy, two]."""
    if n == 0:
        return ["zero"]
    words = []
    if n >= 1000:
        words += [ONES[n // 1000], "thousand"]
        n %= 1000
    if n >= 100:
        words += [ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(TENS[n // 10])
        if n % 10:
            words.append(ONES[n % 10])
    elif n >= 10:
        words.append(TEENS[n - 10])
    elif n > 0:
        words.append(ONES[n])
    return words


def encode_pairs(numbers: list[int]):
    """numbers -> src (B, 4) digit ids, src_lens (B,), tgt (B, T) = <bos> words <eos> <pad>..."""
    src = torch.zeros(len(numbers), 4, dtype=torch.long)
    lens = torch.zeros(len(numbers), dtype=torch.long)
    targets = [[TGT_INDEX[w] for w in number_to_words(n)] for n in numbers]
    T = max(len(t) for t in targets) + 2
    tgt = torch.zeros(len(numbers), T, dtype=torch.long)
    for i, (n, t) in enumerate(zip(numbers, targets, strict=True)):
        digits = [SRC_VOCAB.index(c) for c in str(n)]
        src[i, : len(digits)] = torch.tensor(digits)
        lens[i] = len(digits)
        tgt[i, : len(t) + 2] = torch.tensor([TGT_INDEX[BOS], *t, TGT_INDEX[EOS]])
    return src, lens, tgt


class Encoder(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.rnn = nn.GRU(embed, hidden, batch_first=True)

    def forward(self, src):
        outputs, state = self.rnn(self.embedding(src))  # (B, S, H), (1, B, H)
        return outputs, state


class AttentionDecoder(nn.Module):
    """Each step: the previous state queries the encoder outputs (additive attention); the
    context and the previous word's embedding enter the GRU; a linear layer scores the words."""

    def __init__(self, vocab: int, embed: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attention = AdditiveAttention(hidden, hidden, hidden, dropout)
        self.embedding = nn.Embedding(vocab, embed)
        self.rnn = nn.GRU(embed + hidden, hidden, batch_first=True)
        self.dense = nn.Linear(hidden, vocab)

    def step(self, word, state, enc_outputs, src_lens):
        """word (B,) -> logits (B, V), new state (1, B, H), weights (B, S)."""
        query = state[-1][:, None, :]  # (B, 1, H)
        context = self.attention(query, enc_outputs, enc_outputs, src_lens)  # (B, 1, H)
        x = torch.cat([context, self.embedding(word)[:, None, :]], dim=-1)
        out, state = self.rnn(x, state)
        return self.dense(out[:, 0]), state, self.attention.attention_weights[:, 0]

    def forward(self, tgt_in, state, enc_outputs, src_lens):
        """Teacher forcing: the true previous word at every step. -> logits (B, T, V)."""
        logits = []
        for t in range(tgt_in.size(1)):
            step_logits, state, _ = self.step(tgt_in[:, t], state, enc_outputs, src_lens)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)


class Seq2Seq(nn.Module):
    def __init__(self, embed: int = 32, hidden: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = Encoder(len(SRC_VOCAB), embed, hidden)
        self.decoder = AttentionDecoder(len(TGT_VOCAB), embed, hidden, dropout)

    def forward(self, src, src_lens, tgt_in):
        enc_outputs, state = self.encoder(src)
        return self.decoder(tgt_in, state, enc_outputs, src_lens)

    @torch.no_grad()
    def translate(self, src, src_lens, max_len: int = 8):
        """Greedy decoding -> (word lists, attention weights (B, steps, S))."""
        self.eval()
        enc_outputs, state = self.encoder(src)
        word = torch.full((src.size(0),), TGT_INDEX[BOS], dtype=torch.long)
        words, weights = [], []
        for _ in range(max_len):
            logits, state, w = self.decoder.step(word, state, enc_outputs, src_lens)
            word = logits.argmax(-1)
            words.append(word)
            weights.append(w)
        ids = torch.stack(words, dim=1).tolist()
        out = []
        for row in ids:
            sentence = []
            for i in row:
                if TGT_VOCAB[i] == EOS:
                    break
                sentence.append(TGT_VOCAB[i])
            out.append(sentence)
        return out, torch.stack(weights, dim=1)


@dataclass
class Seq2SeqResult:
    model: Seq2Seq
    exact_match: float  # on held-out numbers never seen in training
    steps: int
    seconds: float
    losses: list[float]


@torch.random.fork_rng(devices=[])  # seeded here; the caller's stream goes on after
def train_numbers(
    steps: int = 1500,
    batch_size: int = 128,
    seed: int = 0,
    lr: float = 5e-3,
    n_test: int = 500,
    time_limit: float | None = None,
) -> Seq2SeqResult:
    """Train on random numbers 0..9999 (a held-out set of n_test numbers is never trained on)
    and return the exact-match accuracy of greedy translations of the held-out set."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    numbers = list(range(10000))
    rng.shuffle(numbers)
    test, train = numbers[:n_test], numbers[n_test:]
    model = Seq2Seq()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    start = time.perf_counter()
    step = 0
    model.train()
    for step in range(1, steps + 1):  # noqa: B007
        src, lens, tgt = encode_pairs(rng.sample(train, batch_size))
        logits = model(src, lens, tgt[:, :-1])
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), tgt[:, 1:].reshape(-1), ignore_index=0
        )
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if time_limit is not None and time.perf_counter() - start > time_limit:
            break
    seconds = time.perf_counter() - start
    src, lens, _ = encode_pairs(test)
    predicted, _ = model.translate(src, lens)
    hits = sum(p == number_to_words(n) for p, n in zip(predicted, test, strict=True))
    return Seq2SeqResult(model, hits / len(test), step, seconds, losses)
