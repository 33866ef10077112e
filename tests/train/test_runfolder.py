"""Saved work is never lost: folders gptlab did not make, overwrites that fail, edited text,
a vocabulary change on resume, crashes inside a checkpoint swap, two trainings at once."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from gptlab import GPT, GPTConfig, GptlabError
from gptlab.config import TrainConfig
from gptlab.train import train
from gptlab.train.runfolder import LOCK

MODEL = GPTConfig(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1)


def settings(data, out, **changes) -> TrainConfig:
    base = dict(
        data=str(data),
        out=str(out),
        batch_size=4,
        max_iters=8,
        eval_interval=4,
        eval_iters=2,
        warmup_iters=3,
        lr_decay_iters=8,
        lr=3e-3,
        threads=1,
        max_time=0,
    )
    return TrainConfig(**{**base, **changes})


def digest(folder) -> dict[str, str]:
    """Every file under a folder -> a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("to be or not to be that is the question whether tis nobler\n" * 60)
    return path


def test_a_users_data_folder_inside_out_is_never_deleted(text, tmp_path):
    out = tmp_path / "proj"
    (out / "data").mkdir(parents=True)
    (out / "data" / "notes.txt").write_text("my notes " * 100)
    with pytest.raises(GptlabError, match="a folder gptlab did not create"):
        train(MODEL, settings(text, out), progress=False)
    with pytest.raises(GptlabError, match="proj/data: a folder gptlab did not make"):
        train(MODEL, settings(text, out), overwrite=True, progress=False)
    # training on that very folder into its parent: the corpus stays
    with pytest.raises(GptlabError, match="did not make"):
        train(MODEL, settings(out / "data", out), overwrite=True, progress=False)
    assert (out / "data" / "notes.txt").read_text() == "my notes " * 100


def test_a_failed_overwrite_leaves_the_old_run_whole(text, tmp_path):
    out = tmp_path / "run"
    train(MODEL, settings(text, out), progress=False)
    before = digest(out)
    for bad in (tmp_path / "missing.txt", tmp_path / "binary.txt"):
        if bad.name == "binary.txt":
            bad.write_bytes(b"\xff\xfe\x00garbage")
        with pytest.raises(GptlabError):
            train(MODEL, settings(bad, out), overwrite=True, progress=False)
        assert digest(out) == before


def test_a_failed_overwrite_keeps_the_runs_prepared_data(text, tmp_path):
    out = tmp_path / "run"
    train(MODEL, settings(text, out), progress=False)
    before = digest(out)
    short = tmp_path / "short.txt"
    short.write_text("ab")  # prepares fine, then is too short for block_size
    with pytest.raises(GptlabError, match="fewer than block_size"):
        train(MODEL, settings(short, out), overwrite=True, progress=False)
    assert digest(out) == before and not (out / ".data.tmp").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(GptlabError, match="fewer than block_size"):
        train(MODEL, settings(short, mine), overwrite=True, progress=False)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]  # no mark, no data/ left


def test_an_overwrite_that_fails_while_training_keeps_the_old_run(text, tmp_path):
    """The old run goes only once the new one has a checkpoint to take its place: a new run
    (on other text, so its data replaces the old) whose loss becomes NaN at step 2 leaves the
    old run, its data, best/ and metrics as they were."""
    out = tmp_path / "run"
    train(MODEL, settings(text, out), progress=False)
    before = digest(out)
    other = tmp_path / "other.txt"
    other.write_text("completely different: XYZ 0123456789 !?\n" * 80)
    with pytest.raises(GptlabError, match="the loss became nan"):
        train(
            MODEL,
            settings(other, out, lr=1e9, grad_clip=0.0, eval_interval=100),
            overwrite=True,
            progress=False,
        )
    assert digest(out) == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".gptlab-run"]
    # and one that does save replaces it whole: the old data and weights are gone
    train(MODEL, settings(other, out, max_iters=4), overwrite=True, progress=False)
    assert not (out / ".replaced").exists()
    assert GPT.from_pretrained(out).config.vocab_size == len(set(other.read_text()))


