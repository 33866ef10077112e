"""Training runs end to end on a tiny model: exact resume, stop requests, NaN, bad input."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from gptlab import GPT, GPTConfig, GptlabError
from gptlab.config import TrainConfig
from gptlab.train import train

MODEL = GPTConfig(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    g = torch.Generator().manual_seed(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis"]
    picks = torch.randint(len(words), (4000,), generator=g).tolist()
    path.write_text(" ".join(words[i] for i in picks) + "\n")
    return path


def settings(corpus, out, **changes) -> TrainConfig:
    base = dict(
        data=str(corpus),
        out=str(out),
        batch_size=4,
        max_iters=12,
        eval_interval=4,
        eval_iters=2,
        warmup_iters=3,
        lr_decay_iters=12,
        lr=3e-3,
        threads=1,
    )
    return TrainConfig(**{**base, **changes})


def weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def test_run_folder_holds_what_design_lists(corpus, tmp_path):
    out = tmp_path / "run"
    result = train(MODEL, settings(corpus, out), progress=False)
    assert result.step == 12 and not result.interrupted
    for name in (
        "config.json",
        "train.toml",
        "model.safetensors",
        "char_vocab.json",
        "metrics.jsonl",
        "loss.png",
        "checkpoint/trainer.pt",
        "best/model.safetensors",
    ):
        assert (out / name).exists(), name
    assert list((out / "tb").iterdir())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12]
    assert set(rows[0]) == {
        "step",
        "train_loss",
        "val_loss",
        "lr",
        "tokens",
        "elapsed_s",
        "tokens_per_s",
        "mfu",
    }
    assert rows[-1]["tokens"] == 12 * 4 * 16
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    model = GPT.from_pretrained(out)
    assert model.config.vocab_size == len(set(corpus.read_text()))  # not the preset's 256


def test_resume_is_bitwise_identical(corpus, tmp_path):
    """...and so are the snapshots (snapshots=true) the two runs keep of the same steps; a
    snapshot a crashed command left after the checkpoint resumed from goes, and the one of that
    checkpoint's evaluation, if a crash came before it, is made."""
    from gptlab.train.checkpoint import snapshots

    whole = tmp_path / "whole"
    train(MODEL, settings(corpus, whole, snapshots=True), progress=False)
    half = tmp_path / "half"
    train(MODEL, settings(corpus, half, max_iters=6, snapshots=True), progress=False)
    assert list(snapshots(half)) == [0, 4, 6]  # the untrained weights, then every evaluation
    stray = half / "snapshots" / "step-000010"  # as if a crashed command had kept it
    stray.mkdir()
    (stray / "model.safetensors").write_bytes(b"")
    (half / "snapshots" / ".step-000008.tmp").mkdir()
    shutil.rmtree(half / "snapshots" / "step-000006")  # a crash after the checkpoint's swap
    result = train(MODEL, settings(corpus, half, snapshots=True), resume=True, progress=False)
    assert result.step == 12
    a, b = weights(whole), weights(half)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    kept_whole, kept_half = snapshots(whole), snapshots(half)
    assert list(kept_whole) == [0, 4, 8, 12] and list(kept_half) == [0, 4, 6, 8, 12]
    assert sorted(p.name for p in (half / "snapshots").iterdir()) == [
        f"step-{s:06d}" for s in kept_half
    ]
    for step in kept_whole:  # each a model folder, of the weights at that step
        a, b = weights(kept_whole[step]), weights(kept_half[step])
        assert all(torch.equal(a[k], b[k]) for k in a), step
        assert (kept_whole[step] / "char_vocab.json").is_file()
    final, first = weights(whole), weights(kept_whole[0])
    assert all(torch.equal(final[k], weights(kept_whole[12])[k]) for k in final)
    assert not torch.equal(final["transformer.wte.weight"], first["transformer.wte.weight"])


