"""Files a user may have edited by hand, given arbitrary JSON: each loader either loads a valid
object or raises GptlabError (one clear line), never another exception.

Hypothesis draws JSON values of every shape; half of them are built around the keys each file
really has, so that wrong types reach deep into the checks rather than failing at the top.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptlab.errors import GptlabError
from gptlab.model.hf import read_config
from gptlab.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, train_bpe

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def objects_with(keys: list[str]):
    """JSON objects whose keys are mostly the real ones, with values of any shape."""
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=5), JSON, max_size=len(keys))


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, allow_nan=True), encoding="utf-8")


def loads_or_says_why(load, *args):
    try:
        return load(*args)
    except GptlabError as e:
        assert "\n" not in str(e)
        return None


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bpe")
    train_bpe(["the cat sat on the mat, the end\n" * 5], 270).save(folder)
    return folder


CONFIG_KEYS = [
    "vocab_size",
    "n_positions",
    "n_ctx",
    "n_embd",
    "n_layer",
    "n_head",
    "layer_norm_epsilon",
    "resid_pdrop",
    "model_type",
    "gptlab",
]


@FUZZ
@given(value=JSON | objects_with(CONFIG_KEYS))
def test_config_json(value):
    with tempfile.TemporaryDirectory() as d:
        write_json(Path(d) / "config.json", value)
        config = loads_or_says_why(read_config, Path(d))
    if config is not None:
        assert config.n_embd % config.n_head == 0 and config.vocab_size >= 1


@FUZZ
@given(value=JSON | objects_with(["kind", "chars"]))
def test_char_vocab_json(value):
    with tempfile.TemporaryDirectory() as d:
        write_json(Path(d) / "char_vocab.json", value)
        tok = loads_or_says_why(Tokenizer.from_pretrained, d)
    if tok is not None:
        assert isinstance(tok, CharTokenizer)
        assert tok.decode(tok.encode("".join(tok.chars))) == "".join(tok.chars)


@FUZZ
@given(value=JSON | objects_with(["kind", "pattern", "special_tokens", "eot_token"]))
def test_gptlab_tokenizer_json(bpe_folder, value):
    with tempfile.TemporaryDirectory() as d:
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(bpe_folder / name, Path(d) / name)
        write_json(Path(d) / "gptlab_tokenizer.json", value)
        tok = loads_or_says_why(BPETokenizer.load, d)
    if tok is not None:  # whatever it accepted encodes every text and decodes it back
        text = "the cat, 北京 and\n\n  café 42!"
        assert tok.decode(tok.encode(text)) == text


@FUZZ
@given(value=JSON | st.dictionaries(st.text(max_size=4), JSON, max_size=6))
def test_vocab_json(bpe_folder, value):
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(bpe_folder / "merges.txt", Path(d) / "merges.txt")
        write_json(Path(d) / "vocab.json", value)
        loads_or_says_why(BPETokenizer.load, d)


@FUZZ
@given(lines=st.lists(st.text(max_size=10), max_size=6))
def test_merges_txt(bpe_folder, lines):
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(bpe_folder / "vocab.json", Path(d) / "vocab.json")
        (Path(d) / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
        loads_or_says_why(BPETokenizer.load, d)
