import numpy as np
import pytest
import torch

from gptlab import GptlabError, train_bpe
from gptlab.data import PreparedData, prepare
from gptlab.data.shards import token_dtype

from conftest import shared_data


def test_tinyshakespeare_char_split_is_first_90_percent(tmp_path):
    path = shared_data("tinyshakespeare.txt")
    data = prepare([str(path)], tmp_path, "char", progress=False)
    text = path.read_text(encoding="utf-8")
    assert data.meta["vocab_size"] == 65 and data.meta["dtype"] == "uint16"
    n = int(len(text) * 0.9)
    tok = data.tokenizer()
    assert len(data.splits["train"]) == n == 1_003_854
    assert tok.decode(data.splits["train"][-50:].tolist()) == text[n - 50 : n]
    assert tok.decode(data.splits["val"][:50].tolist()) == text[n : n + 50]


def test_documents_are_separated_by_eot(tmp_path):
    tok = train_bpe(["one two three " * 20], vocab_size=300)
    (tmp_path / "in").mkdir()
    for i, text in enumerate(["one two", "three one", "two three two"]):
        (tmp_path / "in" / f"{i}.txt").write_text(text)
    data = prepare([str(tmp_path / "in")], tmp_path / "out", tok, val_fraction=0.2, progress=False)
    ids = np.concatenate([data.splits["train"], data.splits["val"]]).tolist()
    expected = []
    for text in ["one two", "three one", "two three two"]:
        expected += tok.encode(text) + [tok.eot_id]
    assert ids == expected and data.meta["documents"] == 3


def test_streaming_in_chunks_with_a_pool_equals_one_pass(tmp_path):
    text = "".join(f"Line {i}: some words, and   spaces\n  indented {i}\n\n" for i in range(3000))
    (tmp_path / "big.txt").write_text(text)
    tok = train_bpe([text], vocab_size=400)
    one = prepare([str(tmp_path / "big.txt")], tmp_path / "a", tok, progress=False)
    many = prepare(
        [str(tmp_path / "big.txt")],
        tmp_path / "b",
        tok,
        chunk_bytes=5000,
        workers=2,
        progress=False,
    )
    for split in ("train", "val"):
        assert np.array_equal(one.splits[split], many.splits[split])
    assert one.splits["train"].tolist() + one.splits["val"].tolist() == tok.encode(text) + [
        tok.eot_id
    ]


def test_large_vocabulary_uses_uint32():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_windows_are_shifted_and_repeatable(tmp_path):
    (tmp_path / "t.txt").write_text("abcdefghijklmnopqrstuvwxyz" * 10)
    data = prepare([str(tmp_path / "t.txt")], tmp_path / "d", progress=False)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    s1, s2 = data.window_starts("train", 4, 8, g1), data.window_starts("train", 4, 8, g2)
    assert torch.equal(s1, s2)
    x, y = data.windows("train", s1, 8)
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(GptlabError, match="corpus is empty"):
        prepare([str(tmp_path / "empty.txt")], tmp_path / "d", progress=False)
    (tmp_path / "short.txt").write_text("to be or not")
    data = prepare([str(tmp_path / "short.txt")], tmp_path / "s", progress=False)
    with pytest.raises(GptlabError, match="the train split has 10 tokens, fewer than block_size"):
        data.check_block_size(64)
    (tmp_path / "s" / "val.bin").write_bytes(b"")
    with pytest.raises(GptlabError, match="val.bin: missing or not 2 tokens long"):
        PreparedData(tmp_path / "s")


def _tricky_text() -> str:
    """Blank lines, indentation, CRLF, digits, punctuation before newlines, non-ASCII letters:
    every place where a careless cut changes a token."""
    lines = []
    for i in range(400):
        lines.append(f"ROMEO {i}:\n  But soft! what light  through yonder window breaks?\n\n")
        lines.append(f"Ça va, Jürgen? 12345 words\r\n\n\n   indented {i}!\n \n")
    return "".join(lines)


@pytest.mark.parametrize("kind", ["char", "gpt2-files", "bpe-gpt2", "bpe-gpt4"])
@pytest.mark.parametrize("chunk_bytes", [150, 333, 1000])
def test_chunked_preparation_equals_one_pass_for_every_tokenizer(kind, chunk_bytes, tmp_path):
    from gptlab.data.corpus import Document
    from gptlab.data.shards import _pieces
    from gptlab.tokenizers import Tokenizer

    text = _tricky_text()
    (tmp_path / "t.txt").write_text(text, newline="")
    if kind == "char":
        tok = "char"
    elif kind == "gpt2-files":
        tok = Tokenizer.from_pretrained(shared_data("gpt2-tokenizer"))
        assert tok.encode("a\n\n") == tok.encode("a") + [628]  # the merge a cut could break
    else:
        tok = train_bpe([text], vocab_size=420, pattern=kind.removeprefix("bpe-"))
    one = prepare([str(tmp_path / "t.txt")], tmp_path / "one", tok, progress=False)
    chunked = prepare(
        [str(tmp_path / "t.txt")],
        tmp_path / "chunked",
        tok,
        chunk_bytes=chunk_bytes,
        workers=1,
        progress=False,
    )
    pieces = list(_pieces([Document("t", text)], chunk_bytes))
    assert len(pieces) > 20  # the text really was cut, many times
    for split in ("train", "val"):
        assert np.array_equal(one.splits[split], chunked.splits[split])


