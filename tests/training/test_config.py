import pytest

from training.config import PRESETS, TrainConfig


def test_defaults_describe_the_cpu_run():
    config = TrainConfig()
    assert config.encoder == "minilm"
    assert PRESETS["cpu"] == config


def test_unknown_key_is_rejected_with_the_allowed_keys():
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['learning_rat'\]"):
        TrainConfig.from_dict({"learning_rat": 0.1})


def test_wrong_type_is_rejected_naming_the_field_and_value():
    with pytest.raises(ValueError, match=r"TrainConfig.batch_size must be int, got '16'"):
        TrainConfig.from_dict({"batch_size": "16"})


def test_bool_is_not_accepted_for_an_int_field():
    with pytest.raises(ValueError, match="TrainConfig.epochs must be int"):
        TrainConfig.from_dict({"epochs": True})


def test_optional_field_accepts_none():
    assert TrainConfig.from_dict({"max_steps": None}).max_steps is None


def test_head_tokens_must_leave_room_for_the_tail():
    with pytest.raises(ValueError, match="head_tokens must be in"):
        TrainConfig(max_length=64, head_tokens=63)


def test_model_signal_groups_leave_out_recipient_history_by_default():
    assert TrainConfig().model_signal_groups == ("message", "sender")


def test_model_signal_groups_read_from_a_json_list_and_reject_unknown_groups():
    config = TrainConfig.from_dict({"model_signal_groups": ["message"]})
    assert config.model_signal_groups == ("message",)
    with pytest.raises(ValueError, match="model_signal_groups must be among"):
        TrainConfig.from_dict({"model_signal_groups": ["message", "bcc"]})