def test_an_overwrite_killed_before_its_first_checkpoint_gives_the_old_run_back(text, tmp_path):
    out = tmp_path / "run"
    train(MODEL, settings(text, out), progress=False)
    before = digest(out)
    other = tmp_path / "other.txt"
    other.write_text("completely different: XYZ 0123456789 !?\n" * 80)
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "gptlab",
            "train",
            "--data",
            str(other),
            "--out",
            str(out),
            "--overwrite",
            "--preset",
            "tiny",
            "--no-progress",
            "max_iters=4",
            "eval_interval=2",
            "eval_iters=1",
            "block_size=16",
            "threads=1",
        ],
        env={**os.environ, "GPTLAB_FAULT": "weights-written:1"},
        capture_output=True,
    )
    assert killed.returncode == 137 and (out / ".replaced").is_dir()  # died mid-save
    # `gptlab train --resume` puts the old run back before it reads the run's settings (the
    # killed run's train.toml, of other settings and data, must not be what it resumes with)
    from gptlab.cli import main

    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    after = digest(out)
    assert not (out / ".replaced").exists() and not (out / ".checkpoint.tmp").exists()
    for name in (
        "model.safetensors",
        "checkpoint/trainer.pt",
        "best/model.safetensors",
        "data/tokens-000000.bin",
        "char_vocab.json",
        "train.toml",
    ):
        assert after[name] == before[name], name


@pytest.mark.parametrize("command", [["sample", "--max-new-tokens", "2"], ["convert"]])
def test_reading_a_run_left_mid_overwrite_reads_the_old_run(text, tmp_path, command, capsys):
    """A kill before the new run's first checkpoint leaves the old run aside; sample (and
    every command that reads a model) puts it back first, as --resume does."""
    from gptlab.cli import main
    from gptlab.train.runfolder import set_aside

    out = tmp_path / "run"
    train(MODEL, settings(text, out), progress=False)
    before = digest(out)
    set_aside(out)  # where a killed `train --overwrite` leaves the folder
    assert not (out / "config.json").exists()
    argv = [command[0], str(out), *command[1:]]
    assert main(argv + ([str(tmp_path / "converted")] if command == ["convert"] else [])) == 0
    assert digest(out) == before


def test_a_kill_while_the_old_run_is_restored_finishes_the_restoring(text, tmp_path):
    """Restoring is renamed .restoring first: a kill after the old checkpoint moved back (but
    not its data or best/) must not make the next command take that checkpoint for the new
    run's and delete the rest."""
    out = tmp_path / "run"
    train(MODEL, settings(text, out), progress=False)
    before = digest(out)
    restoring = out / ".restoring"  # as a kill mid-restore leaves it
    restoring.mkdir()
    for name in ("data", "best", "metrics.jsonl", "model.safetensors"):
        os.replace(out / name, restoring / name)
    (restoring / ".cleared").touch()  # the new run's files were already deleted
    train(MODEL, settings(text, out), resume=True, progress=False)
    assert not restoring.exists() and digest(out) == before


