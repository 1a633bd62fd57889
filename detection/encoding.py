"""Model text to token ids, with head-and-tail truncation.

Contract: `encode_batch(tokenizer, texts, max_length, head_tokens)` returns int64
arrays `input_ids` and `attention_mask` of shape (batch, longest sequence in the
batch, at most max_length). A text longer than the limit keeps its first
`head_tokens` tokens and its last ones, so a lure at the end is not cut off.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

# characters kept from each end before tokenising: bounds the tokenizer's work on
# very long bodies; 12 characters per token is more than any wordpiece needs
_CHARS_PER_TOKEN = 12


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


def encode_batch(
    tokenizer: Tokenizer, texts: list[str], max_length: int, head_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    if not texts:
        raise ValueError("encode_batch needs at least one text, got an empty batch")
    encodings = tokenizer.encode_batch([_clip_text(t, max_length) for t in texts])
    rows = [_head_and_tail(e.ids, max_length, head_tokens) for e in encodings]
    width = max(len(r) for r in rows)
    input_ids = np.zeros((len(rows), width), dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask
