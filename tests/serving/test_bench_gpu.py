"""scripts/bench_gpu.py: batches from prepared rows, the provider it reports, its
arguments, and one `measure` on the CPU with a hand-built ONNX model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.fresh_interpreter import run_isolated
from tests.script_modules import load_script

SIGNAL_COUNT = 3


bench_gpu = load_script("bench_gpu")

TENSORS = {
    "input_ids": "INPUT_IDS",
    "attention_mask": "ATTENTION_MASK",
    "signals": "SIGNALS",
    "probabilities": "PROBABILITIES",
}


def _inputs(lengths=(3, 1, 5, 2)):
    rows = [[100 * (i + 1) + t for t in range(1, n + 1)] for i, n in enumerate(lengths)]
    signals = [[float(i)] * SIGNAL_COUNT for i in range(len(lengths))]
    return bench_gpu.PreparedInputs.from_rows(rows, signals, {"tensors": TENSORS})


def test_a_batch_pads_each_row_to_the_longest_and_masks_only_its_tokens():
    inputs = _inputs()
    batch = bench_gpu.pad_batch(inputs, [1, 2, 0])

    assert batch.input_ids.shape == (3, 5) and batch.input_ids.dtype == np.int64
    np.testing.assert_array_equal(batch.input_ids[0], [201, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.input_ids[1], [301, 302, 303, 304, 305])
    np.testing.assert_array_equal(batch.input_ids[2], [101, 102, 103, 0, 0])
    np.testing.assert_array_equal(batch.attention_mask.sum(axis=1), [1, 5, 3])
    assert batch.attention_mask.dtype == np.int64
    assert batch.padding == pytest.approx(6 / 15)


def test_signal_rows_stay_with_their_token_rows():
    inputs = _inputs()
    order = bench_gpu.row_order(inputs.lengths, "shuffled", seed=3)
    for batch in bench_gpu.build_batches(inputs, 3, order):
        assert batch.signals.dtype == np.float32
        np.testing.assert_array_equal(batch.signals[:, 0], batch.rows)
        np.testing.assert_array_equal(
            batch.input_ids[:, 0], [100 * (r + 1) + 1 for r in batch.rows]
        )


def test_batches_cover_every_row_and_wrap_around_when_larger_than_the_rows():
    inputs = _inputs()
    order = np.arange(4)

    pairs = bench_gpu.build_batches(inputs, 2, order)
    assert [b.rows for b in pairs] == [(0, 1), (2, 3)]
    assert [b.input_ids.shape[1] for b in pairs] == [3, 5]  # each padded to its own longest

    (large,) = bench_gpu.build_batches(inputs, 6, order)
    assert large.rows == (0, 1, 2, 3, 0, 1)


def test_sorted_order_puts_rows_of_similar_length_together():
    inputs = _inputs()
    order = bench_gpu.row_order(inputs.lengths, "sorted")
    assert [b.rows for b in bench_gpu.build_batches(inputs, 2, order)] == [(1, 3), (0, 2)]


def test_prepared_inputs_survive_the_file_and_reject_a_bad_one(tmp_path):
    inputs = _inputs()
    inputs.save(tmp_path / "inputs.npz")
    loaded = bench_gpu.PreparedInputs.load(tmp_path / "inputs.npz")
    np.testing.assert_array_equal(loaded.row(2), inputs.row(2))
    assert loaded.meta == inputs.meta

    with pytest.raises(ValueError, match="hold no rows"):
        bench_gpu.PreparedInputs(
            np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros((0, 3), np.float32)
        )
    with pytest.raises(ValueError, match="got 4 token rows but signal rows of shape"):
        bench_gpu.PreparedInputs(inputs.ids, inputs.offsets, inputs.signals[:3])
    with pytest.raises(FileNotFoundError, match="run `prepare` first"):
        bench_gpu.PreparedInputs.load(tmp_path / "missing.npz")


def test_without_a_cuda_provider_the_cpu_is_chosen_and_said_to_be():
    choice = bench_gpu.choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"])
    assert choice.providers == ("CPUExecutionProvider",)
    assert "no CUDA provider" in choice.note and "CPU figures" in choice.note

    with pytest.raises(ValueError, match="install onnxruntime-gpu"):
        bench_gpu.choose_providers(["CPUExecutionProvider"], "cuda")

    cuda = bench_gpu.choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert cuda.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


class _Session:
    def __init__(self, providers):
        self.providers = providers

    def get_providers(self):
        return self.providers


def _node(name, op, provider):
    return {
        "cat": "Node",
        "name": f"{name}_kernel_time",
        "args": {"op_name": op, "provider": provider},
    }


def test_cuda_asked_for_but_not_run_is_reported_as_cpu():
    choice = bench_gpu.choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"])
    profile = [_node("attention", "Attention", "CPUExecutionProvider")]
    ran, notes = bench_gpu.ran_on(_Session(["CPUExecutionProvider"]), choice, profile)
    assert ran == "CPUExecutionProvider"
    assert any("did not run the model" in n for n in notes)


def test_nodes_left_on_the_cpu_beside_cuda_are_named():
    choice = bench_gpu.choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"])
    profile = [
        _node("attention", "Attention", "CUDAExecutionProvider"),
        _node("attention", "Attention", "CUDAExecutionProvider"),  # a second call
        _node("quantize", "DynamicQuantizeLinear", "CPUExecutionProvider"),
        {"cat": "Session", "name": "session_initialization", "args": {}},
    ]
    placement = bench_gpu.node_placement(profile)
    assert placement == {
        "CPUExecutionProvider": {"DynamicQuantizeLinear": 1},
        "CUDAExecutionProvider": {"Attention": 1},
    }
    session = _Session(["CUDAExecutionProvider", "CPUExecutionProvider"])
    ran, notes = bench_gpu.ran_on(session, choice, profile)
    assert ran == "CUDAExecutionProvider"
    assert any("DynamicQuantizeLinear x1" in n for n in notes)


@pytest.mark.parametrize("value", ["0", "-4", "two"])
def test_a_bad_batch_size_argument_is_rejected_naming_it(value, capsys):
    with pytest.raises(SystemExit):
        bench_gpu.main(["measure", "--batch-sizes", "1", value])
    assert f"batch sizes must be positive integers, got '{value}'" in capsys.readouterr().err


def test_settings_reject_a_batch_size_that_is_not_positive():
    with pytest.raises(ValueError, match="got -2"):
        bench_gpu.MeasureSettings(batch_sizes=(4, -2))
    with pytest.raises(ValueError, match="at least one, got none"):
        bench_gpu.MeasureSettings(batch_sizes=())


def _write_tiny_onnx(path: Path) -> None:
    """PROBABILITIES = softmax(SIGNALS @ W + 0 * tokens), with the fusion model's inputs."""
    from onnx import TensorProto, helper, numpy_helper, save

    weights = numpy_helper.from_array(
        np.arange(SIGNAL_COUNT * 3, dtype=np.float32).reshape(SIGNAL_COUNT, 3) / 10, "W"
    )
    zero = numpy_helper.from_array(np.zeros((1, 1), np.float32), "ZERO")
    nodes = [
        helper.make_node("Cast", ["ATTENTION_MASK"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["mask"], ["tokens"], keepdims=1),
        helper.make_node("Mul", ["tokens", "ZERO"], ["nothing"]),
        helper.make_node("MatMul", ["SIGNALS", "W"], ["logits"]),
        helper.make_node("Add", ["logits", "nothing"], ["shifted"]),
        helper.make_node("Softmax", ["shifted"], ["PROBABILITIES"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("INPUT_IDS", TensorProto.INT64, ["B", "T"]),
            helper.make_tensor_value_info("ATTENTION_MASK", TensorProto.INT64, ["B", "T"]),
            helper.make_tensor_value_info("SIGNALS", TensorProto.FLOAT, ["B", SIGNAL_COUNT]),
        ],
        [helper.make_tensor_value_info("PROBABILITIES", TensorProto.FLOAT, ["B", 3])],
        [weights, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(path))


def _measure_on_one_cpu_thread(inputs_dir: Path, batch_sizes: list[str], runs: int) -> dict:
    """`measure` on the prepared folder, CPU provider, one thread: its JSON figures."""
    status = bench_gpu.main(
        [
            "measure",
            "--inputs", str(inputs_dir),
            "--batch-sizes", *batch_sizes,
            "--runs", str(runs),
            "--warmup", "1",
            "--provider", "cpu",
            "--threads", "1",
            "--output", str(inputs_dir / "figures.json"),
        ]
    )  # fmt: skip
    assert status == 0
    return json.loads((inputs_dir / "figures.json").read_text())


def test_measure_runs_on_the_cpu_and_writes_its_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        bench_gpu, "torch_gpu", lambda: {"torch": None, "cuda": False, "device": None}
    )
    _inputs(lengths=(3, 1, 5, 2, 4, 4)).save(tmp_path / "inputs.npz")
    _write_tiny_onnx(tmp_path / "model.onnx")

    figures = _measure_on_one_cpu_thread(tmp_path, ["4", "1", "2"], runs=5)

    assert figures["provider"] == "CPUExecutionProvider"
    assert [r["batch_size"] for r in figures["rows"]] == [1, 2, 4]
    assert all(r["runs"] == 5 and r["messages_per_s"] > 0 for r in figures["rows"])
    assert "CPUExecutionProvider" in figures["node_placement"]
    assert "| batch | calls | p50 ms |" in capsys.readouterr().out


def test_measure_names_a_missing_model(tmp_path, caplog):
    _inputs().save(tmp_path / "inputs.npz")
    assert bench_gpu.main(["measure", "--inputs", str(tmp_path)]) == 2
    assert f"{tmp_path / 'model.onnx'} not found" in caplog.text


def test_on_the_cpu_layer_norms_stay_apart_from_their_additions_as_served(tmp_path, monkeypatch):
    from detection.signals import SIGNAL_NAMES
    from tests.model_fixtures import tiny_model_version

    monkeypatch.setattr(
        bench_gpu, "torch_gpu", lambda: {"torch": None, "cuda": False, "device": None}
    )
    _, version_dir = tiny_model_version()
    (tmp_path / "model.onnx").write_bytes((version_dir / "model.onnx").read_bytes())
    rows = [[101, 7 + i, 102] for i in range(4)]
    signals = [[0.0] * len(SIGNAL_NAMES) for _ in rows]
    bench_gpu.PreparedInputs.from_rows(rows, signals, {"tensors": TENSORS}).save(
        tmp_path / "inputs.npz"
    )

    ran = _measure_on_one_cpu_thread(tmp_path, ["2"], runs=2)["node_placement"]
    assert ran["CPUExecutionProvider"].get("SkipLayerNormalization", 0) == 0
    assert ran["CPUExecutionProvider"]["LayerNormalization"] == 4  # two per encoder layer


def test_beside_cuda_no_fusion_is_left_out():
    cuda = bench_gpu.ProviderChoice((bench_gpu.CUDA, bench_gpu.CPU), "offered")
    cpu = bench_gpu.ProviderChoice((bench_gpu.CPU,), "asked for")
    assert bench_gpu.disabled_optimizers(cuda) == []
    assert bench_gpu.disabled_optimizers(cpu) == ["SkipLayerNormFusion"]


def test_the_fusions_left_out_import_with_the_standard_library_alone():
    # the device machine has numpy and onnxruntime, not this project's environment
    done = run_isolated(
        "from serving.cpu_fusions import UNFUSED_ON_CPU; print(','.join(UNFUSED_ON_CPU))",
        stdlib_only=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SkipLayerNormFusion"
