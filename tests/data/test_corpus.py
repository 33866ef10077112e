import pytest

from gptlab import GptlabError
from gptlab.data.corpus import iter_documents, play_to_text, read_text, shakespeare

PLAY = """# Hamlet

## ACT I

### SCENE I. Elsinore.

_FRANCISCO at his post. Enter to him
BERNARDO_

**BERNARDO**<br>
Who's there?

**FRANCISCO**<br>
Nay, answer me: stand, \\--and unfold yourself.<br>
_\\[Aside]_ Long live the king!

_Enter Ghost_

Still Francisco speaking.

**MARCELLUS**<br>
*Sound a horn.*<br>
__\\[Awaking]_

**HORATIO**<br>
[To ROBIN]_<br>
Friends to this ground.
""".replace("<br>", "  ")  # Markdown line breaks: two trailing spaces


def test_play_to_text_rule():
    assert play_to_text(PLAY) == (
        "BERNARDO:\nWho's there?\n\n"
        "FRANCISCO:\nNay, answer me: stand, --and unfold yourself.\nLong live the king!\n"
        "Still Francisco speaking.\n\n"
        "HORATIO:\nFriends to this ground.\n"
    )


def test_builtin_shakespeare_is_plain_text():
    plays = shakespeare()
    assert len(plays) >= 30
    text = "".join(p.text for p in plays)
    assert len(text) > 4_000_000
    assert not set("*_[]#\\") & set(text), "Markdown left in the corpus"
    hamlet = next(p for p in plays if p.name.endswith("hamlet"))
    assert "HAMLET:\nTo be, or not to be" in hamlet.text


def test_files_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("beta")
    (tmp_path / "skip.bin").write_bytes(b"\x00")
    docs = list(iter_documents([str(tmp_path)]))
    assert [d.text for d in docs] == ["alpha", "beta"]
    with pytest.raises(GptlabError, match="nope: no such file or folder"):
        list(iter_documents([str(tmp_path / "nope")]))


def test_non_utf8_file_says_where(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"line one\nline two caf\xe9\n")
    with pytest.raises(GptlabError, match=r"bad\.txt: not UTF-8 text \(byte 21, line 2\)"):
        read_text(path)


# --------------------------------------------------------------------- Hugging Face datasets


@pytest.mark.parametrize(
    "source, spec",
    [
        ("hf:wikitext", ("wikitext", None, "train", "text")),
        ("hf:org/name:test", ("org/name", None, "test", "text")),
        ("hf:name:test:story", ("name", None, "test", "story")),
        (
            "hf:wikitext:config=wikitext-2-raw-v1:split=test",
            ("wikitext", "wikitext-2-raw-v1", "test", "text"),
        ),
        ("hf:x:column=body:validation", ("x", None, "validation", "body")),
    ],
)
def test_hub_sources_name_config_split_and_column(source, spec):
    from gptlab.data.corpus import parse_hub_source

    got = parse_hub_source(source)
    assert (got["name"], got["config"], got["split"], got["column"]) == spec


def test_a_dataset_saved_to_disk_by_datasets(tmp_path, monkeypatch):
    """No network: a DatasetDict written by `datasets` itself, read by split and column."""
    import datasets  # in the dev extra: a missing one fails, never skips

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = {"story": [f"story number {i}\n" for i in range(5)], "n": list(range(5))}
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(rows),
            "test": datasets.Dataset.from_dict({"story": ["the test\n"], "n": [0]}),
        }
    ).save_to_disk(str(tmp_path / "saved"))
    docs = list(iter_documents([f"hf:{tmp_path / 'saved'}:train:story"]))
    assert [d.text for d in docs] == rows["story"]
    assert [d.text for d in iter_documents(f"hf:{tmp_path / 'saved'}:split=test:story")] == [
        "the test\n"
    ]
    with pytest.raises(GptlabError, match="no split 'dev'"):
        list(iter_documents(f"hf:{tmp_path / 'saved'}:dev:story"))
    with pytest.raises(GptlabError, match="no column 'text'"):
        list(iter_documents(f"hf:{tmp_path / 'saved'}"))
    with pytest.raises(GptlabError, match="column 'n' is not text"):
        list(iter_documents(f"hf:{tmp_path / 'saved'}:train:n"))


def test_a_dataset_configuration_is_chosen_by_name(tmp_path, monkeypatch):
    """A local dataset folder with two configurations (declared in its README, as on the hub)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "a.jsonl").write_text('{"text": "first configuration"}\n' * 3)
    (tmp_path / "b.jsonl").write_text('{"text": "second configuration"}\n' * 2)
    (tmp_path / "README.md").write_text(
        "---\nconfigs:\n- config_name: a\n  data_files: a.jsonl\n"
        "- config_name: b\n  data_files: b.jsonl\n---\n"
    )
    texts = [d.text for d in iter_documents(f"hf:{tmp_path}:config=b")]
    assert texts == ["second configuration"] * 2
    texts = [d.text for d in iter_documents(f"hf:{tmp_path}:config=a:split=train")]
    assert texts == ["first configuration"] * 3


def test_without_datasets_the_message_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(GptlabError, match=r"pip install 'gptlab\[datasets\]'"):
        list(iter_documents(["hf:wikitext"]))