def test_another_run_is_refused_unless_resume_or_overwrite(corpus, tmp_path):
    """...and an overwrite replaces the whole run: the old run's snapshots go with it (they
    once stayed, and the page showed the old run's weights as the new run's steps)."""
    out = tmp_path / "run"
    train(MODEL, settings(corpus, out, max_iters=8, snapshots=True), progress=False)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(GptlabError, match="holds another run; pass --resume .* or --overwrite"):
        train(MODEL, settings(corpus, out, max_iters=4), progress=False)
    assert (out / "model.safetensors").read_bytes() == before
    train(MODEL, settings(corpus, out, max_iters=4, seed=7), overwrite=True, progress=False)
    assert (out / "model.safetensors").read_bytes() != before
    assert not (out / "snapshots").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None, attention_mask=None):
        result = original(self, idx, targets, attention_mask)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 6:  # after the step-4 checkpoint
                result.loss = result.loss * float("nan")
        return result

    monkeypatch.setattr(GPT, "forward", forward)
    with pytest.raises(GptlabError, match="the loss became nan at step 7; stopped") as raised:
        train(MODEL, settings(corpus, out), progress=False)
    assert "the last good checkpoint in" in str(raised.value)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4
    assert torch.isfinite(next(iter(weights(out / "checkpoint").values()))).all()
    calls["n"] = 6  # the next run's first step is already NaN: there is no checkpoint to name
    with pytest.raises(GptlabError, match=r"at step 1; .*\(no checkpoint had been saved yet\)"):
        train(MODEL, settings(corpus, tmp_path / "other"), progress=False)
    assert not (tmp_path / "other").exists()  # a new folder that never held a checkpoint goes


def test_fine_tune_from_a_saved_model(corpus, tmp_path):
    base = tmp_path / "base"
    train(MODEL, settings(corpus, base, max_iters=4), progress=False)
    tuned = tmp_path / "tuned"
    # a text file: prepared with the base run's own tokenizer (its folder holds it)
    train(
        MODEL.replace(block_size=8),
        settings(corpus, tuned, max_iters=4, init_from=str(base)),
        progress=False,
    )
    model = GPT.from_pretrained(tuned)
    assert model.config.block_size == 8 and model.config.n_embd == 32
    assert (tuned / "char_vocab.json").read_text() == (base / "char_vocab.json").read_text()
    # the weights came from the base run: with a vanishing learning rate they are its own
    still = tmp_path / "still"
    train(
        MODEL.replace(block_size=8),
        settings(corpus, still, max_iters=2, init_from=str(base), lr=1e-12, min_lr=0.0),
        progress=False,
    )
    a, b = weights(base), weights(still)
    a["transformer.wpe.weight"] = a["transformer.wpe.weight"][:8]  # cropped to block_size 8
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in b)
    fresh = GPT(MODEL.replace(vocab_size=a["transformer.wte.weight"].size(0), block_size=8))
    assert not torch.allclose(
        fresh.transformer.h[0].mlp.c_fc.weight, b["transformer.h.0.mlp.c_fc.weight"], atol=1e-3
    )


def test_fine_tune_refuses_data_of_another_vocabulary(corpus, tmp_path):
    base = tmp_path / "base"
    train(MODEL, settings(corpus, base, max_iters=4), progress=False)
    other = tmp_path / "other.txt"
    other.write_text("completely different characters: XYZ 0123456789 !?\n" * 50)
    from gptlab.data import prepare

    prepare([str(other)], tmp_path / "otherdata", "char", progress=False)
    with pytest.raises(GptlabError, match="reads 15 ids, but the data was tokenized with a voc"):
        train(
            MODEL,
            settings(
                corpus,
                tmp_path / "t",
                max_iters=4,
                init_from=str(base),
                data=str(tmp_path / "otherdata"),
            ),
            progress=False,
        )


def gptlab(*args, cwd, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "gptlab", *args], capture_output=True, text=True, cwd=cwd, **kwargs
    )


