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


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for every `gptlab ...` line in the READMEs' and guides' bash blocks
    (torchrun's `-m gptlab ...` too), continuation lines joined, comments dropped."""
    import shlex

    found = []
    for guide in GUIDES:
        text = guide.read_text(encoding="utf-8")
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                for start, word in enumerate(words):
                    if word == "gptlab" and (start == 0 or words[start - 1] in ("&&", "-m")):
                        argv = words[start + 1 :]
                        argv = argv[: argv.index("&&")] if "&&" in argv else argv
                        found.append((f"{guide.name}: {line.strip()}", argv))
    return found


def test_every_documented_command_parses_and_runs_after_the_main_job():
    """Each command the READMEs and guides show is one the parser takes as written, and none
    that starts a training collides with the main job's out/shakespeare-char (a README line
    once did: after the main job it refused "holds another run")."""
    from gptlab.cli import build_parser

    commands = documented_commands()
    assert len(commands) > 20
    parser = build_parser()
    main_job = 0
    for where, argv in commands:
        args = parser.parse_args(argv)  # a stale flag fails here, naming nothing: see `where`
        if args.command != "train" or args.resume or args.list_settings or args.config:
            continue  # (a --config file shown beside its command names its own out)
        if not argv[1:]:
            main_job += 1  # `gptlab train`: the main job itself
            continue
        out = args.out or dict(a.split("=", 1) for a in args.settings if "=" in a).get("out")
        assert out and out != "out/shakespeare-char", f"{where}: trains into the main job's run"
    assert main_job >= 2  # both READMEs' first command


def test_the_documented_figures_folder_is_redrawn_without_asking(tmp_path):
    """`gptlab attention all --out docs/figures`, as the guide says, in a fresh clone: the
    folder holds the figures and the mark that says this command drew them."""
    import shutil

    from gptlab.cli import main

    figures = tmp_path / "figures"
    shutil.copytree(ROOT / "docs" / "figures", figures)
    assert main(["attention", "positional", "--quick", "--out", str(figures)]) == 0


def test_the_cheap_documented_commands_run_after_the_main_job(tmp_path, monkeypatch, capsys):
    """The READMEs' `gptlab train --data notes.txt ...` and `--list-settings` lines run as
    written (plus a tiny budget) in a folder where the main job's run already exists."""
    from gptlab.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "shakespeare-char").mkdir(parents=True)
    (tmp_path / "out" / "shakespeare-char" / ".gptlab-run").write_text("")  # the main job's
    (tmp_path / "notes.txt").write_text("to be or not to be, that is the question\n" * 40)
    tiny = ["max_iters=2", "eval_interval=2", "eval_iters=1", "max_time=0", "batch_size=2"]
    ran = set()
    for where, argv in documented_commands():  # (both READMEs show the same lines: once each)
        cheap = argv[:3] == ["train", "--data", "notes.txt"] or "--list-settings" in argv
        if cheap and tuple(argv) not in ran:
            assert main([*argv, *tiny] if "--data" in argv else argv) == 0, where
            ran.add(tuple(argv))
    assert len(ran) == 2
    assert (tmp_path / "out" / "notes" / "model.safetensors").is_file()
    assert "n_layer" in capsys.readouterr().out
