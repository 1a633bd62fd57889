import numpy as np
import pytest

from detection.encoding import encode_batch, load_tokenizer
from detection.fusion import tokenizer_path


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(tokenizer_path()))


def test_batch_is_padded_to_its_longest_row_with_a_matching_mask(tokenizer):
    ids, mask = encode_batch(tokenizer, ["short", "a somewhat longer text here"], 64, 32)
    assert ids.shape == mask.shape
    assert ids.dtype == np.int64
    assert mask[0].sum() < mask[1].sum()
    assert ids[0, mask[0].sum() :].tolist() == [0] * (ids.shape[1] - mask[0].sum())


def test_long_text_keeps_its_head_and_tail_within_max_length(tokenizer):
    text = "opening " + "filler " * 2000 + "verify password"
    ids, mask = encode_batch(tokenizer, [text], 32, 16)
    tokens = tokenizer.decode(ids[0].tolist())
    assert ids.shape[1] == 32
    assert tokens.startswith("opening")
    assert tokens.endswith("verify password")


def test_empty_batch_is_refused_rather_than_sent_to_the_model(tokenizer):
    with pytest.raises(ValueError, match="empty batch"):
        encode_batch(tokenizer, [], 32, 16)
