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
