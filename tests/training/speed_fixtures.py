"""The tiny trained model's checkpoint and data, for the variant, distillation and
quantisation tests (tests/model_fixtures.py trains it once per session)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from datasets import DatasetDict

from tests.model_fixtures import synthetic_raw_messages, tiny_model_version
from training.dataset import dataset_from_messages


def tiny_checkpoint() -> Path:
    """The checkpoint folder the tiny model version was exported from."""
    repository, _ = tiny_model_version()
    return repository.parent / "work" / "checkpoint"


@lru_cache(maxsize=1)
def tiny_training_data() -> DatasetDict:
    """The synthetic table the tiny model was trained on."""
    return dataset_from_messages(synthetic_raw_messages(), org="synthetic")


def parity_rows(n: int = 4) -> list[tuple[str, list[float]]]:
    validation = tiny_training_data()["validation"]
    n = min(n, len(validation))
    return list(zip(validation["text"][:n], validation["signals"][:n], strict=True))
