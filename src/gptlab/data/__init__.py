"""Training text: sources (`corpus`) and token files on disk (`shards`)."""

from gptlab.data.corpus import Document, iter_documents, play_to_text, shakespeare
from gptlab.data.shards import PreparedData, prepare

__all__ = ["Document", "PreparedData", "iter_documents", "play_to_text", "prepare", "shakespeare"]
