import os
import stat

import pytest

from gptlab.fileio import atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_an_atomic_write_has_the_permissions_a_plain_open_gives(tmp_path, umask):
    before = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}\n")
        with open(tmp_path / "plain.json", "w") as f:
            f.write("{}\n")
    finally:
        os.umask(before)
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "plain.json"]


def test_a_saved_model_is_readable_as_other_files_are(tmp_path):
    """safetensors writes through a temporary file of its own, made 0600: a model shared on a
    team's disk could not be read by the others."""
    from gptlab import GPT, GPTConfig

    before = os.umask(0o022)
    try:
        GPT(GPTConfig.preset("tiny")).save_pretrained(tmp_path)
    finally:
        os.umask(before)
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_an_atomic_write_never_changes_the_umask(tmp_path, monkeypatch):
    """Reading the umask means setting it (to 0, for a moment): another thread's files made
    in that moment were world-writable. The kernel applies it instead."""
    calls = []
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or 0o022)
    atomic_write_text(tmp_path / "a.txt", "x")
    assert calls == [] and (tmp_path / "a.txt").read_text() == "x"
