import dataclasses

import pytest

from gptlab import GPTConfig, GptlabError
from gptlab.config import TrainConfig, apply_settings, load_toml, parse_overrides, to_toml


def test_overrides_reach_the_right_config_with_types():
    settings = parse_overrides(["n_layer=4", "lr=3e-3", "compile=true", "max_iters=1e3"])
    model, train = apply_settings(GPTConfig.preset("tiny"), TrainConfig(), settings)
    assert model.n_layer == 4
    assert (train.lr, train.compile, train.max_iters) == (3e-3, True, 1000)


@pytest.mark.parametrize(
    "key, hint",
    [("n_layers", "did you mean 'n_layer'"), ("learning_rate", "did you mean 'lr'")],
)
def test_unknown_key_suggests_the_closest(key, hint):
    with pytest.raises(GptlabError, match=f"unknown setting '{key}'; {hint}"):
        apply_settings(GPTConfig(), TrainConfig(), {key: "1"})


def test_bad_values():
    with pytest.raises(GptlabError, match="max_iters must be an integer, got 'lots'"):
        apply_settings(GPTConfig(), TrainConfig(), {"max_iters": "lots"})
    with pytest.raises(GptlabError, match="expected key=value"):
        parse_overrides(["lr"])
    with pytest.raises(GptlabError, match="dtype must be auto, float32, bfloat16 or float16"):
        TrainConfig(dtype="int8")


def test_toml_round_trip(tmp_path):
    model = GPTConfig.preset("tiny", dropout=0.1, padded_vocab_size=320)
    train = TrainConfig(lr=2e-3, data='weird "name"\\path', compile=True)
    (tmp_path / "t.toml").write_text(to_toml(model, train))
    again = apply_settings(GPTConfig(), TrainConfig(), load_toml(str(tmp_path / "t.toml")))
    assert again == (model, train)
    (tmp_path / "bad.toml").write_text("lr = = 1")
    with pytest.raises(GptlabError, match="bad.toml: not valid TOML"):
        load_toml(str(tmp_path / "bad.toml"))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("lr", "nan", "lr must be a finite number"),
        ("lr", "inf", "lr must be a finite number"),
        ("weight_decay", "nan", "weight_decay must be a finite number"),
        ("beta1", "2", "beta1 must be in [0, 1)"),
        ("beta2", "-0.1", "beta2 must be in [0, 1)"),
        ("threads", "-3", "threads must be >= 0"),
        ("threads", "100000", "threads must be at most 1024"),  # (a segfault in torch)
        ("grad_clip", "-1", "grad_clip must be >= 0"),
        ("warmup_iters", "-1", "warmup_iters must be >= 0"),
        ("max_time", "nan", "max_time must be a finite number"),
        ("layer_norm_eps", "-1", "layer_norm_eps must be > 0"),
        ("dropout", "nan", "dropout must be a finite number"),
        ("n_layer", "2.5", "n_layer must be an integer"),
    ],
)
def test_every_field_is_checked_where_it_is_set(key, value, message):
    with pytest.raises(GptlabError) as info:
        apply_settings(GPTConfig(), TrainConfig(), {key: value})
    assert message in str(info.value)


def test_toml_values_of_the_wrong_type_are_one_line(tmp_path):
    for line, message in [
        ('n_layer = "two"', "n_layer must be an integer"),
        ("lr = true", "lr must be a finite number"),
        ("out = 5", "out must be text"),
    ]:
        (tmp_path / "t.toml").write_text(line + "\n")
        with pytest.raises(GptlabError, match=message):
            apply_settings(GPTConfig(), TrainConfig(), load_toml(str(tmp_path / "t.toml")))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FIELDS = [
    "lr",
    "n_layer",
    "dropout",
    "beta1",
    "max_iters",
    "compile",
    "dtype",
    "max_time",
    "padded_vocab_size",
    "threads",
    "out",
    "nonsense",
]


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(FIELDS),
        st.one_of(st.text(max_size=12), st.integers(), st.floats(), st.booleans(), st.none()),
        max_size=4,
    )
)
def test_any_settings_give_a_config_or_one_clear_error(pairs):
    """key=value text or TOML values of any kind: valid configs, or a GptlabError."""
    try:
        model, train = apply_settings(GPTConfig.preset("tiny"), TrainConfig(), pairs)
    except GptlabError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(model, GPTConfig) and isinstance(train, TrainConfig)


def test_min_lr_is_checked_on_the_final_settings(tmp_path, monkeypatch, capfd):
    """A --config file lowering lr and a min_lr= fixing it together are fine (the preset's
    min_lr, 5e-4, is not checked against the file's lr alone); left unfixed, one line."""
    from gptlab.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ft.toml").write_text("[train]\nlr = 1e-4\n")
    assert main(["train", "--config", "ft.toml", "min_lr=1e-5", "--list-settings"]) == 0
    capfd.readouterr()
    assert main(["train", "--config", "ft.toml", "--list-settings"]) == 2
    assert "min_lr=0.0005 is above lr=0.0001" in capfd.readouterr().err


def test_a_python_caller_gets_the_min_lr_check_too(tmp_path):
    from gptlab.train import train

    config = TrainConfig(data=str(tmp_path / "t.txt"), out=str(tmp_path / "r"), lr=1e-4)
    with pytest.raises(GptlabError, match="min_lr=0.0005 is above lr=0.0001"):
        train(GPTConfig.preset("tiny"), dataclasses.replace(config, min_lr=5e-4))
    assert not (tmp_path / "r").exists()
