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
    (tmp_path / "s" / "tokens-000000.bin").write_bytes(b"\0\0")
    with pytest.raises(GptlabError, match="tokens-000000.bin: missing or not 12 tokens long"):
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
    from gptlab.data.corpus import iter_pieces
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
    pieces = list(iter_pieces([str(tmp_path / "t.txt")], chunk_bytes))  # read in blocks, too
    assert len(pieces) > 20 and "".join(p for p, _ in pieces) == text  # cut, many times
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


# --------------------------------------------------------------------- corpus scale


def test_shards_are_one_stream_and_training_on_them_is_bitwise_the_same(tmp_path):
    """The stream cut into shards of 1,000 tokens reads back as the same tokens (windows span
    shards), and a run trained on it ends with the very weights of a run on one shard."""
    from safetensors.torch import load_file

    from gptlab import GPTConfig
    from gptlab.config import TrainConfig
    from gptlab.train import train

    text = "".join(f"line {i}: to be, or not to be\n" for i in range(600))
    (tmp_path / "t.txt").write_text(text)
    one = prepare(str(tmp_path / "t.txt"), tmp_path / "one", progress=False)
    many = prepare(str(tmp_path / "t.txt"), tmp_path / "many", shard_tokens=1000, progress=False)
    assert len(one.meta["shards"]) == 1 and len(many.meta["shards"]) == 18
    assert [n for _, n in many.meta["shards"]][:-1] == [1000] * 17
    for split in ("train", "val"):
        assert np.array_equal(np.asarray(one.splits[split]), np.asarray(many.splits[split]))
    assert np.array_equal(many.splits["train"][990:1010], one.splits["train"][990:1010])
    model = GPTConfig(vocab_size=one.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    weights = []
    for data in ("one", "many"):
        config = TrainConfig(
            data=str(tmp_path / data),
            out=str(tmp_path / f"run-{data}"),
            batch_size=4,
            max_iters=6,
            eval_interval=3,
            eval_iters=2,
            threads=1,
        )
        train(model, config, progress=False)
        weights.append(load_file(tmp_path / f"run-{data}" / "model.safetensors"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_stopped_prepare_continues_and_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """Ctrl-C in the middle keeps the work done (a progress record after every chunk); the same
    call continues from there (said on the terminal) and writes the same bytes as a prepare that
    was never stopped; other settings start afresh."""
    from gptlab.data import shards

    text = "".join(f"Line {i}: some words, and more words.\n" for i in range(4000))
    (tmp_path / "t.txt").write_text(text)
    tok = train_bpe([text[:5000]], vocab_size=300)
    settings = dict(chunk_bytes=4000, shard_tokens=7000, workers=1, progress=False)
    whole = prepare(str(tmp_path / "t.txt"), tmp_path / "whole", tok, **settings)
    real, calls = shards._encode_chunk, []

    def stopped(chunk, tokenizer=None):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return real(chunk, tokenizer)

    monkeypatch.setattr(shards, "_encode_chunk", stopped)
    out = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        prepare(str(tmp_path / "t.txt"), out, tok, **settings)
    kept = tmp_path / ".data.prepare.tmp"
    assert not out.exists() and (kept / "progress.json").is_file()
    monkeypatch.setattr(shards, "_encode_chunk", real)
    calls.clear()
    again = prepare(str(tmp_path / "t.txt"), out, tok, **{**settings, "progress": True})
    assert not kept.exists()
    files = sorted(p.name for p in whole.directory.iterdir())
    assert files == sorted(p.name for p in out.iterdir()) and "tokens-000003.bin" in files
    for name in files:
        assert (out / name).read_bytes() == (whole.directory / name).read_bytes(), name
    assert again.meta == whole.meta


def test_a_killed_prepare_continues_byte_for_byte(tmp_path):
    """SIGKILL mid-prepare (another process): the next prepare continues what it wrote."""
    import os
    import signal
    import subprocess
    import sys
    import time

    text = "".join(f"Line {i}: some words, and more words.\n" for i in range(60000))
    (tmp_path / "t.txt").write_text(text)  # 2.4 MB, 600 chunks
    args = ([str(tmp_path / "t.txt")],)
    settings = dict(chunk_bytes=4000, shard_tokens=300_000, workers=1, progress=False)
    code = (
        "import sys; from gptlab.data import prepare; "
        f"prepare(*{args!r}, out_dir={str(tmp_path / 'data')!r}, **{settings!r})"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    progress = tmp_path / ".data.prepare.tmp" / "progress.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if progress.is_file() and '"chunks": 0,' not in progress.read_text():
            break
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert progress.is_file(), "the prepare finished before the kill"
    again = prepare(*args, out_dir=tmp_path / "data", **settings)
    whole = prepare(*args, out_dir=tmp_path / "whole", **settings)
    assert again.meta == whole.meta and len(whole.meta["shards"]) == 8
    for name, _ in whole.meta["shards"]:
        assert (again.directory / name).read_bytes() == (whole.directory / name).read_bytes()


def test_jsonl_gzip_and_parquet_rows_are_documents(tmp_path):
    """Each row's text column is a document (the end-of-text id after it); --column picks the
    column; a row without it, or a line that is not JSON, is one line naming the place."""
    import gzip
    import json

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"text": "one two", "id": 1}, {"text": "three one", "id": 2}, {"text": "two", "id": 3}]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n")
    with gzip.open(tmp_path / "in" / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps(rows[2]) + "\n")
    pq.write_table(pa.table({"body": ["three two", "one"]}), tmp_path / "in" / "c.parquet")
    tok = train_bpe(["one two three " * 20], vocab_size=300)
    with pytest.raises(GptlabError, match=r"c\.parquet: no column 'text' \(columns: body\)"):
        prepare(str(tmp_path / "in"), tmp_path / "x", tok, progress=False)
    (tmp_path / "in" / "c.parquet").unlink()
    data = prepare(str(tmp_path / "in"), tmp_path / "out", tok, val_fraction=0.2, progress=False)
    ids = np.asarray(data.splits["train"]).tolist() + np.asarray(data.splits["val"]).tolist()
    assert ids == [i for r in rows for i in tok.encode(r["text"]) + [tok.eot_id]]
    assert data.meta["documents"] == 3
    pq.write_table(pa.table({"body": ["three two", "one"]}), tmp_path / "c.parquet")
    body = prepare(str(tmp_path / "c.parquet"), tmp_path / "p", tok, column="body", progress=False)
    assert body.meta["documents"] == 2
    (tmp_path / "bad.jsonl").write_text('{"text": "one"}\n{"text": \n')
    with pytest.raises(GptlabError, match=r"bad\.jsonl, line 2: not valid JSON"):
        prepare(str(tmp_path / "bad.jsonl"), tmp_path / "b", tok, progress=False)
    (tmp_path / "bad.jsonl").write_text('{"body": "one"}\n')
    with pytest.raises(GptlabError, match=r"line 1 has no field 'text' \(fields: body\); --column"):
        prepare(str(tmp_path / "bad.jsonl"), tmp_path / "b", tok, progress=False)


def test_memory_does_not_grow_with_the_corpus(tmp_path):
    """A 48 MB file prepared with 1 MB chunks: the process's peak memory grows by less than
    the file's size (what it grows by is the chunks in flight, whatever the corpus)."""
    import subprocess
    import sys

    line = "ROMEO: But soft, what light through yonder window breaks? It is the east.\n"
    with open(tmp_path / "big.txt", "w") as f:
        for _ in range(48 * 2**20 // len(line)):
            f.write(line)
    code = f"""
import resource
from gptlab.data import prepare
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prepare({str(tmp_path / "big.txt")!r}, {str(tmp_path / "out")!r}, "char", chunk_bytes=1 << 20,
        workers=1, progress=False)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""
    grown = int(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    # (about 30 MB: one 1 MB chunk's arrays; reading the file whole, as before, grew 143 MB)
    assert grown < 48, f"peak memory grew by {grown} MB for a 48 MB file"
    assert (
        PreparedData(tmp_path / "out").meta["characters"] == (tmp_path / "big.txt").stat().st_size
    )


def test_a_prepare_worker_leaves_ctrl_c_to_the_parent(tmp_path):
    """Ctrl-C reaches the whole process group: a worker that took it printed a
    KeyboardInterrupt traceback under the parent's one line."""
    import signal

    from gptlab.data import shards
    from gptlab.tokenizers import CharTokenizer

    CharTokenizer.from_text("abc").save(tmp_path)
    before = signal.getsignal(signal.SIGINT)
    try:
        shards._init_worker(str(tmp_path))
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
