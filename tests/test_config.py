import pytest

from gptlab import GPTConfig, GptlabError


def test_presets_have_published_shapes():
    shapes = {
        name: (c.n_layer, c.n_embd, c.n_head, c.vocab_size, c.block_size)
        for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
        for c in [GPTConfig.preset(name)]
    }
    assert shapes == {
        "gpt2": (12, 768, 12, 50257, 1024),
        "gpt2-medium": (24, 1024, 16, 50257, 1024),
        "gpt2-large": (36, 1280, 20, 50257, 1024),
        "gpt2-xl": (48, 1600, 25, 50257, 1024),
    }


def test_preset_overrides():
    c = GPTConfig.preset("gpt2", block_size=128, dropout=0.1)
    assert (c.block_size, c.dropout, c.n_layer) == (128, 0.1, 12)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(GptlabError, match="unknown preset 'gpt3'.*gpt2, gpt2-medium, gpt2-large"):
        GPTConfig.preset("gpt3")


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="n_embd=100 is not divisible by n_head=3"):
        GPTConfig(n_embd=100, n_head=3)


def test_padded_vocab_cannot_shrink():
    with pytest.raises(ValueError, match="padded_vocab_size=100 is smaller than vocab_size=200"):
        GPTConfig(vocab_size=200, padded_vocab_size=100)


def test_a_retired_setting_in_an_old_runs_toml_is_a_note_not_an_error():
    """log_interval was never read and is gone; runs saved before still name it."""
    from gptlab.config import TrainConfig, apply_settings

    with pytest.warns(UserWarning, match="log_interval is no longer a setting"):
        model, train = apply_settings(GPTConfig(), TrainConfig(), {"log_interval": 10, "lr": 0.1})
    assert train.lr == 0.1 and not hasattr(train, "log_interval")
