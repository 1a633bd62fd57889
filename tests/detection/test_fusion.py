import pytest
import torch

from detection.fusion import FusionModel, build_encoder, signal_mask
from detection.signals import REGISTRY, SIGNAL_NAMES


def _model(groups):
    torch.manual_seed(0)
    encoder = build_encoder("tiny-random", pretrained=False)
    return FusionModel(encoder, len(SIGNAL_NAMES), signal_mask=signal_mask(groups)).eval()


def _inputs(signals):
    ids = torch.tensor([[101, 2023, 2003, 102]])
    return ids, torch.ones_like(ids), torch.tensor([signals], dtype=torch.float32)


def test_signal_mask_keeps_only_the_named_groups():
    mask = signal_mask(("message", "sender"))
    assert [s.group for s, kept in zip(REGISTRY, mask, strict=True) if not kept] == [
        s.group for s in REGISTRY if s.group == "recipient"
    ]
    assert sum(mask) == sum(s.group != "recipient" for s in REGISTRY)


def test_signal_mask_rejects_an_unknown_group():
    with pytest.raises(ValueError, match="signal groups must be among"):
        signal_mask(("message", "envelope"))


def test_masked_recipient_signals_do_not_change_the_output():
    model = _model(("message", "sender"))
    quiet = [0.0] * len(SIGNAL_NAMES)
    loud = [1.0 if s.group == "recipient" else 0.0 for s in REGISTRY]
    with torch.no_grad():
        assert torch.equal(model(*_inputs(quiet)), model(*_inputs(loud)))


def test_unmasked_signals_change_the_output():
    model = _model(("message", "sender"))
    quiet = [0.0] * len(SIGNAL_NAMES)
    loud = [1.0 if s.group == "sender" else 0.0 for s in REGISTRY]
    with torch.no_grad():
        assert not torch.equal(model(*_inputs(quiet)), model(*_inputs(loud)))
