"""Byte-level BPE (byte pair encoding), GPT-2's tokenizer: encode, decode, save, load, train.

Text is first cut into chunks by a regular expression (words with their leading space,
numbers, punctuation runs, whitespace). Each chunk becomes its UTF-8 bytes, one token per byte,
so no character is ever unknown. Then merges apply in the order they were learned: the
adjacent pair with the earliest merge becomes one token, again and again until no learned pair
is left. A token is a byte string; its id is its rank.

Encoding runs through tiktoken's core (Rust) with an `Encoding` built in memory from the ranks
loaded here; `encode_python` is the same algorithm in plain Python, for reading and teaching.
"""

from __future__ import annotations

import codecs
import heapq
import os
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
import regex

from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write_json, read_json_object
from gptlab.tokenizers import gpt2
from gptlab.tokenizers.base import IncrementalDecoder, Tokenizer, checked_ids

# Pre-tokenization patterns: GPT-2's, and the one of GPT-4's cl100k vocabulary (case-insensitive
# contractions, numbers in groups of at most three digits, newlines kept apart). GPT-2's is
# written with its contractions factored, '(?:[sdmt]|ll|ve|re) for 's|'t|'re|'ve|'m|'ll|'d:
# the same matches, found a few per cent faster.
PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",  # noqa: E501
}
CONFIG_FILE = "gptlab_tokenizer.json"