def test_prepare_from_python_is_as_safe_as_the_command(tmp_path):
    """gptlab.data.prepare keeps gptlab prepare's folder rules: a folder of the user's or a
    run's is refused, a failure (an empty corpus) leaves the prepared data as it was, and an
    overwrite replaces only prepared data, leaving no temp folder or lock behind."""
    (tmp_path / "a.txt").write_text("to be or not to be " * 20)
    (tmp_path / "empty.txt").write_text("")
    out = tmp_path / "data"
    first = prepare(str(tmp_path / "a.txt"), out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(GptlabError, match="already holds prepared data; pass --overwrite"):
        prepare(str(tmp_path / "a.txt"), out, progress=False)
    with pytest.raises(GptlabError, match="corpus is empty"):
        prepare(str(tmp_path / "empty.txt"), out, overwrite=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "data", "empty.txt"]

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.bin").write_bytes(b"mine")
    with pytest.raises(GptlabError, match="holds train.bin but no prepared data"):
        prepare(str(tmp_path / "a.txt"), mine, overwrite=True, progress=False)
    assert (mine / "train.bin").read_bytes() == b"mine"
    (mine / ".gptlab-run").write_text("")  # a run's folder, and a folder inside one
    with pytest.raises(GptlabError, match="is a training run's folder"):
        prepare(str(tmp_path / "a.txt"), mine, overwrite=True, progress=False)
    with pytest.raises(GptlabError, match="is inside the training run"):
        prepare(str(tmp_path / "a.txt"), mine / "sub", progress=False)
    assert not (mine / "sub").exists()

    (tmp_path / "b.txt").write_text("xyz " * 50)
    again = prepare(str(tmp_path / "b.txt"), out, overwrite=True, progress=False)
    assert again.meta["vocab_size"] == 4 != first.meta["vocab_size"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a.txt", "b.txt", "data", "empty.txt", "mine"]
    )


def test_a_failed_prepare_removes_only_the_folders_it_made(tmp_path, monkeypatch):
    """Two prepares into new sibling folders (data/wiki, data/books) start while data/ does not
    exist; the second fails after the first has finished: it removes its own folder, never
    data/ with the first one's data (it once removed the outermost folder it had seen missing)."""
    from gptlab.data import shards

    (tmp_path / "a.txt").write_text("to be or not to be " * 20)
    real = shards.tokenize_into

    def sibling_finishes_then_this_fails(*args, **kwargs):
        monkeypatch.setattr(shards, "tokenize_into", real)  # the sibling's own work is real
        prepare(str(tmp_path / "a.txt"), tmp_path / "data" / "wiki", progress=False)
        raise KeyboardInterrupt  # Ctrl-C in the second prepare

    monkeypatch.setattr(shards, "tokenize_into", sibling_finishes_then_this_fails)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(tmp_path / "a.txt"), tmp_path / "data" / "books", progress=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["wiki"]
    assert PreparedData(tmp_path / "data" / "wiki").meta["train_tokens"] > 0


def test_a_prepare_killed_while_moving_in_is_replaced_by_the_next(tmp_path):
    """A kill between removing the old files and writing meta.json left a folder that
    --overwrite refused for good ("holds train.bin but no prepared data"): the mark it leaves
    while moving says the folder is prepare's own."""
    from gptlab.data.shards import MOVING

    (tmp_path / "a.txt").write_text("to be or not to be " * 20)
    out = tmp_path / "data"
    prepare(str(tmp_path / "a.txt"), out, progress=False)
    (out / "meta.json").unlink()  # as a kill mid-move leaves it
    (out / MOVING).touch()
    again = prepare(str(tmp_path / "a.txt"), out, overwrite=True, progress=False)
    assert again.meta["train_tokens"] > 0 and not (out / MOVING).exists()


def test_prepare_into_the_current_folder(tmp_path, monkeypatch):
    """--out . : the lock and the temporary folder are named after the folder itself, beside
    it (they once landed inside it, so an empty folder counted as not empty)."""
    (tmp_path / "a.txt").write_text("to be or not to be " * 20)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    prepare(str(tmp_path / "a.txt"), ".", progress=False)
    assert (tmp_path / "here" / "meta.json").is_file() and not list(tmp_path.glob(".*.lock"))
