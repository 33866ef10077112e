"""The GPT-2 network (`gpt`) and its Hugging Face checkpoint format (`hf`)."""

from gptlab.model.gpt import GPT, MLP, Block, CausalSelfAttention, GPTOutput

__all__ = ["GPT", "Block", "CausalSelfAttention", "GPTOutput", "MLP"]
