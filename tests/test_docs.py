"""The guides cannot rot: every file, test and function they name exists, and every Python
snippet runs."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = sorted((ROOT / "docs").glob("*.md"))


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_named_paths_and_functions_exist(guide):
    text = guide.read_text(encoding="utf-8")
    paths = set(re.findall(r"`((?:src|tests|benchmarks)/[\w/.-]+\.py)`", text))
    assert paths, "a guide should point to code"
    for path in paths:
        assert (ROOT / path).is_file(), f"{guide.name} names {path}, which does not exist"
    # "`name` ... in `file.py`" on one line or across a line break: the name is defined there
    for names, path in re.findall(
        r"((?:`\w+(?:\.\w+)?`(?:,|\s+and)?\s+)+)in\s+`((?:src|tests)/[\w/.-]+\.py)`", text
    ):
        source = (ROOT / path).read_text(encoding="utf-8")
        for name in re.findall(r"`(\w+(?:\.\w+)?)`", names):
            leaf = name.split(".")[-1]
            assert re.search(rf"(def|class)\s+{leaf}\b", source), f"{name} not in {path}"


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_python_snippets_run(guide):
    text = guide.read_text(encoding="utf-8")
    for i, snippet in enumerate(re.findall(r"```python\n(.*?)```", text, re.S)):
        try:
            exec(compile(snippet, f"{guide.name}[snippet {i}]", "exec"), {})
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{guide.name} snippet {i} fails: {type(e).__name__}: {e}")


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_figures_exist(guide):
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", guide.read_text(encoding="utf-8")):
        assert (guide.parent / image).is_file(), f"{guide.name} shows {image}, which is missing"
