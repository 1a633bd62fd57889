import numpy as np
import pytest

from detection.encoding import encode_batch, encode_rows, length_buckets, load_tokenizer, pad_rows
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


def test_rows_of_different_lengths_fall_into_separate_buckets():
    lengths = [10, 250, 30, 240, 12]
    groups = length_buckets(lengths, boundaries=(32, 256), max_batch_tokens=10_000)
    assert groups == [[0, 2, 4], [1, 3]]


def test_a_bucket_is_split_so_no_call_exceeds_the_token_budget():
    lengths = [200, 256, 220, 256, 256]
    groups = length_buckets(lengths, boundaries=(256,), max_batch_tokens=512)
    assert sorted(i for g in groups for i in g) == list(range(5))
    for group in groups:
        assert max(lengths[i] for i in group) * len(group) <= 512


def test_a_row_longer_than_the_budget_still_gets_a_call_of_its_own():
    assert length_buckets([300, 300], boundaries=(256,), max_batch_tokens=100) == [[0], [1]]


@pytest.mark.parametrize("boundaries", [(), (64, 32), (0, 32), (32, 32)])
def test_bucket_boundaries_must_be_positive_and_increasing(boundaries):
    with pytest.raises(ValueError, match="strictly increasing"):
        length_buckets([5], boundaries=boundaries)


def test_padding_rows_gives_the_same_arrays_as_encoding_a_batch(tokenizer):
    texts = ["short", "a rather longer text with more words in it"]
    rows = encode_rows(tokenizer, texts, 64, 32)
    ids, mask = pad_rows(rows)
    expected_ids, expected_mask = encode_batch(tokenizer, texts, 64, 32)
    assert np.array_equal(ids, expected_ids) and np.array_equal(mask, expected_mask)
    assert [len(r) for r in rows] == mask.sum(axis=1).tolist()
