"""parallelize: what it applies, in its order, and that activation checkpointing really
recomputes each block in the backward pass (the weights it trains are tested equal in
tests/train/test_fsdp.py)."""

import torch

from gptlab import GPT, GPTConfig
from gptlab.config import TrainConfig
from gptlab.model.gpt import MLP, Block
from gptlab.train.distributed import Dist
from gptlab.train.parallel import CheckpointedBlock, parallelize


def mlp_runs(model, monkeypatch) -> int:
    """How often an MLP runs in one training forward and backward pass (counted in its forward
    itself: module hooks do not fire while checkpointing recomputes)."""
    runs = []
    forward = MLP.forward
    monkeypatch.setattr(MLP, "forward", lambda self, x: runs.append(1) or forward(self, x))
    x = torch.randint(0, model.config.vocab_size, (2, 8))
    model(x, targets=x).loss.backward()
    monkeypatch.undo()
    return len(runs)


def test_activation_checkpointing_recomputes_each_block_once_in_the_backward_pass(monkeypatch):
    config = GPTConfig.preset("tiny", block_size=16, vocab_size=40)
    plain, checkpointed = GPT(config).train(), GPT(config).train()
    keys = list(checkpointed.state_dict())
    net = parallelize(
        checkpointed,
        TrainConfig(activation_checkpointing=True),
        torch.device("cpu"),
        Dist(),
        sharded=False,
    )
    assert net is checkpointed  # nothing to compile or wrap here
    assert all(type(b) is CheckpointedBlock for b in checkpointed.transformer.h)
    assert list(checkpointed.state_dict()) == keys  # a class swap: the same names
    assert mlp_runs(plain, monkeypatch) == 2  # two blocks, once each
    assert mlp_runs(checkpointed, monkeypatch) == 4  # and once more in the backward pass
    with torch.no_grad():  # evaluation keeps nothing for a backward pass: no recomputation
        checkpointed.eval()
        x = torch.randint(0, 40, (1, 4))
        torch.testing.assert_close(checkpointed(x).logits, checkpointed(x).logits)


def test_without_settings_the_model_is_left_as_it_is():
    model = GPT(GPTConfig.preset("tiny", block_size=16, vocab_size=40))
    assert parallelize(model, TrainConfig(), torch.device("cpu"), Dist(), sharded=False) is model
    assert all(type(b) is Block for b in model.transformer.h)
