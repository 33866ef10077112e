"""parallel=fsdp: FSDP2 with 2 CPU processes (gloo) trains what DDP and one process train,
its sharded checkpoints resume on any number of processes, and the run folder's consolidated
weights are the model's."""

import pytest
import torch
from _torchrun import ARGS, assert_close, final, rows, run, write_corpus

from gptlab.config import GPTConfig, TrainConfig
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.train import evaluation as evaluation_module
from gptlab.train import train
from gptlab.train import trainer as trainer_module
from gptlab.train.distributed import Dist
from gptlab.train.evaluation import Evaluation

FSDP = ["parallel=fsdp", "eval_iters=3"]  # 3 batches over 2 ranks: an uneven split


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("fsdp") / "text.txt")


def test_fsdp_equals_ddp_and_one_process_and_resumes_on_any_number(corpus, tmp_path):
    data = [*ARGS, "eval_iters=3", "--data", str(corpus)]
    run(tmp_path, *data, "--out", "ref", "max_iters=8")  # one process, ddp's format
    run(tmp_path, *data, *FSDP, "--out", "one", "max_iters=4")  # one process, sharded format
    run(tmp_path, *data, *FSDP, "--out", "two", "max_iters=4", procs=2)
    run(tmp_path, *data, "--out", "ddp", "max_iters=4", procs=2)
    # after 4 steps: fsdp (2 processes) = ddp (2 processes) = one process, weights and losses
    at4 = next(r for r in rows(tmp_path / "ref") if r["step"] == 4)
    for name in ("one", "two", "ddp"):
        assert abs(rows(tmp_path / name)[-1]["val_loss"] - at4["val_loss"]) <= 1e-5
    assert_close(final(tmp_path / "two"), final(tmp_path / "one"))
    assert_close(final(tmp_path / "ddp"), final(tmp_path / "two"))
    # each rank wrote its own part of AdamW's state, and trainer.pt holds none of it
    checkpoint = tmp_path / "two" / "checkpoint"
    assert sorted(p.name for p in (checkpoint / "optimizer").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert "optimizer" not in torch.load(checkpoint / "trainer.pt", weights_only=True)
    assert_same_logits(tmp_path / "two", tmp_path / "one")
    # 2 -> 1, 1 -> 2, and a ddp run taken over by fsdp: each ends where 8 steps in one go end
    run(tmp_path, "--resume", "two", "--no-progress", "max_iters=8")
    run(tmp_path, "--resume", "one", "--no-progress", "max_iters=8", procs=2)
    run(tmp_path, "--resume", "ddp", "--no-progress", "max_iters=8", "parallel=fsdp", procs=2)
    ref = final(tmp_path / "ref")
    for name in ("two", "one", "ddp"):
        assert_close(final(tmp_path / name), ref)
    assert rows(tmp_path / "ref")[-1]["val_loss"] < rows(tmp_path / "ref")[0]["val_loss"] - 0.1


def assert_same_logits(sharded_run, unsharded_run):
    """The consolidated export of a sharded run: its logits (in gptlab and in transformers)
    are those of the same training without sharding."""
    import transformers  # a test dependency (pyproject dev extra): never skipped

    ours = GPT.from_pretrained(sharded_run).eval()
    ids = torch.randint(
        0, ours.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        unsharded = GPT.from_pretrained(unsharded_run).eval()(ids).logits
        logits = ours(ids).logits
        hf = transformers.GPT2LMHeadModel.from_pretrained(sharded_run).eval()(ids).logits
    assert (logits - unsharded).abs().max().item() <= 1e-4
    assert (hf - logits).abs().max().item() <= 1e-5


def test_split_evaluation_equals_one_process(monkeypatch, tmp_path):
    """Rank r of N evaluates batches r, r + N, ...: the ranks' sums add up to one process's
    mean over the same batches (all_sum is the identity here, so each rank's share shows)."""
    from gptlab.data import prepare

    (tmp_path / "t.txt").write_text("abcdefghij klmnop, qrstuv wxyz.\n" * 200)
    data = prepare(str(tmp_path / "t.txt"), tmp_path / "prep", "char", progress=False)
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", block_size=16, vocab_size=data.vocab_size))
    config = TrainConfig(batch_size=3, eval_iters=5, seed=7)
    args = (model, data, config, 16, torch.device("cpu"), torch.autocast("cpu", enabled=False))
    whole = Evaluation(*args).losses(10)
    monkeypatch.setattr(evaluation_module, "all_sum", lambda d, value, device: value)
    for world in (2, 3):
        parts = [Evaluation(*args, Dist(rank=r, world=world)).losses(10) for r in range(world)]
        for split in ("train", "val"):
            assert sum(p[split] for p in parts) == pytest.approx(whole[split], rel=1e-12)


def test_activation_checkpointing_trains_the_same_weights(tmp_path):
    """Recomputing each block in the backward pass changes memory, not results (dropout too:
    the recomputation replays the same random mask)."""
    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 100)
    model_config = GPTConfig.preset("tiny", block_size=16, dropout=0.1)
    weights = []
    for on in (False, True):
        config = TrainConfig(
            data=str(tmp_path / "t.txt"),
            out=str(tmp_path / f"ac{on}"),
            batch_size=4,
            max_iters=3,
            eval_interval=3,
            eval_iters=1,
            threads=1,
            activation_checkpointing=on,
        )
        train(model_config, config, progress=False)
        weights.append(final(tmp_path / f"ac{on}")[0])
    worst = max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0])
    assert worst <= 1e-6


