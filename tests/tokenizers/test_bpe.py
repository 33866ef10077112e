"""Byte-level BPE: training, the tiktoken path against the Python one and against `tokenizers`,
round trips over arbitrary text, streaming decode."""

import re
from collections import Counter
from itertools import pairwise

import pytest
import regex
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gptlab import BPETokenizer, CharTokenizer, GptlabError, Tokenizer, train_bpe
from gptlab.tokenizers.bpe import PATTERNS

from conftest import shared_data

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "All:\nResolved. resolved.\n\nFirst Citizen:\nFirst, you know Caius Marcius is chief enemy "
    "to the people.\n\nAll:\nWe know't, we know't.\n\n"
    "Numbers 1234567 and 2024; naïve café, Ελληνικά, 日本語, emoji 😀👍🏽!\n"
) * 3


@pytest.fixture(scope="module")
def trained() -> BPETokenizer:
    return train_bpe([CORPUS], vocab_size=400)


def naive_train(text: str, n_merges: int, pattern: str = "gpt2") -> list[tuple[bytes, bytes]]:
    """Reference trainer: recount every pair over every chunk before each merge; ties go to
    the smaller left id, then the smaller right id (bytes are ids 0-255, merge i is 256 + i)."""
    chunks = Counter(regex.findall(PATTERNS[pattern], text))
    words = {c: [bytes([b]) for b in c.encode()] for c in chunks}
    ids = {bytes([b]): b for b in range(256)}
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for c, w in words.items():
            for p in pairwise(w):
                pairs[p] += chunks[c]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], ids[p[0]], ids[p[1]]))
        merges.append(best)
        ids[best[0] + best[1]] = 255 + len(merges)
        for c, w in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[c] = out
    return merges


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_incremental_training_equals_full_recount(pattern):
    tok = train_bpe([CORPUS], vocab_size=256 + 120 + 1, pattern=pattern, engine="python")
    assert tok.merges == naive_train(CORPUS, 120, pattern)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_the_compiled_engine_learns_the_same_merges(pattern):
    """rustbpe (the default where installed) and the Python trainer: the same merges and ids,
    to the end of the corpus's pairs, special tokens after them."""
    pytest.importorskip("rustbpe")
    text = shared_data("tinyshakespeare.txt").read_text(encoding="utf-8")[:300_000]
    for vocab_size in (400, 3000, 100_000):  # (the last runs out of pairs first)
        fast = train_bpe([text, CORPUS], vocab_size, ["<|endoftext|>", "<|pad|>"], pattern)
        slow = train_bpe(
            [text, CORPUS], vocab_size, ["<|endoftext|>", "<|pad|>"], pattern, engine="python"
        )
        assert fast.merges == slow.merges and fast.ranks == slow.ranks, vocab_size
        assert fast.special_tokens == slow.special_tokens
    with pytest.raises(GptlabError, match="the training corpus is empty"):
        train_bpe(["", ""], 300, engine="rustbpe")
    with pytest.raises(GptlabError, match="takes the patterns gpt2, gpt4 only"):
        train_bpe([CORPUS], 300, pattern=r"\w+|\W+", engine="rustbpe")


def test_ids_layout_and_determinism(trained):
    assert trained.vocab_size == 400 and trained.eot_id == 399
    assert all(trained.ranks[bytes([b])] == b for b in range(256))
    assert [trained.ranks[a + b] for a, b in trained.merges] == list(range(256, 399))
    assert train_bpe([CORPUS], vocab_size=400).merges == trained.merges


def test_fast_path_equals_python_path(trained):
    assert trained.fast
    text = CORPUS + " unseen words: zyxw, QUUX 98765 <|endoftext|>\r\n\t end"
    assert trained.encode(text) == trained.encode_python(text)
    both = "a<|endoftext|>b"
    ids = trained.encode(both, allowed_special="all")
    assert ids == trained.encode_python(both, allowed_special="all")
    assert trained.eot_id in ids and trained.eot_id not in trained.encode(both)


def test_saved_folder_loads_in_tokenizers_with_equal_ids(trained, tmp_path):
    import tokenizers as hf_tokenizers

    trained.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "vocab.json",
        "merges.txt",
        "gptlab_tokenizer.json",
    }
    hf = hf_tokenizers.Tokenizer(
        hf_tokenizers.models.BPE.from_file(
            str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")
        )
    )
    hf.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = CORPUS + "Something new, never seen: Qwertyuiop 0xDEADBEEF ✓"
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.encode(text) == hf.encode(text).ids == trained.encode(text)
    assert again.special_tokens == {"<|endoftext|>": 399} and again.pattern == "gpt2"


def test_tinyshakespeare_4096_equals_tokenizers(tmp_path):
    import tokenizers as hf_tokenizers

    text = shared_data("tinyshakespeare.txt").read_text(encoding="utf-8")
    tok = train_bpe([text], vocab_size=4096)
    assert tok.vocab_size == 4096 and tok.fast
    tok.save(tmp_path)
    hf = hf_tokenizers.Tokenizer(
        hf_tokenizers.models.BPE.from_file(
            str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")
        )
    )
    hf.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    ids = Tokenizer.from_pretrained(tmp_path).encode(text)
    assert hf.encode(text).ids == ids
    assert len(ids) < len(text) / 3  # 4096 ids compress Shakespeare more than 3x


