"""Which ONNX Runtime graph fusions a CPU session leaves out.

Contract: `UNFUSED_ON_CPU` names the ONNX Runtime optimizers that every CPU session of
an exported model is built without (`disabled_optimizers`), whether it serves
(serving/scorer.py) or measures (scripts/bench_gpu.py). Only the standard library is
imported, so a machine with nothing but numpy and onnxruntime can read it.

SkipLayerNormFusion is left out: ONNX Runtime's CPU SkipLayerNormalization kernel
took four times as long as the Add and LayerNormalization it replaces (a fifth of a
3-layer student's time alone on one thread; docs/performance.md), so the export
leaves them apart (training/export.py) and loading must not rejoin them. On a GPU
the fused kernel is the fast one, so a CUDA session keeps it.
"""

UNFUSED_ON_CPU = ("SkipLayerNormFusion",)
