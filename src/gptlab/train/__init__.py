"""Training: the loop (`trainer`), AdamW and its schedule (`optim`), checkpoints that resume
exactly (`checkpoint`), and torchrun (`distributed`)."""

from gptlab.train.trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
