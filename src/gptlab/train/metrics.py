"""What a run reports: the progress bar, metrics.jsonl, TensorBoard and loss.png."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from gptlab import figures


class Logger:
    """Progress bar, metrics.jsonl and TensorBoard, on rank 0 only."""

    def __init__(self, out: Path, main: bool, progress: bool, total: int, initial: int) -> None:
        self.main = main
        self.out = out
        self.bar = None
        self.writer = None
        if not main:
            return
        if progress:
            import sys

            from tqdm import tqdm

            interval = 0.5 if sys.stderr.isatty() else 30.0  # logs and pipes: a line per 30 s
            self.bar = tqdm(
                total=total, initial=initial, desc="train", unit="step", mininterval=interval
            )
        self._last_postfix = 0.0

    def set_total(self, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def step(
        self, step: int, loss: float, lr: float, tokens_per_s: float, mfu: float | None = None
    ) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.perf_counter()
        if now - self._last_postfix > 0.5:  # refreshing text every step costs time
            shown = dict(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
            if mfu is not None:
                shown["mfu"] = f"{100 * mfu:.1f}%"
            self.bar.set_postfix(**shown, refresh=False)
            self._last_postfix = now

    def evaluation(self, step, losses, lr, tokens, elapsed_s, speed: dict | None = None) -> None:
        """A metrics.jsonl row; speed: tokens_per_s and mfu over the steps since the last."""
        record = {
            "step": step,
            "train_loss": round(losses["train"], 6),
            "val_loss": round(losses["val"], 6),
            "lr": lr,
            "tokens": tokens,
            "elapsed_s": round(elapsed_s, 3),
            **(speed or {}),
        }
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))
        for key in ("train_loss", "val_loss", "lr", "tokens_per_s", "mfu"):
            if key in record:
                self.writer.add_scalar(key, record[key], step)
        self.writer.flush()
        self.message(
            f"step {step}: train loss {record['train_loss']:.4f}, "
            f"val loss {record['val_loss']:.4f}, {elapsed_s:.1f}s"
        )

    def message(self, text: str) -> None:
        """A line of its own, above the progress bar (rank 0 only)."""
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def read_losses(out: Path) -> list[dict]:
    """The evaluations of OUT/metrics.jsonl as [{"step", "train_loss", "val_loss"}]: whole rows
    only (a line cut short by a crash is skipped), a loss that is not a finite number as None."""
    path = Path(out) / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            continue
        loss = {}
        for key in ("train_loss", "val_loss"):
            v = row.get(key)
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            loss[key] = v if ok else None
        rows.append({"step": row["step"], **loss})
    return rows


def plot_losses(out: Path) -> None:
    """OUT/loss.png: train and val loss against step, from metrics.jsonl."""
    rows = [r for r in read_losses(out) if None not in r.values()]
    if not rows:
        return
    fig, ax = figures.subplots(figsize=(7, 4))  # no pyplot: the caller's backend stays
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["train_loss"] for r in rows], marker="o", label="train")
    ax.plot(steps, [r["val_loss"] for r in rows], marker="o", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross entropy, nats)")
    ax.set_title(out.name, fontfamily=figures.label_fonts())  # (a folder named in Chinese)
    ax.grid(alpha=0.3)
    ax.legend()
    figures.save(fig, out / "loss.png", dpi=100)
