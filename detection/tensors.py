"""Tensor names, shapes and dtypes, written once.

The ONNX exporter, `model_repository/*/config.pbtxt`, the Triton model and the
client all read these. A dimension of -1 is variable (batch or sequence); the
batch dimension is implied by Triton's max_batch_size and not listed in `dims`.
"""

from __future__ import annotations

from dataclasses import dataclass

from detection.signals import REGISTRY

CLASS_NAMES = ("safe", "spam", "attack")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    triton_dtype: str  # as written in config.pbtxt, e.g. "TYPE_INT64"
    numpy_dtype: str  # as numpy spells it, e.g. "int64"; "object" for BYTES
    dims: tuple[int, ...]  # without the batch dimension


# the exported ONNX fusion model
INPUT_IDS = TensorSpec("INPUT_IDS", "TYPE_INT64", "int64", (-1,))
ATTENTION_MASK = TensorSpec("ATTENTION_MASK", "TYPE_INT64", "int64", (-1,))
SIGNALS = TensorSpec("SIGNALS", "TYPE_FP32", "float32", (len(REGISTRY),))
PROBABILITIES = TensorSpec("PROBABILITIES", "TYPE_FP32", "float32", (len(CLASS_NAMES),))

ONNX_INPUTS = (INPUT_IDS, ATTENTION_MASK, SIGNALS)
ONNX_OUTPUTS = (PROBABILITIES,)

# the served Triton model: raw message in, verdict out
RAW_MESSAGE = TensorSpec("RAW_MESSAGE", "TYPE_STRING", "object", (1,))
ORG_ID = TensorSpec("ORG_ID", "TYPE_STRING", "object", (1,))
VERDICT = TensorSpec("VERDICT", "TYPE_STRING", "object", (1,))
CATEGORY = TensorSpec("CATEGORY", "TYPE_STRING", "object", (1,))
SCORE = TensorSpec("SCORE", "TYPE_FP32", "float32", (1,))
REASONS = TensorSpec("REASONS", "TYPE_STRING", "object", (1,))  # a JSON list

SERVED_INPUTS = (RAW_MESSAGE, ORG_ID)
SERVED_OUTPUTS = (PROBABILITIES, VERDICT, CATEGORY, SCORE, REASONS)

# optional served input: how to parse RAW_MESSAGE, "rfc822" (the default) or "text"
MESSAGE_KIND = TensorSpec("MESSAGE_KIND", "TYPE_STRING", "object", (1,))
OPTIONAL_SERVED_INPUTS = (MESSAGE_KIND,)
