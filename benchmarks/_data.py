"""Where the benchmarks find ../shared/data (beside the repository)."""

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        raise SystemExit(f"{path} is absent: the benchmarks read ../shared/data beside the repo")
    return path