def test_a_resume_does_not_take_data_left_by_the_run_it_replaced(text, tmp_path):
    """Run A prepared text into OUT/data; run B replaced it, training on a prepared folder
    elsewhere (OUT/data stays, A's). B's resume trains on B's data, not A's leftovers."""
    from gptlab.data import prepare

    out = tmp_path / "run"
    train(MODEL, settings(text, out, max_iters=4), progress=False)
    other = tmp_path / "b.txt"
    other.write_text(" ".join(reversed(text.read_text().split())) * 3 + "\n")  # same letters
    prepared = prepare(str(other), tmp_path / "prepared", "char", progress=False).directory
    whole = tmp_path / "whole"
    train(MODEL, settings(prepared, whole), progress=False)
    train(MODEL, settings(prepared, out, max_iters=4), overwrite=True, progress=False)
    train(MODEL, settings(prepared, out), resume=True, progress=False)
    a, b = weights_of(whole), weights_of(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_leaves_no_temporary_file(text, tmp_path):
    """Re-linking weights that are already linked once left a full copy under a temp name."""
    out = tmp_path / "run"
    train(MODEL, settings(text, out, max_iters=4), progress=False)
    train(MODEL, settings(text, out, max_iters=4), resume=True, progress=False)  # nothing to do
    train(MODEL, settings(text, out), resume=True, progress=False)
    assert [p.name for p in out.rglob("*") if p.name.endswith(".tmp")] == []


def test_overwrite_with_another_tokenizer_leaves_no_old_vocabulary(text, tmp_path):
    from gptlab import train_bpe

    out = tmp_path / "run"
    train(MODEL, settings(text, out), progress=False)
    assert (out / "char_vocab.json").exists()
    bpe = train_bpe([text.read_text()], 300)
    bpe.save(tmp_path / "bpe")
    train(
        MODEL, settings(text, out, tokenizer=str(tmp_path / "bpe")), overwrite=True, progress=False
    )
    assert not (out / "char_vocab.json").exists()
    assert GPT.from_pretrained(out).config.vocab_size == bpe.vocab_size
    from gptlab.tokenizers import Tokenizer

    assert Tokenizer.from_pretrained(out).vocab_size == bpe.vocab_size


def test_edited_text_is_prepared_again(text, tmp_path):
    out = tmp_path / "run"
    train(MODEL, settings(text, out), progress=False)
    first = GPT.from_pretrained(out).config.vocab_size
    text.write_text("completely different: XYZ 0123456789 !?\n" * 80)  # same path, new text
    train(MODEL, settings(text, out), overwrite=True, progress=False)
    assert GPT.from_pretrained(out).config.vocab_size == len(set(text.read_text())) != first


def test_resume_refuses_other_data_and_text_of_another_vocabulary(text, tmp_path):
    out = tmp_path / "run"
    train(MODEL, settings(text, out, max_iters=4), progress=False)
    before = digest(out)
    other = tmp_path / "other.txt"
    other.write_text("completely different: XYZ 0123456789 !?\n" * 80)
    with pytest.raises(GptlabError, match="trains on the run's own data .* cannot apply"):
        train(MODEL, settings(other, out), resume=True, progress=False)
    assert digest(out) == before
    # where the run's prepared data is gone, its text is read again: same vocabulary only
    import shutil

    shutil.rmtree(out / "data")
    before = digest(out)
    text.write_text(other.read_text())
    with pytest.raises(GptlabError, match="another vocabulary .* a resumed run keeps"):
        train(MODEL, settings(text, out), resume=True, progress=False)
    assert digest(out) == before


def test_resume_trains_on_its_saved_tokens_wherever_it_is_run(text, tmp_path, monkeypatch):
    """The run records data="shk.txt" (relative). Resumed from another folder, where the text
    is absent, and then where another shk.txt (same alphabet) lies, it ends where an
    uninterrupted run ends: it reads OUT/data, never the text again."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shk.txt").write_text(text.read_text())
    train(MODEL, settings("shk.txt", tmp_path / "whole"), progress=False)
    train(MODEL, settings("shk.txt", tmp_path / "run", max_iters=4), progress=False)
    (tmp_path / "shk.txt").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    train(MODEL, settings("shk.txt", tmp_path / "run", max_iters=6), resume=True, progress=False)
    words = text.read_text().split()
    (elsewhere / "shk.txt").write_text(" ".join(reversed(words)) + "\n")  # same characters
    train(MODEL, settings("shk.txt", tmp_path / "run"), resume=True, progress=False)
    a, b = weights_of(tmp_path / "whole"), weights_of(tmp_path / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


def weights_of(folder):
    return load_file(folder / "model.safetensors")


def test_resume_after_a_crash_logs_each_evaluation_once(text, tmp_path):
    whole, out = tmp_path / "whole", tmp_path / "run"
    train(MODEL, settings(text, whole, max_iters=12, lr_decay_iters=12), progress=False)
    train(MODEL, settings(text, out, max_iters=8, lr_decay_iters=12), progress=False)
    # a crash after logging step 12 but before its checkpoint, mid-way through a line
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 12, "val_loss": 9.0}) + "\n" + '{"step": 1')
    train(MODEL, settings(text, out, max_iters=12, lr_decay_iters=12), resume=True, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12]
    a, b = load_file(whole / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_crash_inside_the_checkpoint_swap_resumes_from_the_previous_one(text, tmp_path):
    whole, out = tmp_path / "whole", tmp_path / "run"
    train(MODEL, settings(text, whole), progress=False)
    train(MODEL, settings(text, out, max_iters=4), progress=False)
    # the swap renames checkpoint -> .checkpoint.old, then .checkpoint.tmp -> checkpoint:
    # a crash between the two leaves only the old one
    os.replace(out / "checkpoint", out / ".checkpoint.old")
    result = train(MODEL, settings(text, out), resume=True, progress=False)
    assert result.step == 8
    a, b = load_file(whole / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_best_is_a_copy_not_a_link(text, tmp_path):
    out = tmp_path / "run"
    train(MODEL, settings(text, out), progress=False)
    best, ckpt = out / "best" / "model.safetensors", out / "checkpoint" / "model.safetensors"
    assert best.stat().st_ino != ckpt.stat().st_ino
    assert load_file(best).keys() == load_file(ckpt).keys()
    ckpt.write_bytes(b"damaged")  # damage to the checkpoint does not reach best/
    assert GPT.from_pretrained(out / "best").config.n_layer == 2


def test_a_second_training_into_the_same_folder_is_refused(text, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(f"{sleeper.pid}\n")
        with pytest.raises(GptlabError, match=f"another training \\(pid {sleeper.pid}\\)"):
            train(MODEL, settings(text, out), progress=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    # the same lock, now stale (its process is gone): taken over, then released
    result = train(MODEL, settings(text, out), progress=False)
    assert result.step == 8 and not (out / LOCK).exists()


def test_prepare_never_writes_into_a_run_or_a_foreign_folder_unasked(
    text, tmp_path, monkeypatch, capsys
):
    """gptlab prepare's folder rules, through the command line in this process (the one
    subprocess run of prepare is tests/test_cli_bad_inputs.py's table)."""
    from gptlab.cli import main

    monkeypatch.chdir(tmp_path)

    def prepare_cmd(*args):
        code = main(["prepare", "--input", str(text), *args])
        return code, capsys.readouterr().err

    run = tmp_path / "run"
    train(MODEL, settings(text, run, max_iters=4), progress=False)
    before = digest(run)
    for extra in ([], ["--overwrite"]):  # a run's folder is never prepared into
        code, err = prepare_cmd("--out", "run", *extra)
        assert code == 2 and "a training run's folder" in err
        assert digest(run) == before
    # a folder of the user's with a vocabulary of its own: --overwrite does not take it
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "vocab.json").write_text('{"mine": 0}')
    code, err = prepare_cmd("--out", "mine", "--overwrite")
    assert code == 2 and "holds vocab.json but no prepared data" in err
    assert (tmp_path / "mine" / "vocab.json").read_text() == '{"mine": 0}'

    # --overwrite onto prepared data of another tokenizer: no stale vocabulary file is left
    data = tmp_path / "data"
    assert prepare_cmd("--out", "data")[0] == 0
    assert (data / "char_vocab.json").exists()
    from gptlab import train_bpe

    train_bpe([text.read_text()], 300).save(tmp_path / "bpe")
    code, err = prepare_cmd("--out", "data", "--tokenizer", "bpe", "--overwrite")
    assert code == 0, err
    assert not (data / "char_vocab.json").exists()
    code, err = prepare_cmd("--out", "x", "--val-fraction", "1.5")
    assert code == 2 and "val_fraction must be in (0, 1)" in err
    assert not (tmp_path / "x").exists()


