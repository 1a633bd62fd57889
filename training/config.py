"""Training configuration: one frozen dataclass whose defaults run on a laptop CPU.

The defaults fine-tune MiniLM on a stratified sample of the training split in
about twelve minutes on two CPU cores. Larger runs are named presets, not another
code path. `TrainConfig.from_dict` rejects unknown keys and wrong types.
`DistillConfig` configures training/distill.py, a student with fewer layers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detection.fusion import ENCODERS
from detection.signals import GROUPS

PRECISIONS = ("auto", "no", "bf16", "fp16")


def resolve_precision(requested: str) -> str:
    """The Accelerate precision to train in: `requested`, or for "auto" bf16 where the
    hardware computes it natively (a CUDA GPU that supports it, or a CPU with AVX-512
    BF16 or AMX), else "no" (fp32). On a CPU without them bf16 is emulated: a MiniLM
    training step took 60 s in bf16 against 1.9 s in fp32 on an AVX2-only host,
    where an AVX-512 BF16 host runs bf16 about twice as fast as fp32."""
    if requested not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    # torch names these checks privately; a torch without them is taken to lack both
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    native = any(getattr(torch.cpu, check, lambda: False)() for check in checks)
    return "bf16" if native else "no"


@dataclass(frozen=True)
class TrainConfig:
    encoder: str = "minilm"
    max_length: int = 256  # tokens the encoder reads per message
    head_tokens: int = 192  # of those, taken from the start; the rest from the end
    batch_size: int = 16
    epochs: int = 1
    max_steps: int | None = None  # stop early after this many optimiser steps
    max_train_messages: int | None = 9000  # stratified sample of the train split
    learning_rate: float = 5e-5  # encoder
    head_learning_rate: float = 1e-3  # signal projection and classifier head
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    freeze_embeddings: bool = True  # saves a third of the backward pass on CPU
    mixed_precision: str = "auto"  # "auto" (see resolve_precision), "no", "bf16" or "fp16"
    seed: int = 13
    log_every: int = 20  # optimiser steps between progress lines
    eval_batch_size: int = 64
    # the signal groups the model reads (detectors and reasons see all of them). The
    # public corpora each reached one recipient (a list, a honeypot), so recipient
    # history there names the corpus, not the attack: the default model leaves it out
    model_signal_groups: tuple[str, ...] = ("message", "sender")

    def __post_init__(self) -> None:
        unknown_groups = sorted(set(self.model_signal_groups) - set(GROUPS))
        if unknown_groups:
            raise ValueError(f"model_signal_groups must be among {GROUPS}, got {unknown_groups}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(
                f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}"
            )
        if not 0 < self.head_tokens < self.max_length - 1:
            raise ValueError(
                f"head_tokens must be in (0, max_length - 1) = (0, {self.max_length - 1}), "
                f"got {self.head_tokens}"
            )
        for name in ("batch_size", "epochs", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        if isinstance(values.get("model_signal_groups"), list):  # as JSON stores it
            values = {**values, "model_signal_groups": tuple(values["model_signal_groups"])}
        return _from_dict(cls, values)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DistillConfig:
    """A student with fewer encoder layers, distilled from a trained model.

    The student starts from the teacher's embeddings, head and the encoder layers
    named in `layers`, then learns the teacher's temperature-softened probabilities
    over a sample of the train split, mixed with the labels (`soft_weight` of the
    loss from the teacher). Each step runs the teacher forward and the student
    forward and backward. The defaults, a 2-layer
    student (teacher layers 2 and 5) on a sample of up to 18,000 messages (13,239 of
    the demo's train split, every attack in it) for two epochs, took 27 minutes on a
    two-core host. Against the 3-layer student that was the default before (layers 1,
    3 and 5, 9,000 messages) it served about a third more mail, and its recall at
    0.1% FPR was 2.3 points higher on validation and 0.5 lower on test
    (docs/performance.md). A 1-layer student (teacher layer 5, the same sample and
    epochs) ran the model in about 0.6 of the 2-layer student's time but found 4.25
    points fewer test attacks, below the TF-IDF baseline, so it is not the default.
    """

    layers: tuple[int, ...] = (2, 5)  # teacher layers the student keeps, in order
    temperature: float = 2.0
    soft_weight: float = 0.7
    batch_size: int = 16
    epochs: int = 2  # one epoch left the student 0.8 points of recall short
    max_steps: int | None = None
    # stratified, as TrainConfig samples; a 2-layer student needs more mail than 9,000
    max_train_messages: int | None = 18000
    learning_rate: float = 1e-4  # encoder
    head_learning_rate: float = 3e-4  # signal projection and head, copied from the teacher
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    freeze_embeddings: bool = True
    mixed_precision: str = "auto"
    seed: int = 13
    log_every: int = 20

    def __post_init__(self) -> None:
        self._check_layers()
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        for name in ("learning_rate", "head_learning_rate"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be 0 or more, got {self.weight_decay}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        for name in ("max_steps", "max_train_messages"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name} must be None (no limit) or at least 1, got {value!r}")
        if not 0.0 <= self.soft_weight <= 1.0:
            raise ValueError(f"soft_weight must be in [0, 1], got {self.soft_weight}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(
                f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}"
            )
        for name in ("batch_size", "epochs", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def _check_layers(self) -> None:
        layers = self.layers
        if not isinstance(layers, tuple) or not layers:
            raise ValueError(
                f"layers must be a non-empty tuple of teacher layer indices, got {layers!r}"
            )
        if not all(_is_int(layer) and layer >= 0 for layer in layers):
            raise ValueError(
                f"layers must be teacher layer indices (integers >= 0), got {list(layers)}"
            )
        if list(layers) != sorted(set(layers)):
            raise ValueError(f"layers must be distinct and in increasing order, got {list(layers)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DistillConfig:
        if isinstance(values.get("layers"), list):
            values = {**values, "layers": tuple(values["layers"])}
        return _from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _from_dict(cls, values: dict[str, Any]):
    """`cls(**values)` after rejecting unknown keys and values of the wrong type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; allowed: {sorted(fields)}")
    for key, value in values.items():
        _check_type(f"{cls.__name__}.{key}", value, fields[key].type)
    return cls(**values)


_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_type(key: str, value: Any, annotation: str) -> None:
    optional = annotation.endswith("| None")
    if value is None and optional:
        return
    if annotation == "tuple[str, ...]":
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key} must be a list of str, got {value!r}")
        return
    if annotation == "tuple[int, ...]":
        if not isinstance(value, tuple) or not all(_is_int(v) for v in value):
            raise ValueError(f"{key} must be a list of int, got {value!r}")
        return
    allowed = _TYPES[annotation.replace("| None", "").strip()]
    is_bool = isinstance(value, bool)
    if not isinstance(value, allowed) or (is_bool and bool not in allowed):
        raise ValueError(f"{key} must be {annotation}, got {value!r}")


PRESETS: dict[str, TrainConfig] = {
    "cpu": TrainConfig(),
    "tiny": TrainConfig(
        encoder="tiny-random",
        max_length=64,
        head_tokens=48,
        batch_size=8,
        max_train_messages=None,
        head_learning_rate=3e-3,
        learning_rate=1e-3,
        freeze_embeddings=False,
        mixed_precision="no",
        log_every=5,
    ),
    "gpu": TrainConfig(
        max_length=512,
        head_tokens=384,
        batch_size=64,
        epochs=3,
        max_train_messages=None,
        freeze_embeddings=False,
        eval_batch_size=256,
    ),
}


# the student distilled beside each training preset: the tiny-random encoder has two
# layers, so its student keeps the second
DISTILL_PRESETS: dict[str, DistillConfig] = {
    "cpu": DistillConfig(),
    "tiny": DistillConfig(layers=(1,), max_train_messages=None, mixed_precision="no", log_every=5),
    "gpu": DistillConfig(),
}