def test_gpt4_pattern_is_saved_and_used(tmp_path):
    tok = train_bpe([CORPUS], vocab_size=300, pattern="gpt4")
    tok.save(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.pattern == "gpt4"
    assert again.encode("1234567") == again.encode_python("1234567")
    # the gpt4 pattern cuts digits into groups of at most three
    assert [again.decode([i]) for i in again.encode_python("1234567")][0] != "1234567"


def test_special_tokens_option():
    tok = train_bpe([CORPUS], vocab_size=300, special_tokens=["<|pad|>", "<|sep|>"])
    assert tok.special_tokens == {"<|pad|>": 298, "<|sep|>": 299} and tok.eot_id is None
    assert train_bpe([CORPUS], vocab_size=260, special_tokens=[]).special_tokens == {}


def test_bad_training_input():
    with pytest.raises(GptlabError, match="vocab_size=200 is too small.*at least 257"):
        train_bpe([CORPUS], vocab_size=200)
    with pytest.raises(GptlabError, match="training corpus is empty"):
        train_bpe(["", ""], vocab_size=300)


def test_small_corpus_runs_out_of_pairs():
    tok = train_bpe(["ab ab"], vocab_size=1000)
    assert tok.vocab_size < 1000 and tok.encode("ab ab") == tok.encode_python("ab ab")


def test_merge_steps_show_the_algorithm(trained):
    steps = trained.merge_steps(" speak")
    assert steps[0] == [b" ", b"s", b"p", b"e", b"a", b"k"]
    assert len(steps) > 1 and b"".join(steps[-1]) == b" speak"
    assert all(len(b) == len(a) - 1 for a, b in pairwise(steps))


# ----------------------------------------------------------------------------- round trips

ANY_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),  # everything encodable, control characters included
        st.sampled_from(
            list("日本語中文한국어😀👍🏽\u0301\u200d  \n\t\r")
        ),  # CJK, emoji, combining
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_trained_round_trip(text):
    tok = _trained_cache()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids == tok.encode_python(text)


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_gpt2_round_trip(text):
    tok = _gpt2_cache()
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(ANY_TEXT)
def test_streaming_decoder_yields_only_complete_characters(text):
    assume("\ufffd" not in text)
    tok = _trained_cache()
    dec = tok.decoder()
    pieces = [dec.step([i]) for i in tok.encode(text)]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) + dec.flush() == text


def test_decoding_inside_a_character_gives_replacement_not_error(trained):
    ids = trained.encode("😀")  # four bytes; with few merges, several ids
    assert len(ids) > 1
    assert trained.decode(ids[:-1]).endswith("\ufffd")
    dec = trained.decoder()
    assert dec.step(ids[:-1]) == ""  # held back until complete
    assert dec.flush() == "\ufffd"  # the stream ended inside a character


_CACHE: dict = {}


def _trained_cache() -> BPETokenizer:
    if "trained" not in _CACHE:
        _CACHE["trained"] = train_bpe([CORPUS], vocab_size=400)
    return _CACHE["trained"]


def _gpt2_cache() -> BPETokenizer:
    if "gpt2" not in _CACHE:
        _CACHE["gpt2"] = Tokenizer.from_pretrained(shared_data("gpt2-tokenizer"))
    return _CACHE["gpt2"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(texts="abc abc abd"), "texts must be a list of strings"),
        (dict(vocab_size="300"), "vocab_size must be an integer, got '300'"),
        (dict(texts=[b"bytes"]), "texts[0] is bytes, not a string"),
        (dict(texts=[None]), "texts[0] is NoneType, not a string"),
        (dict(pattern="nonsense"), "pattern 'nonsense' does not cover all text"),
        (dict(pattern="("), "pattern '(' is not a regular expression"),
        (dict(special_tokens="<|endoftext|>"), "special_tokens must be a list of strings"),
    ],
)
def test_train_bpe_checks_its_arguments(kwargs, message):
    """The Python API's wrong types are one GptlabError with the reason (they were raw
    TypeErrors, regex errors, or a wrong explanation such as "the corpus is empty")."""
    args = {"texts": ["abc abc abd"], "vocab_size": 300, **kwargs}
    with pytest.raises(GptlabError, match=re.escape(message)):
        train_bpe(args.pop("texts"), args.pop("vocab_size"), **args)


def test_decode_refuses_ids_out_of_range():
    """-1 once decoded to the last token (Python's negative index)."""
    bpe = train_bpe(["abc abc abd"], 260)
    chars = CharTokenizer.from_text("abc")
    for tok in (bpe, chars):
        assert tok.decode(tok.encode("abc")) == "abc"
        for bad in (-1, tok.vocab_size, 1.0):
            with pytest.raises(GptlabError, match="out of range"):
                tok.decode([0, bad])
