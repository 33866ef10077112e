import io
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch

from gptlab import GPT, GPTConfig, Tokenizer, train_bpe
from gptlab.cli import main

from conftest import bf16_emulated


def test_info_counts_parameters_without_building_weights(capsys):
    assert main(["info", "gpt2-xl", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 1_557_611_200 and info["n_layer"] == 48


def test_info_reads_a_model_folder(tmp_path, capsys):
    GPT(GPTConfig.preset("tiny")).save_pretrained(tmp_path)
    assert main(["info", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_embd"] == 64


def test_convert_round_trip_and_refuses_to_overwrite(tmp_path, capsys):
    model = GPT(GPTConfig.preset("tiny")).eval()
    model.save_pretrained(tmp_path / "a")
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--dtype", "bfloat16"]) == 0
    from safetensors.torch import load_file

    a_w, b_w = (
        load_file(tmp_path / "a" / "model.safetensors"),
        load_file(tmp_path / "b" / "model.safetensors"),
    )
    assert a_w.keys() == b_w.keys() and all(t.dtype == torch.bfloat16 for t in b_w.values())
    assert all(torch.equal(a_w[k].to(torch.bfloat16), b_w[k]) for k in a_w)  # rounded, no more
    assert json.loads((tmp_path / "b" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    b = GPT.from_pretrained(tmp_path / "b")
    assert torch.equal(b.transformer.wte.weight, b_w["transformer.wte.weight"].float())
    before = (tmp_path / "b" / "model.safetensors").read_bytes()
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == before  # nothing lost


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "gpt3"], "neither a preset"),
        (["convert", "./missing", "out"], "missing: no such folder"),
        (["convert", "gpt2", "out", "--dtype", "int8"], "invalid choice: 'int8'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gptlab", *argv], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert message in result.stderr


def in_folder(cwd, argv, monkeypatch, capfd) -> tuple[int, str]:
    """`gptlab ARGV` run in cwd in this process (`main` is what the console script calls; the
    test above runs real commands): (exit status, what it wrote to stderr, torch's C++ too)."""
    monkeypatch.chdir(cwd)
    capfd.readouterr()
    return main(argv), capfd.readouterr().err


def test_tokenizer_train_and_encode(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("to be or not to be, that is the question\n" * 20)
    (corpus / "b.md").write_text("whether 'tis nobler in the mind to suffer\n" * 20)
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(out)]
    assert main(argv) == 0
    assert "trained 300 ids (43 merges)" in capsys.readouterr().out
    assert main(["tokenizer", "encode", str(out), "to be", "--pieces"]) == 0
    ids_line, pieces_line = capsys.readouterr().out.splitlines()
    assert json.loads(pieces_line) == ["to", " be"]
    before = (out / "vocab.json").read_bytes()
    assert main(argv) == 2  # refuses to overwrite
    assert (out / "vocab.json").read_bytes() == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["tokenizer", "train", "--input", "nope.txt", "--vocab-size", "300", "--out", "o"],
            "nope.txt: no such file or folder",
        ),
        (
            ["tokenizer", "train", "--input", "empty.txt", "--vocab-size", "300", "--out", "o"],
            "training corpus is empty",
        ),
        (
            ["tokenizer", "train", "--input", "empty.txt", "--vocab-size", "10", "--out", "o"],
            "vocab_size=10 is too small",
        ),
        (
            ["tokenizer", "train", "--input", "latin1.txt", "--vocab-size", "300", "--out", "o"],
            "latin1.txt: not UTF-8 text",
        ),
        (["tokenizer", "encode", "missing-dir", "hi"], "missing-dir: no such folder"),
    ],
)
def test_tokenizer_user_errors(argv, message, tmp_path, monkeypatch, capfd):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    code, err = in_folder(tmp_path, argv, monkeypatch, capfd)
    assert code == 2, err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A tiny character-level run folder (model + tokenizer), trained for a few steps."""
    from gptlab.config import TrainConfig
    from gptlab.train import train

    root = tmp_path_factory.mktemp("char_run")
    (root / "text.txt").write_text("To be, or not to be: that is the question.\n" * 40)
    config = TrainConfig(
        data=str(root / "text.txt"),
        out=str(root / "run"),
        batch_size=4,
        max_iters=5,
        eval_interval=5,
        eval_iters=1,
        threads=1,
    )
    train(GPTConfig.preset("tiny", block_size=32), config, progress=False)
    return root / "run"


def test_sample_streams_text_from_a_run(char_run, capsys):
    argv = ["sample", str(char_run), "--prompt", "To be", "--max-new-tokens", "30", "--seed", "3"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("To be") and len(first) >= len("To be") + 30
    assert main(argv + ["--no-stream"]) == 0
    assert capsys.readouterr().out == first  # same seed, same text, streamed or not
    assert main(["sample", str(char_run), "--num-samples", "2", "--max-new-tokens", "5"]) == 0
    assert "-" * 40 in capsys.readouterr().out


def test_ctrl_c_on_a_sample_printed_whole_shows_what_was_made(char_run, capsys, monkeypatch):
    """--no-stream prints at the end: a Ctrl-C before it printed nothing of a long sample."""
    import gptlab.generate

    argv = ["sample", str(char_run), "--prompt", "To be", "--max-new-tokens", "30", "--seed", "3"]
    assert main(argv) == 0
    whole = capsys.readouterr().out
    real = gptlab.generate.stream

    def ten_then_ctrl_c(*args, **kwargs):
        yield from itertools.islice(real(*args, **kwargs), 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(gptlab.generate, "stream", ten_then_ctrl_c)
    assert main(argv + ["--no-stream"]) == 130
    out, err = capsys.readouterr()
    assert out == whole[: len("To be") + 10] + "\n" and err == "gptlab: interrupted\n"


def test_sample_with_int8_weights_writes_what_the_float_model_writes_greedily(char_run, capsys):
    """A tiny trained model, greedy: int8 picks the same characters as float32 here."""
    argv = [
        "sample",
        str(char_run),
        "--prompt",
        "To be",
        "--max-new-tokens",
        "40",
        "--temperature",
        "0",
    ]
    assert main(argv) == 0
    plain = capsys.readouterr().out
    assert main(argv + ["--quantize", "int8"]) == 0
    assert capsys.readouterr().out == plain


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--top-k", "0"], "top_k must be at least 1"),
        (["--max-new-tokens", "-5"], "--max-new-tokens must be >= 0"),
        (["--prompt", "Zebra!"], "character 'Z' at position 0 is not in the vocabulary"),
    ],
)
def test_sample_user_errors(char_run, extra, message, tmp_path, monkeypatch, capfd):
    code, err = in_folder(tmp_path, ["sample", str(char_run), *extra], monkeypatch, capfd)
    assert code == 2, err
    assert err.count("\n") == 1 and message in err


def test_sample_from_a_folder_that_is_not_a_model(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gptlab", "sample", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "no config.json" in result.stderr


def test_eval_commands(char_run, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be: that is the question.\n" * 3)
    assert (
        main(
            [
                "eval",
                "perplexity",
                str(char_run),
                "--input",
                str(text),
                "--json",
                "--method",
                "gptlab",
                "--stride",
                "16",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == len(text.read_text()) - 1 and result["perplexity"] > 1
    # the default (auto) on the main job's kind of model: a character vocabulary has no
    # end-of-text token for lm-eval's method, so auto takes gptlab's and says so
    assert main(["eval", "perplexity", str(char_run), "--input", str(text)]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("gptlab: token perplexity")
        and f"{len(text.read_text()) - 1:,} tokens" in out
    )
    assert (
        main(["eval", "perplexity", str(char_run), "--input", str(text), "--method", "lm-eval"])
        == 2
    )
    assert "end-of-text token" in capsys.readouterr().err
    # endings of very different lengths, so that the summed and the per-byte scores disagree
    examples = [
        {"ctx": "To be, or", "endings": ["not to be, that is the question", "t"], "label": 0},
        {"ctx": "To be, or", "endings": ["not to be, that is the question", "t"], "label": 1},
        {"ctx": "that is", "endings": ["the", "the question. To be, or not"], "label": 1},
        {"ctx": "that is", "endings": ["the", "the question. To be, or not"], "label": 0},
        {"ctx": "To be", "endings": [", or not", "q", "is the question"], "label": 2},
    ]
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps(e) + "\n" for e in examples))
    assert main(["eval", "multiple-choice", str(char_run), "--data", str(mc), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] == len(examples)

    def best(values):
        return max(range(len(values)), key=values.__getitem__)

    acc = acc_norm = 0
    for ex, score in zip(examples, result["scores"], strict=True):
        sums = score["logprob_sum"]
        per_char = [t / len(e) for t, e in zip(sums, ex["endings"], strict=True)]  # lm-eval's
        acc += best(sums) == ex["label"]
        acc_norm += best(per_char) == ex["label"]
    assert result["acc"] == acc / len(examples) and result["acc_norm"] == acc_norm / len(examples)
    assert result["acc"] != result["acc_norm"]  # this data tells the two apart


@pytest.mark.parametrize(
    "argv, message",
    [
        (["perplexity", "RUN", "--input", "missing.txt"], "missing.txt: no such file"),
        (
            ["perplexity", "RUN", "--input", "t.txt", "--method", "gptlab", "--stride", "0"],
            "stride must be in [1,",
        ),
        (["multiple-choice", "RUN", "--data", "bad.jsonl"], "bad.jsonl, line 1: missing field"),
    ],
)
def test_eval_user_errors(char_run, tmp_path, argv, message, monkeypatch, capfd):
    (tmp_path / "t.txt").write_text("To be, or not to be\n")
    (tmp_path / "bad.jsonl").write_text('{"endings": ["a", "b"], "label": 0}\n')
    argv = [str(char_run) if a == "RUN" else a for a in argv]
    code, err = in_folder(tmp_path, ["eval", *argv], monkeypatch, capfd)
    assert code == 2, err
    assert err.count("\n") == 1 and message in err


def test_the_readme_main_job_plans_to_its_budget_then_samples(tmp_path, capsys, monkeypatch):
    """`gptlab train` as the README runs it (the default preset, dtype auto, its time budget),
    on a small corpus and a short budget, then `gptlab sample` on the result."""
    from gptlab.config import TRAIN_PRESETS, load_toml
    from gptlab.hardware import resolve_dtype

    if bf16_emulated():
        pytest.skip(
            "GPTLAB_NATIVE_BF16=1 on a CPU that emulates bfloat16: the preset model "
            "cannot keep a 12 s budget at emulated speed"
        )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text("ROMEO:\nBut soft, what light through yonder window.\n" * 60)
    assert TRAIN_PRESETS["shakespeare-char"]["max_time"] > 0
    assert main(["train", "--data", "text.txt", "--no-progress", "max_time=12"]) == 0
    out = capsys.readouterr().out
    assert "max_time=12s:" in out and "done:" in out
    settings = load_toml("out/shakespeare-char/train.toml")
    assert settings["dtype"] == resolve_dtype("auto", torch.device("cpu"))
    n = settings["max_iters"]
    assert 2 <= n < TRAIN_PRESETS["shakespeare-char"]["max_iters"]
    assert settings["lr_decay_iters"] == n
    assert f"done: {n} steps" in out
    rows = [json.loads(line) for line in open("out/shakespeare-char/metrics.jsonl")]
    assert rows[-1]["step"] == n and rows[-1]["elapsed_s"] <= 12 * 1.5  # the budget held
    assert main(["sample", "out/shakespeare-char", "--max-new-tokens", "20"]) == 0
    assert len(capsys.readouterr().out) >= 20


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux's /proc")
def test_an_unreadable_special_file_is_one_line(char_run, capsys):
    """Reading /proc/self/mem fails with EIO: an OSError that is not 'no such file'."""
    argv = ["sample", str(char_run), "--prompt-file", "/proc/self/mem", "--max-new-tokens", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptlab: error: /proc/self/mem") and err.count("\n") == 1


def test_convert_carries_the_tokenizer_so_the_copy_can_sample(char_run, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(char_run), str(out)]) == 0
    assert (out / "char_vocab.json").read_bytes() == (char_run / "char_vocab.json").read_bytes()
    argv = ["sample", "{}", "--prompt", "To be", "--max-new-tokens", "20", "--seed", "5"]
    capsys.readouterr()
    assert main([a.format(char_run) for a in argv]) == 0
    original = capsys.readouterr().out
    assert main([a.format(out) for a in argv]) == 0
    assert capsys.readouterr().out == original  # the same model and vocabulary
    # --overwrite with a model that has another vocabulary leaves none of the old one behind
    other = tmp_path / "bpe_model"
    tok = train_bpe(["To be, or not to be\n" * 20], 270)
    GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size)).save_pretrained(other)
    tok.save(other)
    assert main(["convert", str(other), str(out), "--overwrite"]) == 0
    assert not (out / "char_vocab.json").exists() and (out / "vocab.json").is_file()


def test_convert_without_a_tokenizer_says_so(tmp_path, capsys):
    GPT(GPTConfig.preset("tiny")).save_pretrained(tmp_path / "a")
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "gptlab: note: no tokenizer saved" in capsys.readouterr().err  # stderr, as notes go


def test_a_prompt_longer_than_the_block_is_one_note_line(char_run, capsys):
    argv = ["sample", str(char_run), "--prompt", "To be, or not " * 10, "--max-new-tokens", "2"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    note = "the prompt has 140 tokens; the model reads only the last 32 (its block_size)"
    assert err == f"gptlab: note: {note}\n"


def test_help_version_and_list_settings(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    from gptlab import __version__

    assert capsys.readouterr().out.startswith(f"gptlab {__version__} ")
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for shown in ("(default: 500)", "(default: 0.8)", "(default: 1337)", "downloaded"):
        assert shown in text
    argv = [
        "train",
        "--list-settings",
        "--preset",
        "tiny",
        "n_layer=3",
        "lr=2e-3",
        "seed=0",
        "max_iters=1",
        "compile=true",
    ]
    assert main(argv) == 0
    rows = {
        line.split()[0]: line.split()[1]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("  ")
    }
    assert rows["n_layer"] == "3" and rows["lr"] == "0.002" and rows["out"] == "out/tiny"
    assert rows["seed"] == "0" and rows["max_iters"] == "1" and rows["compile"] == "true"
    assert rows["padded_vocab_size"] == "unset"
    import dataclasses

    from gptlab.config import GPTConfig as G
    from gptlab.config import TrainConfig

    fields = [f.name for c in (G, TrainConfig) for f in dataclasses.fields(c)]
    assert sorted(rows) == sorted(fields)  # every setting, each once


def test_tokenizer_train_special_alone_means_none(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("to be or not to be\n" * 10)
    out = tmp_path / "tok"
    argv = [
        "tokenizer",
        "train",
        "--input",
        str(tmp_path / "t.txt"),
        "--vocab-size",
        "260",
        "--out",
        str(out),
        "--special",
    ]
    assert main(argv) == 0
    tok = Tokenizer.from_pretrained(out)
    assert tok.special_tokens == {} and tok.eot_id is None


def test_attention_redraws_its_own_figures_and_keeps_a_users_files(tmp_path, capsys):
    figs = tmp_path / "figs"
    assert main(["attention", "positional", "--out", str(figs), "--quick"]) == 0
    assert main(["attention", "positional", "--out", str(figs), "--quick"]) == 0  # its own: fine
    (figs / "mine.txt").write_text("keep me")
    assert main(["attention", "positional", "--out", str(figs), "--quick"]) == 2
    assert main(["attention", "positional", "--out", str(figs), "--quick", "--overwrite"]) == 0
    assert (figs / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in figs.iterdir()) == [
        ".gptlab-figures",
        "mine.txt",
        "positional.png",
    ]
    # a user's own figure of the same name: not ours by its name, so not replaced unasked
    plots = tmp_path / "myplots"
    plots.mkdir()
    (plots / "positional.png").write_bytes(b"my own plot")
    assert main(["attention", "positional", "--out", str(plots), "--quick"]) == 2
    assert "already holds positional.png; pass --overwrite" in capsys.readouterr().err
    assert (plots / "positional.png").read_bytes() == b"my own plot"


def test_convert_onto_a_full_disk_is_one_line_and_leaves_no_folder(
    char_run, tmp_path, capsys, monkeypatch
):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    assert main(["convert", str(char_run), str(tmp_path / "new" / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not write model.safetensors" in err
    assert not (tmp_path / "new").exists()


def test_serve_on_a_port_in_use_is_one_line_before_any_address_is_announced(serve_folder, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(serve_folder), "--port", str(port)]) == 2
    captured = capsys.readouterr()
    assert "http://" not in captured.out  # no "at http://..." for a page that never came
    assert captured.err.count("\n") == 1 and f"cannot serve on 127.0.0.1:{port}" in captured.err


def test_the_command_line_loads_without_torch_and_an_ascii_terminal_gets_escapes(tmp_path):
    """`import gptlab.cli` loads no torch (so --help is instant and a Ctrl-C while torch loads
    is the command's own interrupt, inside main); a terminal that cannot show a character
    gets an escape, not a UnicodeEncodeError."""
    code = "import sys, gptlab.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout == "False\n", result.stderr
    tok = tmp_path / "tok"
    train_bpe(["héllo wörld " * 20], 270).save(tok)
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    result = subprocess.run(
        [sys.executable, "-m", "gptlab", "tokenizer", "encode", str(tok), "héllo", "--pieces"],
        capture_output=True,
        env=env,
    )
    assert result.returncode == 0 and b"\\xe9" in result.stdout, result.stderr


def test_the_escapes_end_with_the_call(tmp_path, monkeypatch):
    """A program that calls main() gets its strict ascii stdout back afterwards."""
    tok = tmp_path / "tok"
    train_bpe(["héllo wörld " * 20], 270).save(tok)
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["tokenizer", "encode", str(tok), "héllo", "--pieces"]) == 0
    out.flush()
    assert b"\\xe9" in raw.getvalue() and out.errors == "strict"


def test_a_reader_that_stops_early_is_no_error(tmp_path):
    """`gptlab info MODEL | head -1`: the closed pipe ends the command quietly, as SIGPIPE
    would (it said 'gptlab: error: Broken pipe' and exit 2)."""
    GPT(GPTConfig.preset("tiny")).save_pretrained(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "gptlab", "info", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # the reader has gone before the first line
    assert process.wait() == 141 and process.stderr.read() == b""


def test_a_broken_pipe_that_is_not_stdout_is_an_error(monkeypatch, capfd):
    """A pipe of the command's own (a subprocess, a socket) is not a reader of stdout that
    stopped early: one line and exit 2, stdout left as it was."""
    import gptlab.cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(gptlab.cli, "cmd_info", broken)
    assert main(["info", "x"]) == 2
    print("still here")
    out, err = capfd.readouterr()
    assert err == "gptlab: error: Broken pipe\n" and out == "still here\n"


def test_ctrl_c_while_a_command_loads_is_one_line_and_exit_130(capsys, monkeypatch):
    class Interrupting:  # Ctrl-C arriving while the sample command imports its modules
        def find_spec(self, name, path=None, target=None):
            if name == "gptlab.generate":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "gptlab.generate", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    assert main(["sample", "nowhere"]) == 130
    assert capsys.readouterr().err == "gptlab: interrupted\n"


def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """convert into a read-only folder once failed after loading and converting, naming a
    temporary file (the probe's failure is made here, since root writes anywhere)."""
    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(["convert", str(tmp_path / "no-such-model"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"gptlab: error: {tmp_path / 'out'}: cannot write there (Permission denied)\n"


def test_utf8_arguments_are_text_under_a_c_locale_without_utf8_mode(tmp_path):
    """LC_ALL=C with PYTHONUTF8=0 hands UTF-8 arguments over as escapes; they were called
    'not valid UTF-8'. Text arguments are decoded; bytes that are not UTF-8 stay one line."""
    tok = tmp_path / "tok"
    train_bpe(["héllo wörld " * 20], 270).save(tok)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "gptlab", "tokenizer", "encode", str(tok), "héllo"],
        capture_output=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == Tokenizer.from_pretrained(tok).encode("héllo")
    result = subprocess.run(
        [sys.executable, "-m", "gptlab", "tokenizer", "encode", str(tok), b"caf\xe9"],
        capture_output=True,
        env=env,
    )
    assert result.returncode == 2 and b"is not valid UTF-8 text" in result.stderr