def test_a_state_json_with_nulls_still_resumes(text, tmp_path):
    """Optional numbers may be null (as an older or hand-edited state.json has them)."""
    out = tmp_path / "run"
    train(MODEL, settings(text, out, max_iters=4), progress=False)
    path = out / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    state.update(elapsed_s=None, best_val_loss=None, last_val_loss=None)
    path.write_text(json.dumps(state))
    assert train(MODEL, settings(text, out), resume=True, progress=False).step == 8


def test_one_prepare_at_a_time_writes_a_folder(text, tmp_path, capsys):
    """Prepares racing for one OUT once shared a temp folder ("cannot mmap an empty file"):
    a second one is refused in one line while the first holds the lock beside OUT, and a lock
    whose process is gone is taken over."""
    from gptlab.cli import main

    argv = ["prepare", "--input", str(text), "--out", str(tmp_path / "new" / "data")]
    lock = tmp_path / "new" / ".data.lock"
    lock.parent.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{sleeper.pid}\n")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"another gptlab prepare (pid {sleeper.pid})" in err and err.count("\n") == 1
        assert sorted(p.name for p in lock.parent.iterdir()) == [".data.lock"]  # nothing else
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(argv) == 0  # stale now: taken over, then released
    assert sorted(p.name for p in lock.parent.iterdir()) == ["data"]


