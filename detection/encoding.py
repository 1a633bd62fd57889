"""Model text to token ids, with head-and-tail truncation and length buckets.

Contract:
- `encode_rows(tokenizer, texts, max_length, head_tokens)` returns each text's token
  ids (a list per text, at most max_length long). A text longer than the limit keeps
  its first `head_tokens` tokens and its last ones, so a lure at the end is not cut off.
- `pad_rows(rows)` returns int64 arrays `input_ids` and `attention_mask` of shape
  (len(rows), longest row).
- `encode_batch(...)` is both at once: (batch, longest sequence in the batch).
- `length_buckets(lengths, boundaries, max_batch_tokens)` groups row indices so that
  rows of similar length run together: a short message that arrives in the same
  dynamic batch as a long one is not padded to the long one's length.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

# characters kept from each end before tokenising: bounds the tokenizer's work on
# very long bodies; 12 characters per token is more than any wordpiece needs
_CHARS_PER_TOKEN = 12

# a row joins the bucket of the first boundary at least its length; the last bucket
# takes everything longer
DEFAULT_BUCKETS = (32, 64, 128, 192, 256)
# padded tokens per ONNX Runtime call: 16 rows of 256, or 128 rows of 32
DEFAULT_BATCH_TOKENS = 4096


def load_tokenizer(path: str) -> Tokenizer:
    tokenizer = Tokenizer.from_file(path)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _clip_text(text: str, max_length: int) -> str:
    budget = max_length * _CHARS_PER_TOKEN
    if len(text) <= 2 * budget:
        return text
    return f"{text[:budget]} {text[-budget:]}"


def _head_and_tail(ids: list[int], max_length: int, head_tokens: int) -> list[int]:
    """Keep [CLS] + head + tail + [SEP] within max_length."""
    if len(ids) <= max_length:
        return ids
    cls, body, sep = ids[0], ids[1:-1], ids[-1]
    room = max_length - 2
    head = min(head_tokens, room)
    tail = room - head
    return [cls, *body[:head], *(body[len(body) - tail :] if tail else []), sep]


def encode_rows(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int, head_tokens: int
) -> list[list[int]]:
    """Each text's token ids, [CLS] ... [SEP], cut head-and-tail to max_length."""
    if not texts:
        raise ValueError("encoding needs at least one text, got an empty batch")
    encodings = tokenizer.encode_batch([_clip_text(t, max_length) for t in texts])
    return [_head_and_tail(e.ids, max_length, head_tokens) for e in encodings]


def pad_rows(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64, zero-padded to the longest row."""
    width = max(len(r) for r in rows)
    input_ids = np.zeros((len(rows), width), dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


def encode_batch(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int, head_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    return pad_rows(encode_rows(tokenizer, texts, max_length, head_tokens))


def length_buckets(
    lengths: Sequence[int],
    boundaries: Sequence[int] = DEFAULT_BUCKETS,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
) -> list[list[int]]:
    """Row indices grouped by length bucket, each group at most `max_batch_tokens`
    padded tokens (and at least one row); rows keep their input order in a group.

    Raises ValueError for boundaries that are not positive and increasing, or a
    token budget below one.
    """
    if (
        not boundaries
        or any(b < 1 for b in boundaries)
        or list(boundaries) != sorted(set(boundaries))
    ):
        raise ValueError(
            f"bucket boundaries must be positive and strictly increasing, got {list(boundaries)}"
        )
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}")

    by_bucket: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        bucket = min(bisect.bisect_left(boundaries, length), len(boundaries) - 1)
        by_bucket.setdefault(bucket, []).append(index)

    groups: list[list[int]] = []
    for bucket in sorted(by_bucket):
        group: list[int] = []
        width = 0
        for index in by_bucket[bucket]:
            wider = max(width, lengths[index])
            if group and wider * (len(group) + 1) > max_batch_tokens:
                groups.append(group)
                group, wider = [], lengths[index]
            group.append(index)
            width = wider
        groups.append(group)
    return groups
