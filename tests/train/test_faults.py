"""Fault injection: a training killed at any moment, inside a checkpoint swap included, resumes
to the very weights of an uninterrupted run, with each evaluation logged once; a full disk is
one line and loses nothing."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from gptlab import GPTConfig, GptlabError
from gptlab.config import TrainConfig
from gptlab.train import train

ARGS = [
    "--preset",
    "tiny",
    "--no-progress",
    "batch_size=4",
    "block_size=16",
    "eval_iters=1",
    "eval_interval=4",
    "warmup_iters=2",
    "max_iters=12",
    "lr_decay_iters=12",
    "lr=3e-3",
    "dropout=0.1",
    "threads=1",
]
STAGES = ["weights-written", "checkpoint-written", "old-moved", "new-moved", "linked"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "text.txt"
    path.write_text("".join(f"line {i}: the quick brown fox, {i * 7 % 13}\n" for i in range(600)))
    return path


def gptlab(cwd, *args, **env):
    return subprocess.run(
        [sys.executable, "-m", "gptlab", "train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        timeout=120,
    )


def here(cwd, *args) -> int:
    """`gptlab train ARGS` in this process, in cwd (a run that is not killed needs no process
    of its own)."""
    from gptlab.cli import main

    before = os.getcwd()
    os.chdir(cwd)
    try:
        return main(["train", *args])
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    assert here(root, *ARGS, "--data", str(corpus), "--out", "run") == 0
    return load_file(root / "run" / "model.safetensors")


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A finished 8-step run folder, to be copied and damaged."""
    root = tmp_path_factory.mktemp("trained")
    assert here(root, *ARGS, "--data", str(corpus), "--out", "run", "max_iters=8") == 0
    return root / "run"


@pytest.fixture(scope="module")
def sharded_whole(corpus, tmp_path_factory):
    """The weights of an uninterrupted parallel=fsdp run."""
    root = tmp_path_factory.mktemp("sharded")
    assert here(root, *ARGS, "--data", str(corpus), "parallel=fsdp", "--out", "whole") == 0
    return load_file(root / "whole" / "model.safetensors")