def test_a_sharded_checkpoint_with_a_damaged_optimizer_is_one_line(corpus, tmp_path, capsys):
    from gptlab.cli import main

    data = [*ARGS, *FSDP, "--data", str(corpus), "max_iters=2", "--out", str(tmp_path / "r")]
    assert main(["train", *data]) == 0
    shard = tmp_path / "r" / "checkpoint" / "optimizer" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "r"), "--no-progress", "max_iters=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged checkpoint" in err[0], err
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before


def test_a_model_that_cannot_fit_is_refused_with_advice_before_any_work(monkeypatch, tmp_path):
    """16 bytes per parameter for weights, gradients and AdamW state: more than the device
    holds is one line that suggests fsdp, before OUT changes (an --overwrite keeps the old
    run whole)."""
    from gptlab.train import sharding

    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 100)
    model_config = GPTConfig.preset("tiny", block_size=16)
    n = GPT(model_config.replace(vocab_size=28)).num_params()
    config = TrainConfig(
        data=str(tmp_path / "t.txt"), out=str(tmp_path / "r"), max_iters=1, eval_iters=1, threads=1
    )
    monkeypatch.setattr(sharding, "device_memory", lambda device: 16 * n - 1)
    with pytest.raises(GptlabError, match=r"more than this machine's RAM .*parallel=fsdp"):
        train(model_config, config, progress=False)
    assert not (tmp_path / "r").exists()
    monkeypatch.setattr(sharding, "device_memory", lambda device: 16 * n)  # just fits
    train(model_config, config, progress=False)
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    bigger = model_config.replace(n_layer=3)
    with pytest.raises(GptlabError, match="more than this machine's RAM"):
        train(bigger, config, overwrite=True, progress=False)
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before


def test_running_out_of_memory_is_one_line_with_advice(monkeypatch, tmp_path):
    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 100)

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(trainer_module._Run, "train_step", no_memory)
    config = TrainConfig(
        data=str(tmp_path / "t.txt"), out=str(tmp_path / "r"), max_iters=1, eval_iters=1, threads=1
    )
    with pytest.raises(GptlabError, match=r"^out of memory on cpu .*try parallel=fsdp"):
        train(GPTConfig.preset("tiny", block_size=16), config, progress=False)
