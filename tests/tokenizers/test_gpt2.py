"""GPT-2's vocabulary: ids identical to the reference, both file namings, file errors."""

import json
import shutil

import pytest

from gptlab import BPETokenizer, GptlabError, Tokenizer
from gptlab.tokenizers.gpt2 import bytes_to_unicode

from conftest import shared_data


@pytest.fixture(scope="module")
def gpt2_dir():
    return shared_data("gpt2-tokenizer")


@pytest.fixture(scope="module")
def tok(gpt2_dir):
    return Tokenizer.from_pretrained(gpt2_dir)


@pytest.fixture(scope="module")
def reference(gpt2_dir):
    return json.loads((gpt2_dir / "REFERENCE.json").read_text(encoding="utf-8"))


def test_byte_table_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    assert all(c.isprintable() and not c.isspace() for c in table.values())


def test_loads_gpt2_files(tok):
    assert isinstance(tok, BPETokenizer) and tok.fast
    assert (tok.vocab_size, tok.eot_id, len(tok.merges)) == (50257, 50256, 50000)
    assert tok.encode("Hello world") == [15496, 995]


def test_reference_strings(tok, reference):
    for case in reference["tests"]:
        text = case["text"]
        allowed = "all" if "special" in case else ()
        assert tok.encode(text, allowed_special=allowed) == case["ids"], text
        assert tok.encode_python(text, allowed_special=allowed) == case["ids"], text
        assert tok.decode(case["ids"]) == text
        if "ids_as_ordinary_text" in case:  # special-token text in user input stays text
            assert tok.encode(text) == case["ids_as_ordinary_text"]


def test_tinyshakespeare_equals_reference_and_tokenizers(tok, reference, gpt2_dir):
    import tokenizers as hf_tokenizers

    text = shared_data("tinyshakespeare.txt").read_text(encoding="utf-8")
    ids = tok.encode(text)
    ref = reference["tinyshakespeare"]
    assert len(ids) == ref["n_tokens"] == 338_025
    assert ids[:16] == ref["first_16_ids"] and ids[-16:] == ref["last_16_ids"]
    hf = hf_tokenizers.Tokenizer(
        hf_tokenizers.models.BPE.from_file(
            str(gpt2_dir / "encoder.json"), str(gpt2_dir / "vocab.bpe")
        )
    )
    hf.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert hf.encode(text).ids == ids
    assert tok.encode_python(text[:200_000]) == tok.encode(text[:200_000])
    assert tok.decode(ids) == text


def test_vocab_json_merges_txt_naming(gpt2_dir, tmp_path, tok):
    shutil.copy(gpt2_dir / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(gpt2_dir / "vocab.bpe", tmp_path / "merges.txt")
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.encode("Hello<|endoftext|>", allowed_special="all") == [15496, 50256]


def test_save_round_trip(tok, tmp_path):
    tok.save(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    text = "Ünïcode, numbers 12345 and <|endoftext|>"
    assert again.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


def test_unknown_allowed_special_is_named(tok):
    with pytest.raises(GptlabError, match="not special tokens of this vocabulary: <|pad|>"):
        tok.encode("x", allowed_special={"<|pad|>"})


# ----------------------------------------------------------------------------- bad files


def small_files(tmp_path, vocab, merges):
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
    return tmp_path


def byte_vocab():
    return {c: i for i, c in enumerate(bytes_to_unicode().values())}


def test_merge_line_with_three_tokens_is_named(tmp_path):
    vocab = {**byte_vocab(), "ab": 256}
    folder = small_files(tmp_path, vocab, "a b\na b c\n")
    with pytest.raises(GptlabError, match=r"merges\.txt, line 3: expected two tokens"):
        Tokenizer.from_pretrained(folder)


def test_merge_of_unknown_token_is_named(tmp_path):
    folder = small_files(tmp_path, byte_vocab(), "a b\n")
    with pytest.raises(GptlabError, match=r"merges\.txt, line 2: 'ab' is not in vocab\.json"):
        Tokenizer.from_pretrained(folder)


def test_id_collision_is_named(tmp_path):
    vocab = {**byte_vocab(), "ab": 5}
    folder = small_files(tmp_path, vocab, "a b\n")
    owner = bytes_to_unicode()[5]
    with pytest.raises(
        GptlabError, match=rf"vocab\.json: id 5 is given to both '{owner}' and 'ab'"
    ):
        Tokenizer.from_pretrained(folder)


def test_missing_byte_is_named(tmp_path):
    vocab = byte_vocab()
    del vocab["a"]
    folder = small_files(tmp_path, vocab, "")
    with pytest.raises(GptlabError, match="needs all 256 bytes; missing \\[97\\]"):
        Tokenizer.from_pretrained(folder)


def test_not_json_and_empty_folder(tmp_path):
    (tmp_path / "vocab.json").write_text("{not json")
    (tmp_path / "merges.txt").write_text("")
    with pytest.raises(GptlabError, match=r"vocab\.json: cannot read the vocabulary"):
        Tokenizer.from_pretrained(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GptlabError, match="no tokenizer files"):
        Tokenizer.from_pretrained(empty)
    with pytest.raises(GptlabError, match="no such folder"):
        Tokenizer.from_pretrained(tmp_path / "missing")
