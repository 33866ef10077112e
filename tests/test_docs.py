"""The guides cannot rot: every file, function and test they name exists, every figure and
link they show exists, and every Python snippet runs."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))  # the guides: every snippet must run
GUIDES = DOCS + sorted(ROOT.glob("README*.md"))  # READMEs' snippets may need the network
REFERENCE = re.compile(r"((?:src|tests|benchmarks)/[\w/.-]+\.py)(?:::([\w.]+))?")


def ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("guide", GUIDES, ids=ids)
def test_named_files_functions_and_tests_exist(guide):
    text = guide.read_text(encoding="utf-8")
    references = REFERENCE.findall(text)
    assert references, "a guide should point to code"
    for path, name in references:
        source = ROOT / path
        assert source.is_file(), f"{guide.name} names {path}, which does not exist"
        if not name:
            continue
        code = source.read_text(encoding="utf-8")
        for part in name.split("."):
            assert re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{part}\b", code, re.M), (
                f"{guide.name} names {path}::{name}, but {part} is not defined there"
            )


@pytest.mark.parametrize("guide", GUIDES, ids=ids)
def test_figures_and_links_exist(guide):
    text = guide.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+?)(?:#[^)]*)?\)", text):
        assert (guide.parent / target).exists(), f"{guide.name} links {target}, which is missing"


@pytest.mark.parametrize("guide", DOCS, ids=ids)
def test_python_snippets_run(guide):
    text = guide.read_text(encoding="utf-8")
    for i, snippet in enumerate(re.findall(r"```python\n(.*?)```", text, re.S)):
        try:
            exec(compile(snippet, f"{guide.name}[snippet {i}]", "exec"), {})
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{guide.name} snippet {i} fails: {type(e).__name__}: {e}")


def test_both_languages_cover_the_same_sections():
    english = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")
    chinese_path = ROOT / "docs" / "concepts.zh-CN.md"
    if not chinese_path.exists():
        pytest.fail("docs/concepts.zh-CN.md is missing")
    chinese = chinese_path.read_text(encoding="utf-8")
    numbered = re.compile(r"^## (\d+)\.", re.M)
    assert numbered.findall(english) == numbered.findall(chinese)
    assert sorted(REFERENCE.findall(english)) == sorted(REFERENCE.findall(chinese))
    snippets = re.compile(r"```python\n(.*?)```", re.S)
    assert len(snippets.findall(english)) == len(snippets.findall(chinese))
