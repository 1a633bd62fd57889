import json
from collections import Counter

import onnx
import pytest

from serving.scorer import SPIN_NEVER, OnnxFusion, onnx_session
from tests.model_fixtures import tiny_model_version
from tests.training.speed_fixtures import parity_rows, tiny_checkpoint
from training.export import INT8_TOLERANCE, export_variant
from training.quantize import QuantizeConfig, quantize_model


def test_int8_variant_runs_its_matrix_products_in_int8_close_to_pytorch(tmp_path):
    rows = parity_rows(8)
    entry = export_variant(tiny_checkpoint(), tmp_path, rows, "int8")

    operators = {node.op_type for node in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert {"MatMulInteger", "QAttention"} <= operators
    assert entry["quantization"]["int8_operators"]["QAttention"] == 2  # one per encoder layer
    assert entry["quantization"]["parity"]["max_abs_difference"] <= INT8_TOLERANCE

    meta = json.loads((tmp_path / "bulwark.json").read_text())
    assert meta["variant"]["name"] == "int8"
    probabilities = OnnxFusion(tmp_path).probabilities([t for t, _ in rows], [s for _, s in rows])
    assert probabilities.shape == (len(rows), 3)


def test_residual_additions_stay_apart_from_layer_norms_in_the_export_and_when_loaded(tmp_path):
    export_variant(tiny_checkpoint(), tmp_path, parity_rows(4), "int8")
    loaded = tmp_path / "as_loaded.onnx"
    onnx_session(tmp_path / "model.onnx", 1, SPIN_NEVER, optimized_copy=loaded)

    for path in (tmp_path / "model.onnx", loaded):
        operators = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
        assert operators["SkipLayerNormalization"] == 0, path.name
        assert operators["LayerNormalization"] == 4, path.name  # two per encoder layer
        assert operators["QAttention"] == 2, path.name  # attention is still fused


def test_a_copy_of_the_loaded_graph_in_a_missing_folder_is_refused_naming_it(tmp_path):
    _, version_dir = tiny_model_version()
    with pytest.raises(FileNotFoundError, match="existing folder, got .*absent/graph.onnx"):
        onnx_session(version_dir / "model.onnx", 1, SPIN_NEVER, tmp_path / "absent" / "graph.onnx")


def test_quantising_onto_the_source_file_is_refused(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="another file than the source"):
        quantize_model(path, path)


def test_a_missing_source_model_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ONNX model at .*absent.onnx"):
        quantize_model(tmp_path / "absent.onnx", tmp_path / "out.onnx")


def test_unknown_operator_is_refused_with_the_allowed_ones():
    with pytest.raises(
        ValueError, match=r"subset of \('MatMul', 'Attention', 'Gemm'\), got \['Conv'\]"
    ):
        QuantizeConfig(operators=("Conv",))
