"""Int8 dynamic quantisation of an exported fusion model (ONNX Runtime).

Contract: `quantize_model(source, target, config)` writes an int8 copy of the ONNX
model at `source` to `target` and returns what it did (a JSON-ready dict). Weights
of the matrix products (the fused attention and the feed-forward layers) become
signed 8-bit integers, per output channel; activations are quantised on the fly per
call, which is why no calibration data is needed. On a CPU with AVX-512 VNNI, ONNX
Runtime runs those products with 8-bit dot-product instructions.

Quantisation changes the probabilities slightly, so the parity check against
PyTorch does not apply; `training.variants` measures the variant's recall instead.

Run on an exported version folder (writes model.onnx into the target folder):
    python -m training.quantize --source model_repository/bulwark/1/model.onnx \
        --target runs/int8/model.onnx
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

OPERATORS = ("MatMul", "Attention", "Gemm")
# what quantize_dynamic turns them into
INT8_OPERATORS = ("MatMulInteger", "QAttention", "DynamicQuantizeMatMul", "QGemm")


@dataclass(frozen=True)
class QuantizeConfig:
    """Which operators are quantised and how; the defaults keep the recall of the
    fp32 model on the demo's validation split (docs/performance.md)."""

    operators: tuple[str, ...] = ("MatMul", "Attention")
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights: only for CPUs without VNNI

    def __post_init__(self) -> None:
        unknown = sorted(set(self.operators) - set(OPERATORS))
        if not self.operators or unknown:
            raise ValueError(
                f"operators must be a non-empty subset of {OPERATORS}, got {list(self.operators)}"
            )


def quantize_model(source: Path, target: Path, config: QuantizeConfig | None = None) -> dict:
    """Write the int8 model; return the config used and the operators before and after."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    config = config or QuantizeConfig()
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise FileNotFoundError(f"no ONNX model at {source} to quantise")
    if source.resolve() == target.resolve():
        raise ValueError(f"quantise into another file than the source, got {source} for both")
    target.parent.mkdir(parents=True, exist_ok=True)

    # the quantiser logs a line per tensor of unknown type on the root logger
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        quantize_dynamic(
            str(source),
            str(target),
            op_types_to_quantize=list(config.operators),
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            weight_type=QuantType.QInt8,
            # the fused operators (Attention, SkipLayerNormalization) are outside ONNX
            # shape inference, so their outputs' type is stated
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)
    before = Counter(node.op_type for node in onnx.load(str(source)).graph.node)
    after = Counter(node.op_type for node in onnx.load(str(target)).graph.node)
    summary = {
        "method": "onnxruntime dynamic quantisation, int8 weights",
        "config": asdict(config),
        "int8_operators": {op: after[op] for op in INT8_OPERATORS if after.get(op)},
        "fp32_operators_left": {op: after.get(op, 0) for op in OPERATORS if before.get(op)},
        "bytes": {"fp32": source.stat().st_size, "int8": target.stat().st_size},
    }
    logger.info(
        "quantised %s -> %s (%.1f MB -> %.1f MB)",
        source,
        target,
        summary["bytes"]["fp32"] / 1e6,
        summary["bytes"]["int8"] / 1e6,
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="an fp32 model.onnx")
    parser.add_argument("--target", type=Path, required=True, help="where the int8 model goes")
    parser.add_argument("--per-tensor", action="store_true", help="one scale per weight matrix")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = QuantizeConfig(per_channel=not args.per_tensor)
    print(quantize_model(args.source, args.target, config))


if __name__ == "__main__":
    main()
