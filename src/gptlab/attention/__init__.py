"""The ideas that lead to GPT-2's attention, one small module each: attention pooling and
Nadaraya-Watson regression (`pooling`), scoring functions and the masked softmax (`scoring`),
multi-head attention (`multihead`), sinusoidal positional encoding (`positional`), Bahdanau
attention in a seq2seq model (`seq2seq`), and the pictures of each (`demos`)."""

from gptlab.attention.multihead import MultiHeadAttention
from gptlab.attention.pooling import NadarayaWatson, attention_pool, gaussian_weights
from gptlab.attention.positional import PositionalEncoding, shift_matrix, sinusoidal_table
from gptlab.attention.scoring import AdditiveAttention, DotProductAttention, masked_softmax

__all__ = [
    "AdditiveAttention",
    "DotProductAttention",
    "MultiHeadAttention",
    "NadarayaWatson",
    "PositionalEncoding",
    "attention_pool",
    "gaussian_weights",
    "masked_softmax",
    "shift_matrix",
    "sinusoidal_table",
]