def test_sigterm_saves_a_checkpoint_and_resume_finishes(corpus, tmp_path, monkeypatch, capsys):
    from gptlab.cli import main

    args = [
        "train",
        "--preset",
        "tiny",
        "--data",
        str(corpus),
        "--out",
        "run",
        "--no-progress",
        "max_iters=100000",
        "eval_interval=50",
        "eval_iters=1",
        "threads=1",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptlab", *args],
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while not (tmp_path / "run" / "checkpoint").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr  # interrupted: not a success for `train && eval`
    assert "Resume with: gptlab train --resume run" in stdout
    step = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["step"]
    assert 50 <= step < 100000
    # the stop saved at once: no evaluation at the stop step, only the scheduled ones
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(row)["step"] % 50 == 0 for row in rows)
    assert (tmp_path / "run" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # so far
    # the resume and the refusals in this process (only the signal needs a process of its own)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["train", "--resume", "run", "--no-progress", f"max_iters={step + 3}"]) == 0
    assert f"done: {step + 3} steps" in capsys.readouterr().out
    for extra, message in [
        (["--data", "x.txt"], "--data cannot apply"),
        (["--out", "elsewhere"], "--out cannot apply"),
        (["--overwrite"], "--overwrite cannot apply"),
        (["n_layer=4"], "n_layer cannot change"),
        (["--resume", "nowhere"], "nowhere: not a training run"),
    ]:
        resume = extra if extra[0] == "--resume" else ["--resume", "run", *extra]
        assert main(["train", *resume]) == 2
        assert message in capsys.readouterr().err


def test_fine_tuning_refuses_data_of_another_vocabulary_of_the_same_size(corpus, tmp_path, capfd):
    """'q' swapped for 'x': as many characters, but every id from there on means another one."""
    from gptlab.cli import main
    from gptlab.data import prepare

    settings = ["max_iters=1", "eval_interval=1", "eval_iters=1", "threads=1"]
    base = ["train", "--preset", "tiny", "--no-progress", *settings]
    assert main([*base, "--data", str(corpus), "--out", str(tmp_path / "r")]) == 0
    (tmp_path / "swap.txt").write_text(corpus.read_text().replace("q", "x"))
    prepare(str(tmp_path / "swap.txt"), tmp_path / "swap", "char", progress=False)
    prepare(str(corpus), tmp_path / "same", "char", progress=False)
    capfd.readouterr()
    tune = [*base, f"init_from={tmp_path / 'r'}"]
    assert main([*tune, "--data", str(tmp_path / "swap"), "--out", str(tmp_path / "a")]) == 2
    assert "tokenizer and the data's give the same ids other text" in capfd.readouterr().err
    assert main([*tune, "--data", str(tmp_path / "same"), "--out", str(tmp_path / "b")]) == 0


def test_padded_vocab_size_is_checked_against_the_datas_vocabulary(corpus, tmp_path, capfd):
    """The tiny preset's vocab_size (256) stands in until the data's is known: a char corpus of
    a few letters pads to 32 rows, and is refused below its own vocabulary."""
    from gptlab.cli import main

    base = ["train", "--preset", "tiny", "--data", str(corpus), "--no-progress"]
    settings = ["max_iters=1", "eval_interval=1", "eval_iters=1", "threads=1"]
    assert main([*base, "--out", str(tmp_path / "r"), *settings, "padded_vocab_size=32"]) == 0
    model = GPT.from_pretrained(tmp_path / "r")
    vocab = len(set(corpus.read_text()))
    assert model.config.vocab_size == vocab and model.transformer.wte.weight.shape[0] == 32
    capfd.readouterr()
    argv = [*base, "--out", str(tmp_path / "s"), *settings, f"padded_vocab_size={vocab - 1}"]
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert f"padded_vocab_size={vocab - 1} is smaller than vocab_size={vocab}" in err, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "gpt5"], "unknown preset 'gpt5'"),
        (["--data", "empty.txt"], "the corpus is empty"),
        (["--data", "short.txt"], "fewer than block_size + 1 = 65"),
        (["--data", "latin1.txt"], "latin1.txt: not UTF-8 text (byte 3, line 1)"),
        (["--data", "missing.txt"], "missing.txt: no such file or folder"),
        (["--out", "afile/run", "--data", "short.txt"], "afile/run"),
        (["--resume", "nowhere"], "so --preset cannot apply"),
        (["n_layers=2"], "did you mean 'n_layer'"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, message, tmp_path, monkeypatch, capfd):
    """In this process (`main` is what the console script calls; capfd also sees what torch's
    C++ would print); a corpus too short as a command too, to see the line a user sees after
    the model is built and the data read."""
    from gptlab.cli import main

    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("tiny corpus\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "afile").write_text("not a folder")
    argv = ["train", "--preset", "tiny", "--no-progress", *args]
    if args == ["--data", "short.txt"]:
        result = gptlab(*argv, cwd=tmp_path)
        code, err = result.returncode, result.stderr
    else:
        monkeypatch.chdir(tmp_path)
        code, err = main(argv), capfd.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert message in err


# ---------------------------------------------------------------- hardware-aware settings


def test_auto_dtype_is_resolved_and_recorded_for_resume(corpus, tmp_path):
    from gptlab.config import load_toml
    from gptlab.hardware import resolve_dtype

    out = tmp_path / "run"
    result = train(MODEL, settings(corpus, out, max_iters=4, dtype="auto"), progress=False)
    expected = resolve_dtype("auto", torch.device("cpu"))
    assert result.dtype == expected
    assert load_toml(str(out / "train.toml"))["dtype"] == expected  # not "auto"


def test_bfloat16_autocast_trains_and_resumes_exactly(corpus, tmp_path):
    """The dtype a machine with native bfloat16 picks: a real run (emulated here if need be)."""
    bf16 = dict(dtype="bfloat16", max_iters=8, eval_interval=4, lr_decay_iters=8)
    whole = train(MODEL, settings(corpus, tmp_path / "whole", **bf16), progress=False)
    fp32 = train(
        MODEL, settings(corpus, tmp_path / "fp32", **{**bf16, "dtype": "float32"}), progress=False
    )
    assert whole.dtype == "bfloat16" and whole.last_val_loss < 5.0
    # autocast really ran in bfloat16: same seed and data, yet not the float32 numbers
    assert whole.last_val_loss != fp32.last_val_loss
    assert abs(whole.last_val_loss - fp32.last_val_loss) < 0.1
    w = weights(tmp_path / "whole")
    assert all(t.dtype == torch.float32 for t in w.values())  # master weights stay float32
    train(MODEL, settings(corpus, tmp_path / "half", **{**bf16, "max_iters": 4}), progress=False)
    train(MODEL, settings(corpus, tmp_path / "half", **bf16), resume=True, progress=False)
    h = weights(tmp_path / "half")
    assert all(torch.equal(w[k], h[k]) for k in w)


def test_threads_setting_does_not_leak_out_of_train(corpus, tmp_path):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    train(MODEL, settings(corpus, tmp_path / "run", max_iters=2, threads=wanted), progress=False)
    assert torch.get_num_threads() == before


def test_plan_iters_fits_steps_and_evaluations():
    from gptlab.train.budget import plan_iters

    # 0.1 s a step, 1 s an evaluation (every 20 steps, and one at the end)
    def cost(n, done):
        return 0.1 * (n - done) + (n // 20 - done // 20 + (n % 20 != 0)) * 1.0

    for seconds, done in [(10.0, 0), (10.0, 10), (33.3, 7), (0.5, 3)]:
        n = plan_iters(seconds, 0.1, 1.0, 20, done)
        assert n >= done
        assert n == done or cost(n, done) <= seconds
        assert cost(n + 1, done) > seconds and cost(n + 2, done) > seconds
    assert plan_iters(10.0, 0.1, 1.0, 20, 0) == 60  # 6 s of steps + 3 evaluations


def test_time_budget_fixes_max_iters_and_trains_as_that_many_steps_would(corpus, tmp_path, capsys):
    from gptlab.config import load_toml

    budget = dict(max_time=3.0, eval_interval=10_000, max_iters=10_000, lr_decay_iters=10_000)
    result = train(MODEL, settings(corpus, tmp_path / "budget", **budget), progress=False)
    planned = load_toml(str(tmp_path / "budget" / "train.toml"))
    n = planned["max_iters"]
    assert result.step == n and 3 < n < 10_000 and planned["lr_decay_iters"] == n
    explicit = dict(max_iters=n, lr_decay_iters=n, eval_interval=10_000)
    train(MODEL, settings(corpus, tmp_path / "plain", **explicit), progress=False)
    a, b = weights(tmp_path / "budget"), weights(tmp_path / "plain")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a Python resume with the settings the run began with follows the plan: nothing to add
    again = settings(corpus, tmp_path / "budget", **budget)
    assert train(MODEL, again, resume=True, progress=False).step == n
    assert f"on the plan in {tmp_path / 'budget' / 'train.toml'}: max_iters={n}" in (
        capsys.readouterr().err
    )
    from gptlab.cli import main  # the command line refuses another schedule for it

    assert main(["train", "--resume", str(tmp_path / "budget"), "lr_decay_iters=7"]) == 2
    assert "follows the plan max_time made" in capsys.readouterr().err
    longer = dataclasses.replace(again, max_iters=n + 2, lr_decay_iters=n)  # the plan's schedule
    assert train(MODEL, longer, resume=True, progress=False).step == n + 2


def test_trains_on_a_saved_hf_dataset_and_its_cache_follows_the_content(tmp_path, monkeypatch):
    """data=hf:FOLDER (a dataset saved by `datasets`): trained on, and the prepared cache is
    keyed by the dataset's content, so an edited dataset is prepared again."""
    import datasets  # in the dev extra: a missing one fails, never skips

    from gptlab.train.rundata import data_key

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    saved = tmp_path / "saved"

    def save(text: str) -> None:
        datasets.Dataset.from_dict({"text": [text] * 30}).save_to_disk(str(saved))

    save("to be or not to be\n")
    key = data_key(f"hf:{saved}", "char", 0.1)
    out = tmp_path / "run"
    config = settings(f"hf:{saved}", out, max_iters=2, eval_interval=2)
    train(GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=16), config, progress=False)
    chars = json.loads((out / "char_vocab.json").read_text())["chars"]
    assert chars == sorted(set("to be or not to be\n"))  # the dataset's text, nothing else
    save("a wholly different text\n")
    assert data_key(f"hf:{saved}", "char", 0.1) != key
