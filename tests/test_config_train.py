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
