"""The README's set-up commands are what CI runs, in both languages."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands(name: str) -> list[str]:
    text = (ROOT / name).read_text(encoding="utf-8")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    main_job, tests = readme_commands("README.md")
    assert "pytest" in tests and "gptlab train" in main_job
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, "the README's test command must be the line .ci/run runs"


def test_chinese_readme_has_the_same_commands_and_is_linked():
    assert readme_commands("README.zh-CN.md") == readme_commands("README.md")
    assert "README.zh-CN.md" in (ROOT / "README.md").read_text(encoding="utf-8")
