"""Hugging Face checkpoints in and out: logits must equal transformers' on the same weights."""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers  # the dev extra requires it: missing, the run fails (never skips)
from safetensors.torch import load_file, save_file

from gptlab import GPT, GPTConfig, GptlabError
from gptlab.model.hf import save_pretrained

from conftest import TINY_HF, make_hf_model  # noqa: E402


def hf_logits(hf_model, ids, **kwargs):
    with torch.no_grad():
        return hf_model(ids, **kwargs).logits


def assert_same_logits(model, hf_model, ids):
    with torch.no_grad():
        ours = model(ids).logits
    diff = (ours - hf_logits(hf_model, ids)).abs().max().item()
    assert diff <= 1e-5, f"max |diff| = {diff}"


def write_folder(folder, tensors, config=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or {"model_type": "gpt2", **TINY_HF}))
    save_file({k: v.clone() for k, v in tensors.items()}, folder / "model.safetensors")
    return folder


def test_logits_equal_transformers_from_safetensors(hf_model, hf_folder, ids):
    model = GPT.from_pretrained(hf_folder)
    assert not model.training
    assert model.config == GPTConfig(vocab_size=99, block_size=32, n_layer=2, n_head=4, n_embd=32)
    assert_same_logits(model, hf_model, ids)


def test_logits_equal_transformers_from_pytorch_bin(hf_model, tmp_path, ids):
    (tmp_path / "config.json").write_text(hf_model.config.to_json_string())
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    assert_same_logits(GPT.from_pretrained(tmp_path), hf_model, ids)


def test_sharded_safetensors(hf_model, tmp_path, ids):
    hf_model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert_same_logits(GPT.from_pretrained(tmp_path), hf_model, ids)


def test_gpt2model_names_and_mask_buffers_are_accepted(hf_model, tmp_path, ids):
    """The hub's gpt2 checkpoint names weights without 'transformer.' and keeps attn.bias."""
    tensors = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items()}
    tensors.pop("lm_head.weight", None)
    for i in range(TINY_HF["n_layer"]):
        tensors[f"h.{i}.attn.bias"] = torch.ones(1, 1, 32, 32).tril()
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    write_folder(tmp_path, tensors)
    assert_same_logits(GPT.from_pretrained(tmp_path), hf_model, ids)


def test_compile_prefix_is_tolerated_on_load(hf_model, tmp_path, ids):
    tensors = {"_orig_mod." + k: v for k, v in hf_model.state_dict().items()}
    write_folder(tmp_path, tensors)
    assert_same_logits(GPT.from_pretrained(tmp_path), hf_model, ids)


def test_left_padded_batch_equals_transformers(hf_model, hf_folder):
    model = GPT.from_pretrained(hf_folder)
    torch.manual_seed(3)
    lengths = (1, 5, 17)
    T = max(lengths)
    ids = torch.randint(0, 99, (len(lengths), T))
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, T - n :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
    theirs = hf_logits(hf_model, ids, attention_mask=mask, position_ids=position_ids)
    real = mask.bool()
    diff = (ours[real] - theirs[real]).abs().max().item()
    assert diff <= 1e-5, f"max |diff| at real positions = {diff}"


def test_loss_equals_transformers_loss(hf_model, hf_folder, ids):
    model = GPT.from_pretrained(hf_folder)
    labels = ids.clone()
    labels[0, :4] = -100
    targets = torch.full_like(labels, -100)  # gptlab takes targets already shifted left by one
    targets[:, :-1] = labels[:, 1:]
    with torch.no_grad():
        ours = model(ids, targets=targets).loss
        theirs = hf_model(ids, labels=labels).loss
    assert abs(ours.item() - theirs.item()) <= 1e-5


@pytest.mark.parametrize(
    "changes",
    [{}, {"bias": False}, {"padded_vocab_size": 128}],
    ids=["plain", "no-bias", "padded-vocab"],
)
def test_save_then_transformers_loads_equal_logits(tmp_path, ids, changes):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=99, block_size=32, n_layer=2, n_head=4, n_embd=32, **changes)
    model = GPT(config).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert_same_logits(model, hf_model, ids)
    # ... and gptlab reads back exactly what it wrote, config included
    again = GPT.from_pretrained(tmp_path)
    assert again.config == config
    torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_compiled_model_saves_without_prefix(tmp_path):
    model = GPT(GPTConfig.preset("tiny"))
    compiled = torch.compile(model)
    save_pretrained(compiled, tmp_path / "a")
    compiled.save_pretrained(tmp_path / "b")
    for name in ("a", "b"):
        keys = load_file(tmp_path / name / "model.safetensors").keys()
        assert not [k for k in keys if "_orig_mod" in k]