class BPETokenizer(Tokenizer):
    """A byte-level BPE vocabulary: GPT-2's (`load` on its files) or one trained with
    `train_bpe`.

    ranks: token bytes -> id, for every ordinary token (all 256 single bytes included).
    merges: (left, right) byte-string pairs in the order they were learned.
    special_tokens: text -> id for tokens such as <|endoftext|> that no merge makes.
    pattern: a key of PATTERNS or a regular expression of your own.
    """

    kind = "bpe"
    files = (*(name for pair in gpt2.FILE_NAMES for name in pair), CONFIG_FILE)
    looks_for = ", or ".join(" + ".join(pair) for pair in gpt2.FILE_NAMES)
    order = 1

    @classmethod
    def recognises(cls, folder: Path) -> bool:
        return gpt2.find_files(Path(folder)) is not None

    def __init__(
        self,
        ranks: dict[bytes, int],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: dict[str, int] | None = None,
        pattern: str = "gpt2",
        eot_token: str | None = gpt2.EOT,
    ) -> None:
        self.ranks = dict(ranks)
        self.merges = list(merges)
        self.special_tokens = dict(special_tokens or {})
        self.pattern = pattern
        self._regex = _compile_pattern(pattern)
        missing = [b for b in range(256) if bytes([b]) not in self.ranks]
        if missing:
            raise GptlabError(f"a byte-level vocabulary needs all 256 bytes; missing {missing[:5]}")
        for a, b in self.merges:
            if a not in self.ranks or b not in self.ranks or a + b not in self.ranks:
                raise GptlabError(
                    f"merge {a!r} + {b!r} uses or makes a token not in the vocabulary"
                )
        ids = [*self.ranks.values(), *self.special_tokens.values()]
        if len(set(ids)) != len(ids):
            raise GptlabError("two tokens share one id")
        self._vocab_size = max(ids) + 1
        self._bytes: list[bytes] = [b""] * self._vocab_size
        for token, i in self.ranks.items():
            self._bytes[i] = token
        for text, i in self.special_tokens.items():
            self._bytes[i] = text.encode("utf-8")
        self._eot_id = self.special_tokens.get(eot_token) if eot_token else None
        self._merge_rank = {pair: i for i, pair in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}
        try:
            self._core = self._tiktoken_encoding()
        except ValueError as e:  # tiktoken's regex engine refuses a few valid `regex` patterns
            raise GptlabError(f"pattern {pattern!r}: tiktoken cannot use it ({e})") from None

    # ------------------------------------------------------------------ interface

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eot_id(self) -> int | None:
        return self._eot_id

    @property
    def fast(self) -> bool:
        """True when encoding runs through tiktoken (see `_tiktoken_encoding`)."""
        return self._core is not None

    def encode(self, text: str, allowed_special: Collection[str] | str = ()) -> list[int]:
        """Ids of `text`. Special-token text (e.g. "<|endoftext|>") is ordinary text unless
        named in `allowed_special` (or `allowed_special="all"`), as in tiktoken."""
        if not allowed_special and self._core is not None:
            return self._core.encode_ordinary(text)  # the common case, straight to Rust
        allowed = self._allowed(allowed_special)
        if self._core is None:
            return self.encode_python(text, allowed)
        if not allowed:
            return self._core.encode_ordinary(text)
        return self._core.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_array(self, text: str) -> np.ndarray:
        """encode(text) as a uint32 array, special-token text as ordinary text: straight from
        tiktoken's buffer where encoding runs through it (no Python list of ints between)."""
        if self._core is not None:
            return self._core.encode_to_numpy(text, disallowed_special=())
        return np.asarray(self.encode_python(text), dtype=np.uint32)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._bytes
        ids = checked_ids(ids, len(table))
        return b"".join(table[i] for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 (an id sequence cut inside a
        character) become the replacement character U+FFFD rather than an error."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decoder(self) -> IncrementalDecoder:
        return _BytesDecoder(self)

    # ------------------------------------------------------------------ the algorithm in Python

    def encode_python(self, text: str, allowed_special: Collection[str] | str = ()) -> list[int]:
        """The same ids as `encode`, computed step by step in Python (slow; for reading)."""
        allowed = self._allowed(allowed_special)
        ids: list[int] = []
        pieces = [text]
        if allowed:  # cut the text at the allowed special tokens, longest first
            alternatives = "|".join(map(re.escape, sorted(allowed, key=len, reverse=True)))
            pieces = re.split(f"({alternatives})", text)
        for piece in pieces:
            if piece in allowed:
                ids.append(self.special_tokens[piece])
                continue
            for chunk in self._regex.findall(piece):
                ids.extend(self._encode_chunk(chunk))
        return ids

    def merge_steps(self, chunk: str) -> list[list[bytes]]:
        """How one chunk is merged: the token list before any merge, then after each one."""
        parts = [bytes([b]) for b in chunk.encode("utf-8")]
        steps = [parts]
        while len(parts) > 1:
            pair = min(pairwise(parts), key=lambda p: self._merge_rank.get(p, float("inf")))
            if pair not in self._merge_rank:
                break
            parts = _merge(parts, pair, pair[0] + pair[1])
            steps.append(parts)
        return steps

    def _encode_chunk(self, chunk: str) -> list[int]:
        cached = self._cache.get(chunk)
        if cached is None:
            cached = [self.ranks[t] for t in self.merge_steps(chunk)[-1]]
            if len(self._cache) < 100_000:
                self._cache[chunk] = cached
        return cached

    def _allowed(self, allowed_special: Collection[str] | str) -> set[str]:
        if allowed_special == "all":
            return set(self.special_tokens)
        allowed = set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise GptlabError(
                f"not special tokens of this vocabulary: {', '.join(sorted(unknown))} "
                f"(it has: {', '.join(self.special_tokens) or 'none'})"
            )
        return allowed

    def _tiktoken_encoding(self):
        """tiktoken merges the adjacent pair whose *result* has the lowest rank; the reference
        algorithm merges the pair learned first. The two agree when every multi-byte token is
        made by exactly one merge and ids grow in merge order, which holds for GPT-2's files and
        for vocabularies trained here. Otherwise (None) encoding stays in Python."""
        results = [a + b for a, b in self.merges]
        made = set(results)
        increasing = all(self.ranks[x] < self.ranks[y] for x, y in pairwise(results))
        multi_byte = sum(len(t) > 1 for t in self.ranks)
        if len(made) != len(results) or not increasing or multi_byte != len(made):
            return None
        import tiktoken

        return tiktoken.Encoding(
            name=f"gptlab-bpe-{self.vocab_size}",
            pat_str=PATTERNS.get(self.pattern, self.pattern),
            mergeable_ranks=self.ranks,
            special_tokens=self.special_tokens,
        )

    # ------------------------------------------------------------------ files

    def save(self, directory: str | os.PathLike) -> None:
        """vocab.json + merges.txt in GPT-2's format, plus gptlab_tokenizer.json (pattern,
        special tokens), which GPT-2's own files lack and do not need."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = {gpt2.token_to_str(t): i for t, i in self.ranks.items()}
        vocab.update(self.special_tokens)
        vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
        merges = [(gpt2.token_to_str(a), gpt2.token_to_str(b)) for a, b in self.merges]
        gpt2.write_files(directory, vocab, merges)
        eot = next((t for t, i in self.special_tokens.items() if i == self._eot_id), None)
        atomic_write_json(
            directory / CONFIG_FILE,
            {
                "kind": "bpe",
                "pattern": self.pattern,
                "special_tokens": self.special_tokens,
                "eot_token": eot,
            },
        )

    @classmethod
    def load(cls, directory: str | os.PathLike) -> BPETokenizer:
        """Read vocab.json + merges.txt (or encoder.json + vocab.bpe) and, if present,
        gptlab_tokenizer.json. Without it: GPT-2's pattern, and the vocabulary entries outside
        the byte alphabet (such as <|endoftext|>) are the special tokens."""
        directory = Path(directory)
        files = gpt2.find_files(directory)
        if files is None:
            names = ", or ".join(" + ".join(p) for p in gpt2.FILE_NAMES)
            raise GptlabError(f"{directory}: no BPE files (looked for {names})")
        vocab_path, merges_path = files
        vocab = gpt2.read_vocab(vocab_path)
        settings = _read_settings(directory / CONFIG_FILE, vocab)
        merges: list[tuple[bytes, bytes]] = []
        made: set[str] = set()
        for line, a, b in gpt2.read_merges(merges_path):
            for token in (a, b, a + b):
                if token not in vocab:
                    raise GptlabError(
                        f"{merges_path}, line {line}: {token!r} is not in {vocab_path.name}"
                    )
            merges.append((gpt2.str_to_token(a), gpt2.str_to_token(b)))
            made.add(a + b)
        # Special tokens: as listed by gptlab's file, else whatever no merge makes and is not
        # a single byte (GPT-2's <|endoftext|>).
        special_names = settings.get("special_tokens")
        ranks: dict[bytes, int] = {}
        specials: dict[str, int] = {}
        for text, i in vocab.items():
            token = gpt2.str_to_token(text)
            if special_names is not None:
                is_special = text in special_names
            else:
                is_special = token is None or (len(token) > 1 and text not in made)
            if is_special:
                specials[text] = i
            elif token is None:
                raise GptlabError(f"{vocab_path}: {text!r} is not written in the byte alphabet")
            else:
                ranks[token] = i
        eot = settings.get("eot_token", gpt2.EOT)
        try:
            return cls(ranks, merges, specials, settings.get("pattern", "gpt2"), eot)
        except GptlabError as e:
            raise GptlabError(f"{directory}: {e}") from e

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"pattern={self.pattern if self.pattern in PATTERNS else 'custom'!r}, "
            f"special_tokens={self.special_tokens})"
        )


class _BytesDecoder(IncrementalDecoder):
    """Bytes in, complete characters out: a UTF-8 sequence split across tokens waits."""

    def __init__(self, tokenizer: BPETokenizer) -> None:
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, ids: Iterable[int]) -> str:
        return self._utf8.decode(self.tokenizer.decode_bytes(ids))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


# Text every pre-tokenizer pattern must cut into pieces that join back to it whole: a pattern
# that skips any of it would make encode() drop text without a word.
_COVERAGE_PROBE = "It's 2024: naïve café, 北京 €5.\n\n\tx  y \r\n'LL 123456 ?!... end "


def _compile_pattern(pattern: str) -> regex.Pattern:
    """A key of PATTERNS or a regular expression, checked to cover all text."""
    if not isinstance(pattern, str) or not pattern:
        raise GptlabError(f"pattern must be {' or '.join(PATTERNS)} or a regular expression")
    try:
        compiled = regex.compile(PATTERNS.get(pattern, pattern))
    except regex.error as e:
        raise GptlabError(f"pattern {pattern!r} is not a regular expression ({e})") from None
    pieces = compiled.findall(_COVERAGE_PROBE)
    if not all(isinstance(p, str) for p in pieces) or "".join(pieces) != _COVERAGE_PROBE:
        raise GptlabError(
            f"pattern {pattern!r} does not cover all text (encode would drop what it skips; "
            f"known patterns: {', '.join(PATTERNS)})"
        )
    return compiled


def _read_settings(path: Path, vocab: dict[str, int]) -> dict:
    """gptlab_tokenizer.json, checked: {"pattern": str, "special_tokens": {token: id},
    "eot_token": token or null}; {} where the file is absent (GPT-2's own files)."""
    if not path.is_file():
        return {}
    settings = read_json_object(path)
    unknown = sorted(set(settings) - {"kind", "pattern", "special_tokens", "eot_token"})
    if unknown:
        raise GptlabError(f"{path}: unknown entries {unknown}")
    if settings.get("kind", "bpe") != "bpe":
        raise GptlabError(f"{path}: kind must be 'bpe', got {settings['kind']!r}")
    if not isinstance(settings.get("pattern", "gpt2"), str):
        raise GptlabError(f"{path}: pattern must be a string")
    specials = settings.get("special_tokens")
    if specials is not None:
        if isinstance(specials, list) and all(isinstance(t, str) for t in specials):
            specials = {t: vocab.get(t) for t in specials}
        if not isinstance(specials, dict) or not all(
            isinstance(t, str) and i is not None and vocab.get(t) == i for t, i in specials.items()
        ):
            raise GptlabError(
                f"{path}: special_tokens must map tokens of the vocabulary to their ids"
            )
    eot = settings.get("eot_token", gpt2.EOT)
    if eot is not None and not isinstance(eot, str):
        raise GptlabError(f"{path}: eot_token must be a token or null")
    if specials is not None and eot is not None and eot not in specials:
        raise GptlabError(f"{path}: eot_token {eot!r} is not one of the special tokens")
    return settings


def _merge(parts: list, pair: tuple, new) -> list:
    """Replace every non-overlapping occurrence of `pair` in `parts`, left to right."""
    out = []
    i = 0
    while i < len(parts):
        if i + 1 < len(parts) and parts[i] == pair[0] and parts[i + 1] == pair[1]:
            out.append(new)
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return out


# ---------------------------------------------------------------------------- training


ENGINES = ("auto", "python", "rustbpe")


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (gpt2.EOT,),
    pattern: str = "gpt2",
    engine: str = "auto",
) -> BPETokenizer:
    """Learn a byte-level BPE vocabulary of `vocab_size` ids (256 bytes + merges + specials).

    The texts are cut into chunks by `pattern`; each distinct chunk is counted once with its
    frequency. Pair counts are kept up to date as merges apply, touching only the chunks that
    hold the merged pair (an index pair -> chunks), never rescanning the corpus.

    Tie-breaking (deterministic): the most frequent pair wins; among equally frequent pairs,
    the one with the smaller left id, then the smaller right id (the rule of rustbpe too).
    Ids: 0-255 are the bytes themselves, merge i makes id 256 + i, special tokens come last.
    If the corpus runs out of pairs first, the vocabulary is smaller than asked.

    engine: "python" runs the algorithm above in Python (the readable one, `_learn_merges`);
    "rustbpe" runs the same algorithm compiled, with parallel counting (the package rustbpe,
    `pip install 'gptlab[bpe]'`; GPT-2's and GPT-4's patterns only); "auto" takes rustbpe
    where it is installed and the pattern is one of those. Both give the same merges.
    """
    special_tokens = _checked_specials(texts, vocab_size, special_tokens)
    if engine not in ENGINES:
        raise GptlabError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    n_merges = vocab_size - 256 - len(special_tokens)
    compiled = _compile_pattern(pattern)  # a bad pattern: one line
    rust = _rustbpe() if engine != "python" and pattern in PATTERNS else None
    if engine == "rustbpe" and rust is None:
        why = (
            "is not installed (pip install 'gptlab[bpe]')"
            if pattern in PATTERNS
            else (f"takes the patterns {', '.join(PATTERNS)} only")
        )
        raise GptlabError(f"engine rustbpe {why}")
    if rust is not None:
        tokens, merges = _rust_merges(rust, texts, n_merges, PATTERNS[pattern])
    else:
        tokens, merges = _learn_merges(_count_chunks(texts, compiled), n_merges)
    ranks = {t: i for i, t in enumerate(tokens)}
    specials = {s: len(tokens) + k for k, s in enumerate(special_tokens)}
    eot = gpt2.EOT if gpt2.EOT in specials else None
    return BPETokenizer(
        ranks, [(tokens[a], tokens[b]) for a, b in merges], specials, pattern, eot_token=eot
    )


def _checked_specials(texts, vocab_size, special_tokens) -> list[str]:
    """train_bpe's arguments checked, one GptlabError each -> the special tokens as a list."""
    if isinstance(texts, str | bytes):  # a string is an iterable of one-character texts
        raise GptlabError("texts must be a list of strings (got one string: wrap it in [...])")
    if isinstance(special_tokens, str):
        raise GptlabError(
            f"special_tokens must be a list of strings (got the string {special_tokens!r}: "
            "wrap it in [...])"
        )
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise GptlabError(f"vocab_size must be an integer, got {vocab_size!r}")
    special_tokens = list(special_tokens)
    if not all(isinstance(t, str) and t for t in special_tokens):
        raise GptlabError("a special token must be a non-empty string")
    twice = sorted({t for t in special_tokens if special_tokens.count(t) > 1})
    if twice:
        raise GptlabError(f"special token {twice[0]!r} is given more than once")
    if vocab_size < 256 + len(special_tokens):
        raise GptlabError(
            f"vocab_size={vocab_size} is too small: 256 byte tokens + {len(special_tokens)} "
            f"special tokens need at least {256 + len(special_tokens)}"
        )
    return special_tokens


def _count_chunks(texts: Iterable[str], compiled) -> Counter[str]:
    """Each distinct chunk the pre-tokenizer cuts the texts into -> how often it occurs."""
    counts: Counter[str] = Counter()
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise GptlabError(f"texts[{i}] is {type(text).__name__}, not a string")
        counts.update(compiled.findall(text))
    if not counts:
        raise GptlabError("the training corpus is empty")
    return counts


def _rustbpe():
    """The rustbpe module, or None where it is not installed."""
    try:
        import rustbpe
    except ImportError:
        return None
    return rustbpe


def _rust_merges(rust, texts, n_merges: int, pattern: str) -> tuple[list[bytes], list]:
    """`_learn_merges` by rustbpe (the texts streamed to it, counted in parallel) -> (id ->
    bytes, the merges as id pairs). rustbpe gives each token's rank; the pair that made the
    token of rank r is what BPE with the ranks below r cuts its bytes into."""
    checked = _checked_texts(texts)
    trainer = rust.Tokenizer()
    trainer.train_from_iterator(checked, 256 + n_merges, pattern=pattern)
    if not checked.seen:
        raise GptlabError("the training corpus is empty")
    ranked = sorted(trainer.get_mergeable_ranks(), key=lambda item: item[1])
    tokens = [bytes(t) for t, _ in ranked]
    ids = {t: i for i, t in enumerate(tokens)}
    merges = []
    for r in range(256, len(tokens)):
        left, right = _two_parts(tokens[r], ids, r)
        merges.append((ids[left], ids[right]))
    return tokens, merges


class _checked_texts:
    """The texts, each checked to be a string, counting those seen (for rustbpe's iterator)."""

    def __init__(self, texts) -> None:
        self.texts = enumerate(texts)
        self.seen = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        i, text = next(self.texts)
        if not isinstance(text, str):
            raise GptlabError(f"texts[{i}] is {type(text).__name__}, not a string")
        self.seen += bool(text)
        return text


def _two_parts(token: bytes, ids: dict[bytes, int], rank: int) -> tuple[bytes, bytes]:
    """The two tokens BPE with the tokens of rank below `rank` (lowest rank merged first)
    cuts `token`'s bytes into: the merge that made it."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best = min(range(len(parts) - 1), key=lambda i: ids.get(parts[i] + parts[i + 1], rank))
        if ids.get(parts[best] + parts[best + 1], rank) >= rank:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise GptlabError(f"rustbpe's token {token!r} is not a merge of two earlier tokens")
    return parts[0], parts[1]


def _learn_merges(counts: Counter[str], n_merges: int) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Up to n_merges merges, the most frequent pair first (see train_bpe) -> (id -> bytes,
    the merges as id pairs)."""
    words = [list(chunk.encode("utf-8")) for chunk in counts]
    freqs = list(counts.values())
    tokens = [bytes([b]) for b in range(256)]  # id -> bytes
    pair_count: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (word, freq) in enumerate(zip(words, freqs, strict=True)):
        for pair in pairwise(word):
            pair_count[pair] += freq
            where[pair].add(w)

    def entry(pair: tuple[int, int]):
        return (-pair_count[pair], pair)

    heap = [entry(p) for p in pair_count]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        if -neg_count != pair_count[pair] or neg_count == 0:
            continue  # stale entry: this pair's count changed since it was pushed
        new = len(tokens)
        tokens.append(tokens[pair[0]] + tokens[pair[1]])
        merges.append(pair)
        changed: set[tuple[int, int]] = set()
        for w in where.pop(pair):
            word, freq = words[w], freqs[w]
            for old in pairwise(word):
                pair_count[old] -= freq
                changed.add(old)
            word = words[w] = _merge(word, pair, new)
            for p in pairwise(word):
                pair_count[p] += freq
                where[p].add(w)
                changed.add(p)
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, entry(p))
    return tokens, merges
