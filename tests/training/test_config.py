import pytest

from training.config import PRESETS, DistillConfig, TrainConfig, resolve_precision


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


def _cpu_with(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(False, False, "no"), (True, False, "bf16"), (False, True, "bf16")],
    ids=["avx2 only", "avx512 bf16", "amx"],
)
def test_auto_precision_trains_in_bf16_only_where_the_cpu_computes_it(
    monkeypatch, avx512_bf16, amx, expected
):
    _cpu_with(monkeypatch, avx512_bf16, amx)

    assert resolve_precision("auto") == expected


def test_an_explicit_precision_is_kept_whatever_the_cpu(monkeypatch):
    _cpu_with(monkeypatch, avx512_bf16=False, amx=False)

    assert resolve_precision("bf16") == "bf16"
    assert resolve_precision("no") == "no"


@pytest.mark.parametrize("config", [TrainConfig, DistillConfig])
def test_precision_defaults_to_auto_and_rejects_unknown_names(config):
    assert config().mixed_precision == "auto"
    with pytest.raises(ValueError, match=r"mixed_precision must be one of .*got 'fp8'"):
        config(mixed_precision="fp8")
