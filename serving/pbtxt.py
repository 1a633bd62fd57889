"""Render the served model's Triton `config.pbtxt` from detection/tensors.py.

Contract: `render_config(settings) -> str` is the text of `bulwark/config.pbtxt`;
`write_config(repository, settings) -> Path` writes it into a model repository and
returns its path; `onnx_options(model_config)` reads the ONNX Runtime settings back
from the config as the Triton model receives it. Inputs and outputs come from
`detection.tensors`, so the names, dtypes and dims in the config are the ones the
exporter, the Triton model and the client use. `model_repository/bulwark/config.pbtxt`
is this renderer's output, committed; tests/serving/test_pbtxt.py fails when the two
differ.

Regenerate the committed file with:

    .venv/bin/python -m serving.pbtxt --repository model_repository
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from detection.tensors import OPTIONAL_SERVED_INPUTS, SERVED_INPUTS, SERVED_OUTPUTS, TensorSpec
from serving.onnx_settings import SPIN_MODES, SPIN_WITHIN_CALLS, is_count

logger = logging.getLogger(__name__)

MODEL_NAME = "bulwark"
CONFIG_FILE = "config.pbtxt"
# the config's parameters the Triton model reads (serving/triton_model.py)
ONNX_THREADS = "ONNX_THREADS"
ONNX_SPINNING = "ONNX_SPINNING"
ONNX_BATCH_THREADS = "ONNX_BATCH_THREADS"
MAX_THREADS = 1024  # more intra-op threads than any host has cores is a typo


@dataclass(frozen=True)
class ServingSettings:
    """What `config.pbtxt` sets beyond the tensors; the defaults suit one CPU host.

    The queue delay is the latency a request may spend waiting for others to batch
    with; the default timeout rejects a request that waited in the queue so long that
    a mail gateway would rather fall back than wait on. A request that finds
    `max_queue_size` requests queued is rejected at once ("Exceeds maximum queue
    size"); serving/client.py retries both kinds of rejection with backoff and
    shrinks its in-flight bound (docs/monitoring.md).
    """

    name: str = MODEL_NAME
    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (16, 64)
    # no waiting for company: a lone request runs at once (200 us of delay cost a
    # request 0.27 ms at concurrency 1), and requests that queue while both
    # instances are busy are still merged into the next batch
    max_queue_delay_us: int = 0
    max_queue_size: int = 1024
    queue_timeout_us: int = 2_000_000
    # two instances: with one, a request that arrives while the instance is still
    # finishing the previous batch now and then waits about 500 ms in Triton's queue
    # (docs/performance.md); with two, one of them is free
    instance_count: int = 2
    # ONNX Runtime in each instance (serving.scorer.RuntimeSettings): intra-op threads
    # (0: one per core) for a lone message, spinning only while a call runs (a lone
    # request's operators do not wait for sleeping threads to wake), and one thread
    # for a batch of more than one: batches form while both instances are busy, and
    # two instances whose threads wait on each other take the cores from each other
    # (docs/performance.md)
    onnx_threads: int = 0
    onnx_spinning: str = SPIN_WITHIN_CALLS
    onnx_batch_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "instance_count", "max_queue_size", "queue_timeout_us"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("onnx_threads", "onnx_batch_threads"):
            got = getattr(self, name)
            if not is_count(got) or not 0 <= got <= MAX_THREADS:
                raise ValueError(
                    f"{name} must be a whole number, 0 (one per core) to {MAX_THREADS}, got {got!r}"
                )
        if self.onnx_spinning not in SPIN_MODES:
            raise ValueError(
                f"onnx_spinning must be one of {SPIN_MODES}, got {self.onnx_spinning!r}"
            )
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        too_big = [s for s in self.preferred_batch_sizes if not 1 <= s <= self.max_batch_size]
        if too_big:
            raise ValueError(
                f"preferred_batch_sizes must lie in [1, max_batch_size={self.max_batch_size}], "
                f"got {list(self.preferred_batch_sizes)}"
            )


def render_config(settings: ServingSettings | None = None) -> str:
    """The text of the served model's config.pbtxt, ending in a newline."""
    settings = settings or ServingSettings()
    inputs = [_tensor_block(spec) for spec in SERVED_INPUTS]
    inputs += [_tensor_block(spec, optional=True) for spec in OPTIONAL_SERVED_INPUTS]
    outputs = [_tensor_block(spec) for spec in SERVED_OUTPUTS]
    preferred = ", ".join(str(size) for size in settings.preferred_batch_sizes)

    lines = [
        "# Generated by serving/pbtxt.py from detection/tensors.py; do not edit by hand.",
        "# Regenerate: .venv/bin/python -m serving.pbtxt --repository model_repository",
        f'name: "{settings.name}"',
        'backend: "python"',
        f"max_batch_size: {settings.max_batch_size}",
        "version_policy: { latest: { num_versions: 1 } }",
        "",
        "input [",
        _join_blocks(inputs),
        "]",
        "output [",
        _join_blocks(outputs),
        "]",
        "",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {preferred} ]",
        f"  max_queue_delay_microseconds: {settings.max_queue_delay_us}",
        "  default_queue_policy {",
        f"    max_queue_size: {settings.max_queue_size}",
        "    timeout_action: REJECT",
        f"    default_timeout_microseconds: {settings.queue_timeout_us}",
        "    allow_timeout_override: true",
        "  }",
        "}",
        "",
        "instance_group [",
        f"  {{ kind: KIND_CPU, count: {settings.instance_count} }}",
        "]",
        "",
        "# the model reads its inputs on the host; never hand it device memory",
        _parameter("FORCE_CPU_ONLY_INPUT_TENSORS", "yes"),
        "# ONNX Runtime in each instance: intra-op threads (0: one per core) for a lone",
        "# message, when they spin, and the threads for a batch of more than one",
        _parameter(ONNX_THREADS, str(settings.onnx_threads)),
        _parameter(ONNX_SPINNING, settings.onnx_spinning),
        _parameter(ONNX_BATCH_THREADS, str(settings.onnx_batch_threads)),
    ]
    return "\n".join(lines) + "\n"