def steps_logged(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def resumable(run) -> bool:
    """A checkpoint to resume: checkpoint/, or the previous one if a swap was cut short."""
    return (run / "checkpoint").is_dir() or (run / ".checkpoint.old").is_dir()


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("save", [2, 3], ids=["step-8 save", "final save"])
@pytest.mark.parametrize("stage", STAGES)
def test_killed_inside_a_checkpoint_swap_resumes_exactly(stage, save, corpus, reference, tmp_path):
    """Killed inside the step-8 checkpoint, or inside the last one (after which the resumed
    command has no step left to run, yet must leave the final weights in place)."""
    from gptlab.cli import main

    died = gptlab(
        tmp_path, *ARGS, "--data", str(corpus), "--out", "run", GPTLAB_FAULT=f"{stage}:{save}"
    )
    assert died.returncode == 137, died.stderr
    # the resume in this process (the kill needs a process of its own; the resume does not)
    assert main(["train", "--resume", str(tmp_path / "run"), "--no-progress"]) == 0
    assert same(load_file(tmp_path / "run" / "model.safetensors"), reference)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    if state["best_val_loss"] == state["last_val_loss"]:  # the final weights are the best
        assert same(load_file(tmp_path / "run" / "best" / "model.safetensors"), reference)
    assert steps_logged(tmp_path / "run") == [4, 8, 12]
    assert not any((tmp_path / "run" / name).exists() for name in (".checkpoint.tmp", ".lock"))


def test_random_kills_then_resume_end_where_an_uninterrupted_run_does(corpus, reference, tmp_path):
    rng = random.Random(0)
    args = [*ARGS, "--data", str(corpus), "--out", "run"]
    state = tmp_path / "run" / "checkpoint" / "state.json"
    for _ in range(3):  # three kills
        resume = ["--resume", "run", "--no-progress"] if resumable(tmp_path / "run") else args
        proc = subprocess.Popen(
            [sys.executable, "-m", "gptlab", "train", *resume],
            cwd=tmp_path,
            env={**os.environ, "OMP_NUM_THREADS": "1", "GPTLAB_FAULT_STEP_DELAY": "0.05"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        before = json.loads(state.read_text())["step"] if state.exists() else 0
        while time.time() < deadline and proc.poll() is None:  # wait for progress, then kill
            if state.exists() and json.loads(state.read_text())["step"] > before:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    while True:  # finish (resuming as often as it takes)
        resume = ["--resume", "run", "--no-progress"] if resumable(tmp_path / "run") else args
        result = gptlab(tmp_path, *resume)
        assert result.returncode == 0, result.stderr
        if "done:" in result.stdout:
            break
    assert same(load_file(tmp_path / "run" / "model.safetensors"), reference)
    assert steps_logged(tmp_path / "run") == [4, 8, 12]


@pytest.mark.parametrize("kind", ["OSError", "torch.save", "safetensors"])
def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous(
    kind, corpus, tmp_path, monkeypatch
):
    """A full disk as each writer reports it: an OSError, torch.save's RuntimeError ("enforce
    fail at inline_container.cc"), safetensors' SafetensorError. The step-8 save fails."""
    import safetensors.torch
    from safetensors import SafetensorError

    from gptlab.train import checkpoint

    model = GPTConfig(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=32)
    config = TrainConfig(
        data=str(corpus),
        out=str(tmp_path / "run"),
        batch_size=4,
        max_iters=8,
        eval_interval=4,
        eval_iters=1,
        lr_decay_iters=8,
        threads=1,
        max_time=0,
    )
    original = {
        "OSError": checkpoint.atomic_write,
        "torch.save": torch.save,
        "safetensors": safetensors.torch.save_file,
    }[kind]
    calls = {"n": 0}

    def second_call_fails(*args, **kwargs):
        if kind == "OSError" and not str(args[0]).endswith("trainer.pt"):
            return original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # the step-8 checkpoint
            if kind == "OSError":
                raise OSError(errno.ENOSPC, "No space left on device")
            if kind == "torch.save":
                raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos")
            raise SafetensorError("Error while serializing: IoError(No space left on device)")
        return original(*args, **kwargs)

    where = {
        "OSError": (checkpoint, "atomic_write"),
        "torch.save": (torch, "save"),
        "safetensors": (safetensors.torch, "save_file"),
    }[kind]
    monkeypatch.setattr(*where, second_call_fails)
    said = "step 8 .*(No space|enforce fail).*previous checkpoint is"
    with pytest.raises(GptlabError, match=said):
        train(model, config, progress=False)
    monkeypatch.setattr(*where, original)
    out = tmp_path / "run"
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 4
    assert not (out / ".checkpoint.tmp").exists() and not (out / ".lock").exists()
    result = train(model, config, resume=True, progress=False)
    assert result.step == 8


@pytest.mark.parametrize(
    "damage, message",
    [
        (("checkpoint/trainer.pt", b"garbage"), "cannot read the checkpoint"),
        (("checkpoint/trainer.pt", b""), "cannot read the checkpoint"),
        (("checkpoint/state.json", b'{"tokens": 3}'), "damaged checkpoint (step = None)"),
        (("checkpoint/state.json", b'{"step": -5, "tokens": 3}'), "(step = -5)"),
        (
            ("checkpoint/state.json", b'{"step": 8, "tokens": 3, "elapsed_s": "b"}'),
            "(elapsed_s = 'b')",
        ),
        (
            ("checkpoint/state.json", b'{"step": 8, "tokens": 3, "best_val_loss": "z"}'),
            "(best_val_loss = 'z')",
        ),
        (("checkpoint/state.json", b'{"step": 4,'), "cannot read the checkpoint"),
        (
            ("checkpoint/model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"),
            "cannot read safetensors",
        ),
    ],
)
def test_a_damaged_checkpoint_is_one_line_and_best_survives(
    damage, message, trained, tmp_path, capsys
):
    """In this process, through the CLI's main (tests/test_cli_bad_inputs.py runs such errors
    as separate processes)."""
    import shutil

    from gptlab.cli import main

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    best = (out / "best" / "model.safetensors").read_bytes()
    name, data = damage
    (out / name).unlink()  # (the run folder's model.safetensors is a link to it)
    (out / name).write_bytes(data)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert (out / "best" / "model.safetensors").read_bytes() == best
    assert main(["sample", str(out / "best"), "--max-new-tokens", "5"]) == 0


@pytest.mark.parametrize("damage", ["moment shape", "no param_groups", "data generator"])
def test_a_damaged_trainer_state_is_one_line_not_a_crash(damage, trained, tmp_path):
    """An optimizer moment of the wrong shape once reached AdamW's fused kernel and killed the
    process (exit 139); every damage to trainer.pt is now a line naming the file."""
    import shutil

    from gptlab.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    path = run / "checkpoint" / "trainer.pt"
    state = torch.load(path, weights_only=True)
    if damage == "moment shape":
        first = next(iter(state["optimizer"]["state"].values()))
        first["exp_avg"] = torch.zeros(2)
    elif damage == "no param_groups":
        del state["optimizer"]["param_groups"]
    else:
        state["data_generator"] = torch.zeros(3, dtype=torch.uint8)
    torch.save(state, path)
    toml = (run / "train.toml").read_text()
    assert main(["train", "--resume", str(run), "--no-progress", "max_iters=12"]) == 2
    assert (run / "train.toml").read_text() == toml  # a failed resume records nothing


@pytest.mark.parametrize("stage", ["weights-written", "new-moved"])
def test_a_sharded_checkpoint_killed_mid_save_resumes_exactly(
    stage, corpus, sharded_whole, tmp_path
):
    """parallel=fsdp writes AdamW's state sharded into the same temporary folder, swapped in
    with the rest: a kill in the step-8 save resumes to the uninterrupted run's weights."""
    args = [*ARGS, "--data", str(corpus), "parallel=fsdp"]
    died = gptlab(tmp_path, *args, "--out", "run", GPTLAB_FAULT=f"{stage}:2")
    assert died.returncode == 137, died.stderr
    assert here(tmp_path, "--resume", "run", "--no-progress") == 0
    assert same(load_file(tmp_path / "run" / "model.safetensors"), sharded_whole)
    assert (tmp_path / "run" / "checkpoint" / "optimizer" / ".metadata").is_file()
    assert not (tmp_path / "run" / ".checkpoint.tmp").exists()
