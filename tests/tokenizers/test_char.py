import pytest

from gptlab import CharTokenizer, GptlabError, Tokenizer

from conftest import shared_data


def test_vocabulary_is_sorted_characters_of_the_text():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.encode("hold") == [3, 5, 4, 1]
    assert tok.decode(tok.encode("hello world")) == "hello world"
    assert tok.eot_id is None and tok.vocab_size == 8


def test_tinyshakespeare_has_65_characters():
    text = shared_data("tinyshakespeare.txt").read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == 65
    ids = tok.encode(text)
    assert len(ids) == 1_115_394 and tok.decode(ids) == text


def test_unknown_character_is_named_with_its_position():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(GptlabError, match=r"character 'z' at position 2 is not in the vocabulary"):
        tok.encode("abzc")
    assert tok.encode("abzc", replacement="a") == [0, 1, 0, 2]
    with pytest.raises(GptlabError, match="replacement '!' is not in the vocabulary"):
        tok.encode("z", replacement="!")


def test_non_bmp_characters():
    tok = CharTokenizer.from_text("a😀b")
    assert tok.decode(tok.encode("😀ab😀")) == "😀ab😀"


def test_save_and_load(tmp_path):
    tok = CharTokenizer.from_text("to be or not")
    tok.save(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    assert isinstance(again, CharTokenizer) and again.chars == tok.chars


def test_empty_text_and_corrupt_file(tmp_path):
    with pytest.raises(GptlabError, match="empty text"):
        CharTokenizer.from_text("")
    (tmp_path / "char_vocab.json").write_text('{"chars": ["b", "a"]}')
    with pytest.raises(GptlabError, match="char_vocab.json: 'chars' must be sorted"):
        Tokenizer.from_pretrained(tmp_path)


def test_incremental_decoder():
    tok = CharTokenizer.from_text("abc")
    dec = tok.decoder()
    assert dec.step([0, 1]) + dec.step([2]) + dec.flush() == "abc"
