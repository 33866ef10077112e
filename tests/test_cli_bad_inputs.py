"""Bad input to every command: one line on stderr, exit 2, and nothing on disk changed.

Each case runs `gptlab` in a workspace that holds a trained run, prepared data, a tokenizer, a
user's own folder and files, and damaged copies of gptlab's files. The digest of every file in
the workspace (names and bytes) must be the same after the command as before: a bad input
neither deletes nor creates anything.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from gptlab.cli import main
from gptlab.config import GPTConfig

TEXT = "To be, or not to be: that is the question.\n" * 40


def digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (and '<dir>' for every folder) under root."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from gptlab.config import TrainConfig
    from gptlab.data import prepare
    from gptlab.tokenizers import train_bpe
    from gptlab.train import train

    ws = tmp_path_factory.mktemp("workspace")
    (ws / "text.txt").write_text(TEXT)
    (ws / "other.txt").write_text("Zebras quietly jump over xylophones!\n" * 20)
    (ws / "empty.txt").write_text("")
    (ws / "latin1.txt").write_bytes("café".encode("latin-1"))
    (ws / "afile").write_text("a user's file\n")
    (ws / "notes").mkdir()
    (ws / "notes" / "mine.txt").write_text("a user's notes\n")
    for name in ("best", "tb"):  # a user's folders that happen to bear a run's names
        (ws / "owned" / name).mkdir(parents=True)
        (ws / "owned" / name / "essay.md").write_text("mine\n")
    config = TrainConfig(
        data=str(ws / "text.txt"),
        out=str(ws / "run"),
        batch_size=4,
        max_iters=2,
        eval_interval=2,
        eval_iters=1,
        threads=1,
    )
    train(GPTConfig.preset("tiny", block_size=32), config, progress=False)
    prepare(str(ws / "text.txt"), ws / "prep", "char", progress=False)
    train_bpe([TEXT], 280).save(ws / "tok")
    for name, settings in {
        "tok_list": [1, 2],
        "tok_regex": {"pattern": "(["},
        "tok_nope": {"pattern": "nope"},
        "tok_eot": {"eot_token": "<|nothere|>", "special_tokens": {}},
    }.items():
        shutil.copytree(ws / "tok", ws / name)
        (ws / name / "gptlab_tokenizer.json").write_text(json.dumps(settings))
    shutil.copytree(ws / "run", ws / "nanrun", ignore=shutil.ignore_patterns(".lock"))
    weights = load_file(ws / "nanrun" / "model.safetensors")
    weights["transformer.h.0.ln_1.weight"][3] = float("nan")  # a run that diverged
    (ws / "nanrun" / "model.safetensors").unlink()  # (a hard link to the checkpoint's)
    save_file(weights, ws / "nanrun" / "model.safetensors")
    shutil.copytree(ws / "run", ws / "fewchars", ignore=shutil.ignore_patterns(".lock"))
    vocab = json.loads((ws / "run" / "char_vocab.json").read_text())
    vocab["chars"] = vocab["chars"][:-5]  # a vocabulary file replaced by a smaller one
    (ws / "fewchars" / "char_vocab.json").write_text(json.dumps(vocab))
    from gptlab.model.load import load_model

    load_model(ws / "run", "cpu", quantize="int8").save_pretrained(ws / "int8run")
    (ws / "hfbad").mkdir()
    shutil.copy(ws / "run" / "config.json", ws / "hfbad" / "config.json")
    (ws / "hfbad" / "pytorch_model.bin").write_bytes(b"\x80\x02garbage" * 50)
    example = {"ctx": "To be", "endings": [" or not", " the end"], "label": 0}
    (ws / "mc.jsonl").write_text(json.dumps(example) + "\n")
    (ws / "mc_zebra.jsonl").write_text(json.dumps({**example, "ctx": "Zebras"}) + "\n")
    (ws / "mc_empty.jsonl").write_text(json.dumps({**example, "endings": ["", " x"]}) + "\n")
    (ws / "mc_bool.jsonl").write_text(json.dumps({**example, "label": True}) + "\n")
    (ws / "myexp").mkdir()  # a user's experiment: files a run would write, no run's mark
    (ws / "myexp" / "metrics.jsonl").write_text('{"step": 1, "note": "my own numbers"}\n')
    (ws / "myexp" / "train.toml").write_text("# my commented settings\n[train]\nlr = 1e-3\n")
    (ws / "hasaside" / ".replaced").mkdir(parents=True)  # a user's, named as gptlab names one
    (ws / "hasaside" / "notes.txt").write_text("today's notes\n")
    (ws / "hasaside" / ".replaced" / "notes.txt").write_text("older notes\n")
    (ws / "plots").mkdir()
    (ws / "plots" / "pooling.png").write_bytes(b"a user's own plot")
    (ws / "typo.toml").write_text("[modle]\nn_layer = 2\n")
    (ws / "nan.toml").write_text("[train]\nlr = nan\n")
    return ws


CASES = [
    # info, convert
    (["info", "gpt3"], "neither a preset"),
    (["convert", "run", "afile"], "afile: exists and is not a folder"),
    (["convert", "run", "notes"], "notes holds files gptlab did not write (mine.txt)"),
    (["convert", "run", "run"], "run is a training run's folder"),
    (["convert", "run", "run/checkpoint", "--overwrite"], "is inside the training run"),
    # prepared data's ids are its tokenizer's: --overwrite does not replace that vocabulary
    (["convert", "run", "prep", "--overwrite"], "prep holds prepared data"),
    (["convert", "run", "tok", "--overwrite"], "tok holds a tokenizer (vocab.json"),
    (
        ["convert", "run", "run/snapshots/step-000002", "--overwrite"],
        "is inside the training run",
    ),
    (
        ["tokenizer", "train", "--input", "text.txt", "--vocab-size", "300", "--out", "run/best"],
        "is inside the training run",
    ),
    (["convert", "./missing", "o"], "missing: no such folder"),
    (["convert", "hfbad", "o"], "not a plain PyTorch checkpoint"),
    # prepare
    (["prepare", "--input", "text.txt", "--out", "run"], "run is a training run's folder"),
    (["prepare", "--input", "text.txt", "--out", "prep"], "prep already holds prepared data"),
    (["prepare", "--input", "text.txt", "--out", "notes"], "notes already holds files"),
    (["prepare", "--input", "text.txt", "--out", "afile"], "afile: exists and is not a folder"),
    (["prepare", "--input", "text.txt", "--out", "o", "--val-fraction", "1.5"], "(0, 1)"),
    (["prepare", "--input", "text.txt", "--out", "o", "--val-fraction", "0"], "(0, 1)"),
    (["prepare", "--input", "text.txt", "--out", "o", "--workers", "0"], "workers must be at"),
    (["prepare", "--input", "nope.txt", "--out", "o"], "nope.txt: no such file or folder"),
    (["prepare", "--input", "nope.txt", "--out", "new/a/b"], "nope.txt: no such file or folder"),
    (["prepare", "--input", "text.txt", "--out", "run/mydata"], "is inside the training run"),
    (["prepare", "--input", "latin1.txt", "--out", "o"], "latin1.txt: not UTF-8 text"),
    (["prepare", "--input", "empty.txt", "--out", "o"], "empty"),
    (["prepare", "--input", "/dev/zero", "--out", "o"], "/dev/zero: not a regular file"),
    (["train", "--data", "/dev/zero", "--out", "o"], "/dev/zero: not a regular file"),
    (["prepare", "--input", "text.txt", "./text.txt", "--out", "o"], "text.txt is given twice"),
    (["prepare", "--input", "hf:a:b:c:d", "--out", "o"], "too many parts"),
    # found half-way, after the progress bar has started
    (
        ["prepare", "--input", "text.txt", "other.txt", "--out", "o", "--tokenizer", "prep"],
        "is not in the vocabulary",
    ),
    (["prepare", "--input", "hf:x:colour=red", "--out", "o"], "unknown part 'colour'"),
    (["prepare", "--input", "text.txt", "--out", "o", "--tokenizer", "tok_nope"], "cover"),
    # train
    (["train", "--data", "nope.txt", "--out", "o"], "nope.txt: no such file or folder"),
    (["train", "--data", "text.txt", "--out", "new/a/b", "block_size=5000"], "block_size"),
    (["train", "--data", "text.txt", "--out", "notes"], "a folder gptlab did not create"),
    (["train", "--data", "nope.txt", "--out", "run", "--overwrite"], "no such file"),
    (["train", "--data", "latin1.txt", "--out", "run", "--overwrite"], "not UTF-8"),
    (["train", "--config", "typo.toml"], "did you mean [model]?"),
    (["train", "--config", "nan.toml"], "lr"),
    (["train", "--preset", "gpt5"], "unknown preset 'gpt5'"),
    (
        ["train", "--tokenizer", "tok", "max_iters=10"],
        "unrecognized arguments: --tokenizer (settings are key=value: tokenizer=...)",
    ),
    (["train", "lr=nan"], "lr"),
    (["train", "lr=inf"], "lr"),
    (["train", "beta1=2"], "beta1 must be in [0, 1)"),
    (["train", "threads=-3"], "threads must be >= 0"),
    (["train", "--data", "text.txt", "--out", "o", "min_lr=0.1"], "min_lr=0.1 is above lr"),
    (["train", "parallel=zero3"], "parallel must be ddp or fsdp"),
    (["train", "parallel=fsdp", "dtype=float16"], "use dtype=bfloat16"),
    (["train", "cpu_offload=true"], "cpu_offload=true needs parallel=fsdp"),
    (["train", "peak_tflops=-1"], "peak_tflops must be >= 0"),
    (["train", "weight_decay=nan"], "weight_decay"),
    (["train", "layer_norm_eps=-1"], "layer_norm_eps must be > 0"),
    (["train", "grad_clip=-1"], "grad_clip must be >= 0"),
    (["train", "warmup_iters=-1"], "warmup_iters must be >= 0"),
    (["train", "n_embd=30", "n_head=4"], "not divisible"),
    (["train", "learning_rate=1"], "did you mean 'lr'?"),
    (["train", "--list-settings", "max_iters=1e400"], "max_iters must be an integer"),
    (["train", "n_layer=2.7e0"], "n_layer must be an integer"),
    (["train", "seed=99999999999999999999999"], "seed must be below 2**63"),
    (["train", "--data", "text.txt", "--out", "o", "device=meta"], "device must be auto"),
    (
        ["train", "--data", "text.txt", "--out", "owned", "--overwrite"],
        "is not a gptlab run, yet holds best, tb",
    ),
    (["train", "--data", "text.txt", "--out", "myexp"], "a folder gptlab did not create"),
    (["train", "--data", "text.txt", "--out", "hasaside"], "a folder gptlab did not create"),
    (
        [
            "train",
            "--config",
            "myexp/train.toml",
            "--data",
            "text.txt",
            "--out",
            "myexp",
            "--overwrite",
        ],
        "is not a gptlab run, yet holds metrics.jsonl, train.toml",
    ),
    (["train", "--data", "text.txt", "--out", "run/sub"], "inside the training run"),
    (["train", "--resume", "run", "val_fraction=0.5"], "val_fraction cannot change"),
    (["train", "--resume", "run", "init_from=run"], "init_from cannot change"),
    (["train", "--resume", "run", "out=elsewhere"], "out cannot change"),
    (
        ["train", "--data", "text.txt", "--out", "o", "init_from=run", "n_layer=1"],
        "init_from=run takes the network's shape from that model; n_layer cannot be set",
    ),
    (["train", "--resume", "run", "data=other.txt"], "data=other.txt cannot apply"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--resume", "run", "--out", "x"], "--out cannot apply"),
    (["train", "--resume", "run", "n_layer=4"], "n_layer cannot change"),
    (["train", "--resume", "notes"], "not a training run"),
    (["train", "--resume", "run", "max_time=60"], "set max_iters=N"),
    # sample
    (["sample", "run", "--num-samples", "0"], "--num-samples must be in 1..1000"),
    (["sample", "run", "--quantize", "int8", "--dtype", "bfloat16"], "computes in float32"),
    (["sample", "run", "--quantize", "int4"], "invalid choice: 'int4'"),
    (["convert", "run", "o", "--quantize", "int8", "--dtype", "bfloat16"], "computes in float32"),
    (
        [
            "eval",
            "perplexity",
            "run",
            "--input",
            "text.txt",
            "--quantize",
            "int8",
            "--dtype",
            "bfloat16",
        ],
        "computes in float32",
    ),
    (["serve", "run", "--quantize", "int8", "--dtype", "bfloat16"], "computes in float32"),
    # a folder of int8 weights: the same rule as --quantize int8 (it was float32, silently)
    (["sample", "int8run", "--dtype", "bfloat16"], "int8run (int8 weights) computes in float32"),
    (
        ["eval", "perplexity", "int8run", "--input", "text.txt", "--dtype", "bfloat16"],
        "computes in float32",
    ),
    (["sample", "run", "--num-samples", "100000000"], "--num-samples must be in 1..1000"),
    (["sample", "run", "--temperature", "-1"], "temperature must be >= 0"),
    (["sample", "run", "--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["sample", "run", "--prompt", "Zebra"], "'Z' at position 0 is not in the vocabulary"),
    (["sample", "run", "--prompt-file", "notes"], "notes"),
    (["sample", "run", "--prompt-file", "nope.txt"], "nope.txt"),
    (["sample", "run", "--prompt-file", "latin1.txt"], "not UTF-8"),
    (["sample", "notes"], "no config.json"),
    (["sample", "./missing"], "missing: no such folder"),
    (["sample", "run", "--dtype", "int4"], "invalid choice: 'int4'"),
    (["sample", "run", "--seed", "99999999999999999999999"], "--seed must be in [0, 2**63)"),
    (["sample", "run", "--device", "meta"], "device must be auto"),
    (["sample", "run", "--temperature", "nan"], "temperature must be >= 0 and finite"),
    (["sample", "run", "--temperature", "inf"], "temperature must be >= 0 and finite"),
    (["sample", "run", "--prompt", "To", "--prompt-file", "text.txt"], "not both"),
    (["sample", "run", "--prompt", "R\udcffO"], "is not valid UTF-8 text"),
    (
        ["prepare", "--input", "text.txt", "--out", "o", "--val-fraction", "0.9999"],
        "leaves no training tokens",
    ),
    # eval
    (["eval", "multiple-choice", "run", "--data", "mc.jsonl", "--limit", "0"], "--limit"),
    (
        ["eval", "multiple-choice", "run", "--data", "mc_zebra.jsonl"],
        "mc_zebra.jsonl, line 1, ending 0: character 'Z'",
    ),
    (["eval", "multiple-choice", "run", "--data", "mc.jsonl", "--limit", "-1"], "--limit"),
    (["eval", "multiple-choice", "run", "--data", "mc_empty.jsonl"], "ending 0 is empty"),
    (["eval", "multiple-choice", "run", "--data", "mc_bool.jsonl"], "label True"),
    (["eval", "multiple-choice", "run", "--data", "notes"], "notes: is a folder"),
    (["eval", "perplexity", "run", "--input", "notes"], "notes: is a folder"),
    (["eval", "perplexity", "run", "--input", "text.txt", "--method", "lm-eval"], "end-of-text"),
    (
        [
            "eval",
            "perplexity",
            "run",
            "--input",
            "text.txt",
            "--method",
            "lm-eval",
            "--stride",
            "4",
        ],
        "--stride applies",
    ),
    (["eval", "last-word", "run", "--data", "mc.jsonl"], 'line 1: expected {"text"'),
    (["eval", "last-word", "run", "--data", "mc.jsonl", "--limit", "0"], "--limit"),
    (["eval", "multiple-choice", "run", "--data", "mc.jsonl", "--hellaswag"], "activity_label"),
    (
        ["eval", "multiple-choice", "run", "--data", "mc.jsonl", "--batch-size", "0"],
        "batch_size must be at least 1",
    ),
    (["eval", "perplexity", "run", "--input", "text.txt", "--stride", "0"], "stride"),
    (["eval", "perplexity", "run", "--input", "/dev/null"], "/dev/null: not a regular file"),
    # attention
    (["attention", "pooling", "--out", "afile"], "afile: exists and is not a folder"),
    (["attention", "pooling", "--out", "notes"], "notes holds files gptlab did not write"),
    (["attention", "pooling", "--out", "plots"], "plots already holds pooling.png"),
    (
        ["attention", "gpt2", "--model", "run", "--prompt", "", "--out", "o"],
        "needs at least 2 tokens",
    ),
    (["attention", "gpt2", "--model", "./missing", "--out", "o"], "missing"),
    # tokenizer
    (
        ["tokenizer", "train", "--input", "text.txt", "--vocab-size", "300", "--out", "afile"],
        "afile: exists and is not a folder",
    ),
    (
        ["tokenizer", "train", "--input", "text.txt", "--vocab-size", "300", "--out", "notes"],
        "notes holds files gptlab did not write",
    ),
    (
        ["tokenizer", "train", "--input", "text.txt", "--vocab-size", "300", "--out", "tok"],
        "tok already holds",
    ),
    (
        ["tokenizer", "train", "--input", "text.txt", "--vocab-size", "300", "--out", "run"],
        "training run's folder",
    ),
    (  # said before --overwrite is offered (which would not do)
        ["tokenizer", "train", "--input", "text.txt", "--vocab-size", "300", "--out", "int8run"],
        "int8run holds a model",
    ),
    *(  # nor a model's or prepared data's (the ids would stand for other text)
        (
            ["tokenizer", "train", "--input", "text.txt", "--vocab-size", "300"]
            + ["--out", out, "--overwrite"],
            message,
        )
        for out, message in (
            ("int8run", "int8run holds a model (config.json, model.safetensors)"),
            ("prep", "prep holds prepared data"),
        )
    ),
    (
        [
            "tokenizer",
            "train",
            "--input",
            "text.txt",
            "--vocab-size",
            "300",
            "--out",
            "o",
            "--special",
            "",
        ],
        "non-empty string",
    ),
    (
        [
            "tokenizer",
            "train",
            "--input",
            "text.txt",
            "--vocab-size",
            "300",
            "--out",
            "o",
            "--special",
            "<a>",
            "<a>",
        ],
        "'<a>' is given more than once",
    ),
    (
        ["tokenizer", "train", "--input", "text.txt", "--vocab-size", "10", "--out", "o"],
        "too small",
    ),
    (["tokenizer", "encode", "tok_list", "hi"], "expected a JSON object, got list"),
    (["tokenizer", "encode", "tok_regex", "hi"], "not a regular expression"),
    (["tokenizer", "encode", "tok_nope", "hi"], "does not cover all text"),
    (["tokenizer", "encode", "tok_eot", "hi"], "eot_token"),
    (["tokenizer", "encode", "notes", "hi"], "no tokenizer files"),
    # weights with a NaN, whatever reads them
    (["sample", "nanrun", "--max-new-tokens", "2"], "h.0.ln_1.weight holds NaN or infinite"),
    (["eval", "perplexity", "nanrun", "--input", "text.txt"], "holds NaN or infinite"),
    (["convert", "nanrun", "o"], "holds NaN or infinite"),
    (["serve", "nanrun"], "holds NaN or infinite"),
    # a tokenizer that does not belong to the model beside it
    (["sample", "fewchars", "--max-new-tokens", "2"], "but the model reads"),
    (["eval", "perplexity", "fewchars", "--input", "text.txt"], "do not belong together"),
    (["serve", "fewchars"], "do not belong together"),
    # serve (refused before anything listens)
    (["serve", "./missing"], "missing: no such folder"),
    (["serve", "notes"], "no config.json"),
    (["serve", "run", "--port", "0"], "--port must be in 1..65535"),
    (["serve", "run", "--max-generations", "0"], "--max-generations must be at least 1"),
    (["serve", "run", "--compare", "./missing"], "missing: no such folder"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    workspace, argv, message, capfd, monkeypatch
):
    monkeypatch.chdir(workspace)
    before = digest(workspace)
    assert main(argv) == 2
    err = capfd.readouterr().err  # (torch's C++ writes to the file descriptor)
    # one line, and only it: progress bars are drawn on terminals, not into logs
    assert err.startswith("gptlab: error: ") and err.count("\n") == 1 and "\r" not in err, err
    assert message in err
    assert digest(workspace) == before, "a bad input changed the workspace"


def test_every_command_has_bad_input_cases():
    """The table covers every sub-command the parser offers."""
    from gptlab.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    tried = {argv[0] for argv, _ in CASES}
    assert set(commands) <= tried
