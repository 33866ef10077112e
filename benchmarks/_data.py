"""What every benchmark shares: where ../shared lies, and the line naming the machine."""

from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        raise SystemExit(f"{path} is absent: the benchmarks read ../shared/data beside the repo")
    return path


def print_machine() -> None:
    """Print the machine the figures below come from (CPU, cores, bfloat16 support, torch)."""
    from gptlab.hardware import describe

    print(f"machine: {describe()}", flush=True)