def write_config(repository: str | Path, settings: ServingSettings | None = None) -> Path:
    """Write `<repository>/<name>/config.pbtxt` (creating folders); return its path."""
    settings = settings or ServingSettings()
    path = Path(repository) / settings.name / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_config(settings))
    logger.info("wrote %s", path)
    return path


def onnx_options(model_config: dict) -> dict:
    """`serving.scorer.RuntimeSettings` arguments (`threads`, `spinning`,
    `batch_threads`) from the ONNX_* parameters of a model config as Triton hands it
    to the model (JSON);
    those it does not set are left out, so RuntimeSettings' defaults apply.

    Raises ValueError naming the parameter whose value is not allowed.
    """
    parameters = model_config.get("parameters") or {}

    def value(key: str) -> str | None:
        found = parameters.get(key)
        return None if found is None else str(found.get("string_value", "")).strip()

    options: dict = {}
    for key, option in ((ONNX_THREADS, "threads"), (ONNX_BATCH_THREADS, "batch_threads")):
        threads = value(key)
        if threads is None:
            continue
        if not (threads.isascii() and threads.isdigit()) or int(threads) > MAX_THREADS:
            raise ValueError(
                f"config.pbtxt {key} must be a whole number, 0 (one per core) to "
                f"{MAX_THREADS}, got {threads!r}"
            )
        options[option] = int(threads)
    spinning = value(ONNX_SPINNING)
    if spinning is not None:
        if spinning not in SPIN_MODES:
            raise ValueError(
                f"config.pbtxt {ONNX_SPINNING} must be one of {SPIN_MODES}, got {spinning!r}"
            )
        options["spinning"] = spinning
    return options


def _parameter(key: str, value: str) -> str:
    return f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}'


def _tensor_block(spec: TensorSpec, optional: bool = False) -> str:
    dims = ", ".join(str(d) for d in spec.dims)
    fields = [f'name: "{spec.name}"', f"data_type: {spec.triton_dtype}", f"dims: [ {dims} ]"]
    if optional:
        fields.append("optional: true")
    return "  { " + ", ".join(fields) + " }"


def _join_blocks(blocks: Iterable[str]) -> str:
    return ",\n".join(blocks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the served model's config.pbtxt.")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    args = parser.parse_args(argv)
    print(write_config(args.repository))


if __name__ == "__main__":
    main()
