"""A tiny trained and exported model, shared by the tests that need one.

Two-layer random BERT with the MiniLM tokenizer, trained for a few steps on
synthetic mail: fast, and real in every step (Accelerate, ONNX, parity, publish).
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from detection.sources import RawMessage
from tests.synthetic_mail import synthetic_corpus
from training.config import PRESETS
from training.dataset import dataset_from_messages
from training.pipeline import PipelineConfig, train_and_publish


def synthetic_raw_messages(n: int = 90, seed: int = 0) -> list[tuple[RawMessage, str]]:
    return [
        (RawMessage(f"synthetic#{i}", "synthetic", i, m.data), m.label)
        for i, m in enumerate(synthetic_corpus(n, seed))
    ]


@lru_cache(maxsize=1)
def tiny_model_version() -> tuple[Path, Path]:
    """(model repository, version dir) of a freshly trained tiny model."""
    root = Path(tempfile.mkdtemp(prefix="bulwark-tiny-"))
    data = dataset_from_messages(synthetic_raw_messages(), org="synthetic")
    result = train_and_publish(
        data,
        "synthetic",
        root / "work",
        root / "repository",
        PRESETS["tiny"],
        PipelineConfig(operating_fpr=0.05, baseline=False, variants=("full",)),
    )
    return root / "repository", result.version_dir