def test_dtype_and_device(hf_folder):
    model = GPT.from_pretrained(hf_folder, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.lm_head.weight is model.transformer.wte.weight


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def tensors(hf_model):
    return dict(hf_model.state_dict())


def test_missing_weight_is_named(tensors, tmp_path):
    del tensors["transformer.h.1.mlp.c_fc.weight"]
    with pytest.raises(GptlabError, match=r"missing weights transformer\.h\.1\.mlp\.c_fc\.weight"):
        GPT.from_pretrained(write_folder(tmp_path, tensors))


def test_unexpected_weight_is_named(tensors, tmp_path):
    tensors["transformer.h.0.attn.q_proj.weight"] = torch.zeros(32, 32)
    with pytest.raises(GptlabError, match=r"unexpected weights transformer\.h\.0\.attn\.q_proj"):
        GPT.from_pretrained(write_folder(tmp_path, tensors))


def test_wrong_shape_is_named(tensors, tmp_path):
    tensors["transformer.wpe.weight"] = torch.zeros(16, 32)
    with pytest.raises(
        GptlabError, match=r"transformer\.wpe\.weight has shape \(16, 32\), expected \(32, 32\)"
    ):
        GPT.from_pretrained(write_folder(tmp_path, tensors))


def test_empty_folder(tmp_path):
    with pytest.raises(GptlabError, match="no config.json"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", **TINY_HF}))
    with pytest.raises(GptlabError, match="no weights found.*model.safetensors"):
        GPT.from_pretrained(tmp_path)


def test_missing_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(GptlabError, match="no such folder"):
        GPT.from_pretrained(tmp_path / "nope")


def test_truncated_safetensors_names_the_file(hf_folder, tmp_path):
    data = (hf_folder / "model.safetensors").read_bytes()
    (tmp_path / "config.json").write_bytes((hf_folder / "config.json").read_bytes())
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(GptlabError, match=r"model\.safetensors: cannot read"):
        GPT.from_pretrained(tmp_path)


def test_truncated_bin_names_the_file(hf_model, tmp_path):
    (tmp_path / "config.json").write_text(hf_model.config.to_json_string())
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    data = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(GptlabError, match=r"pytorch_model\.bin: cannot read"):
        GPT.from_pretrained(tmp_path)


def test_pickled_code_is_refused(hf_model, tmp_path):
    (tmp_path / "config.json").write_text(hf_model.config.to_json_string())
    torch.save(
        {"weights": hf_model.state_dict(), "oops": GPTConfig()}, tmp_path / "pytorch_model.bin"
    )
    with pytest.raises(GptlabError, match="pytorch_model.bin: cannot read"):
        GPT.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "setting, match",
    [
        ({"activation_function": "relu"}, "activation_function 'relu' is not supported"),
        ({"add_cross_attention": True}, "add_cross_attention=True is not supported"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
        ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn=True"),
        ({"n_inner": 64}, "n_inner=64 is not supported"),
        ({"model_type": "llama"}, "model_type is 'llama'"),
    ],
)
def test_unsupported_settings_are_refused(tensors, tmp_path, setting, match):
    write_folder(tmp_path, tensors, {"model_type": "gpt2", **TINY_HF, **setting})
    with pytest.raises(GptlabError, match=match):
        GPT.from_pretrained(tmp_path)


def test_offline_hub_name_gives_one_clear_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-m", "gptlab", "convert", "gpt2", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "openai-community/gpt2" in lines[0] and "pass a local folder" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cross_check_with_a_second_random_model(tmp_path, ids):
    """A different size (more heads, more layers) guards against a shape-specific mapping."""
    hf_model = make_hf_model(seed=5, n_embd=48, n_head=6, n_layer=3, layer_norm_epsilon=1e-6)
    hf_model.save_pretrained(tmp_path)
    model = GPT.from_pretrained(tmp_path)
    assert model.config.layer_norm_eps == 1e-6
    assert_same_logits(model, hf_model, ids)


def test_the_inference_loader_is_the_one_rule_set(tmp_path):
    """load_for_inference: the model in eval mode with its tokenizer; a folder of int8 weights
    computes in float32 whatever auto means here, and refuses another dtype in one line."""
    from gptlab import CharTokenizer, GPTConfig, load_for_inference

    tok = CharTokenizer.from_text("abc def")
    GPT(
        GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    ).save_pretrained(tmp_path / "m")
    tok.save(tmp_path / "m")
    model, loaded = load_for_inference(tmp_path / "m", "cpu", "float32")
    assert not model.training and loaded.vocab_size == tok.vocab_size
    int8_model, _ = load_for_inference(tmp_path / "m", "cpu", quantize="int8")
    int8_model.save_pretrained(tmp_path / "q")
    tok.save(tmp_path / "q")
    again, _ = load_for_inference(tmp_path / "q", "cpu", "auto")
    assert again.transformer.wte.weight.dtype == torch.float32
    with pytest.raises(GptlabError, match=r"q \(int8 weights\) computes in float32"):
        load_for_inference(tmp_path / "q", "cpu", "bfloat16")