def test_a_kill_while_the_old_run_moves_aside_puts_every_file_back(text, tmp_path):
    """set_aside stages its moves: a kill half-way leaves files in two places, and the next
    training into the folder puts them back before anything else (none is taken for the new
    run's and deleted)."""
    from gptlab.train import runfolder

    out = tmp_path / "run"
    train(MODEL, settings(text, out, max_iters=4), progress=False)
    before = digest(out)
    staging = out / ".replaced.tmp"  # as a kill after moving two of the run's files leaves it
    staging.mkdir()
    for name in ("checkpoint", "train.toml"):
        os.replace(out / name, staging / name)
    assert runfolder.has_aside(out)
    train(MODEL, settings(text, out, max_iters=4), resume=True, progress=False)  # nothing to do
    assert not runfolder.has_aside(out)
    after = digest(out)
    assert {k: after[k] for k in before if k.startswith("checkpoint/")} == {
        k: v for k, v in before.items() if k.startswith("checkpoint/")
    }


def test_a_python_resume_refuses_what_the_command_line_refuses(text, tmp_path):
    """train(resume=True) gets whole configs: a different shape, split, start or budget is
    refused (it was once ignored without a word), and the run is left as it was."""
    out = tmp_path / "run"
    train(MODEL, settings(text, out, max_iters=4), progress=False)
    before = digest(out)
    for model, changes in [
        (MODEL.replace(n_layer=3), {}),
        (MODEL.replace(dropout=0.0), {}),
        (MODEL, {"val_fraction": 0.2}),
        (MODEL, {"max_time": 60}),
        (MODEL, {"init_from": str(out)}),
    ]:
        with pytest.raises(GptlabError, match="cannot change"):
            train(model, settings(text, out, **changes), resume=True, progress=False)
    assert digest(out) == before
    train(MODEL, settings(text, out), resume=True, progress=False)  # max_iters may change


def test_a_python_resume_of_a_fine_tuned_run_repeats_its_call(text, tmp_path):
    """A fine-tuned run's train.toml records the shape of the model it started from, not the
    config the caller passed (which init_from overrides): the same call resumes it."""
    base = tmp_path / "base"
    train(MODEL, settings(text, base, max_iters=2), progress=False)
    caller = MODEL.replace(n_layer=5, n_embd=64)  # ignored: the network is base's
    out = tmp_path / "tuned"
    tuned = settings(text, out, init_from=str(base), max_iters=2)
    train(caller, tuned, progress=False)
    train(
        caller, settings(text, out, init_from=str(base), max_iters=4), resume=True, progress=False
    )
    with pytest.raises(GptlabError, match="dropout"):
        train(caller.replace(dropout=0.3), tuned, resume=True, progress=False)
