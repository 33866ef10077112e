import torch

from gptlab.attention.seq2seq import encode_pairs, number_to_words, train_numbers


def test_number_words():
    assert number_to_words(0) == ["zero"]
    assert number_to_words(4072) == ["four", "thousand", "seventy", "two"]
    assert number_to_words(913) == ["nine", "hundred", "thirteen"]
    src, lens, tgt = encode_pairs([7, 1234])
    assert lens.tolist() == [1, 4] and src[1].tolist() == [2, 3, 4, 5]


def test_bahdanau_learns_to_translate_held_out_numbers():
    torch.manual_seed(7)
    after_seven = torch.rand(2)
    torch.manual_seed(7)
    result = train_numbers(steps=300, seed=0)  # ~3 s here; the demo trains longer
    assert torch.equal(torch.rand(2), after_seven)  # seeded its own stream, left the caller's
    assert result.exact_match >= 0.95, result.exact_match
    assert result.losses[-1] < result.losses[0] / 10
    src, lens, _ = encode_pairs([4072, 15])
    words, weights = result.model.translate(src, lens)
    assert words[0] == ["four", "thousand", "seventy", "two"]
    assert weights.shape == (2, 8, 4)
    assert (weights[1, :, 2:] == 0).all()  # a 2-digit source: no weight on padding
