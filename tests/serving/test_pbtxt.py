"""The served model's config.pbtxt: rendered from detection/tensors.py, parseable, committed."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from detection import tensors
from serving.pbtxt import ServingSettings, onnx_options, render_config, write_config
from tests.fresh_interpreter import run_isolated

COMMITTED = Path(__file__).resolve().parents[2] / "model_repository" / "bulwark" / "config.pbtxt"
TYPES = model_config_pb2.DataType


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_committed_config_is_what_the_renderer_writes():
    assert COMMITTED.read_text() == render_config(), (
        "model_repository/bulwark/config.pbtxt is stale; regenerate it with "
        "`.venv/bin/python -m serving.pbtxt --repository model_repository`"
    )


def test_rendering_the_config_does_not_load_onnx_runtime():
    done = run_isolated("import serving.pbtxt; print('onnxruntime' in sys.modules)")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False", "importing serving.pbtxt loaded onnxruntime"


def test_rendered_config_declares_every_served_tensor_as_tensors_py_does():
    config = parse(render_config())
    declared = {t.name: t for t in list(config.input) + list(config.output)}
    specs = tensors.SERVED_INPUTS + tensors.OPTIONAL_SERVED_INPUTS + tensors.SERVED_OUTPUTS

    assert [t.name for t in config.input] == [
        s.name for s in tensors.SERVED_INPUTS + tensors.OPTIONAL_SERVED_INPUTS
    ]
    assert [t.name for t in config.output] == [s.name for s in tensors.SERVED_OUTPUTS]
    for spec in specs:
        assert TYPES.Name(declared[spec.name].data_type) == spec.triton_dtype
        assert tuple(declared[spec.name].dims) == spec.dims
    assert declared[tensors.MESSAGE_KIND.name].optional
    assert not declared[tensors.RAW_MESSAGE.name].optional


def test_rendered_config_batches_dynamically_and_rejects_on_queue_timeout():
    settings = ServingSettings(max_batch_size=32, preferred_batch_sizes=(4, 32), instance_count=2)
    config = parse(render_config(settings))
    policy = config.dynamic_batching.default_queue_policy

    assert (config.name, config.backend, config.max_batch_size) == ("bulwark", "python", 32)
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == settings.max_queue_delay_us
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert policy.default_timeout_microseconds == settings.queue_timeout_us
    assert policy.max_queue_size == settings.max_queue_size
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_CPU, 2)
    ]


def test_write_config_puts_it_under_the_model_name(tmp_path):
    path = write_config(tmp_path / "repo")

    assert path == tmp_path / "repo" / "bulwark" / "config.pbtxt"
    assert path.read_text() == render_config()


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be at least 1, got 0"),
        ({"preferred_batch_sizes": (8, 128)}, r"lie in \[1, max_batch_size=64\], got \[8, 128\]"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us must be >= 0, got -1"),
        ({"onnx_spinning": "yes"}, "onnx_spinning must be one of .* got 'yes'"),
        ({"onnx_batch_threads": -1}, "onnx_batch_threads must be a whole number.* got -1"),
        ({"onnx_batch_threads": 1.5}, "onnx_batch_threads must be a whole number.* got 1.5"),
        ({"onnx_threads": "2"}, "onnx_threads must be a whole number.* got '2'"),
    ],
)
def test_settings_reject_values_out_of_range(values, match):
    with pytest.raises(ValueError, match=match):
        ServingSettings(**values)


def as_model_config(text: str) -> dict:
    """The config as Triton hands it to a Python model: its protobuf as JSON."""
    return json_format.MessageToDict(parse(text), preserving_proto_field_name=True)


def test_onnx_runtime_settings_reach_the_model_through_the_config():
    text = render_config(
        ServingSettings(onnx_threads=1, onnx_spinning="never", onnx_batch_threads=2)
    )
    assert onnx_options(as_model_config(text)) == {
        "threads": 1,
        "spinning": "never",
        "batch_threads": 2,
    }
    defaults = ServingSettings()
    assert onnx_options(as_model_config(render_config())) == {
        "threads": defaults.onnx_threads,
        "spinning": defaults.onnx_spinning,
        "batch_threads": defaults.onnx_batch_threads,
    }


def test_a_config_without_onnx_parameters_leaves_the_runtime_defaults():
    assert onnx_options({"name": "bulwark"}) == {}


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("ONNX_THREADS", "two", "whole number"),
        ("ONNX_BATCH_THREADS", "-1", "whole number"),
        ("ONNX_BATCH_THREADS", "\u00b2", "whole number"),
        ("ONNX_THREADS", "99999999999", "whole number"),
        ("ONNX_SPINNING", "maybe", "one of"),
    ],
)
def test_a_bad_onnx_parameter_is_refused_naming_it(key, value, rule):
    config = {"parameters": {key: {"string_value": value}}}
    with pytest.raises(ValueError, match=f"{key} must be .*{rule}.*{value}"):
        onnx_options(config)
