import time

import pytest

from detection.parsing import parse_message
from detection.signals import (
    GROUPS,
    REGISTRY,
    SIGNAL_NAMES,
    SenderFacts,
    Signal,
    raw_signals,
    signal_vector,
)
from tests.synthetic_mail import make_message


def test_every_signal_has_a_group_description_and_bounded_range():
    for signal in REGISTRY:
        assert signal.group in GROUPS
        assert signal.description
        assert signal.low < signal.high


def test_registry_has_at_least_twelve_message_signals_and_sender_signals():
    groups = [s.group for s in REGISTRY]
    assert groups.count("message") >= 12
    assert groups.count("sender") >= 3


def test_signal_vector_is_in_registry_order_and_within_unit_range():
    parsed = parse_message(make_message("Verify your account", "Log in at http://a.example.net"))
    vector = signal_vector(parsed, SenderFacts())
    assert len(vector) == len(SIGNAL_NAMES)
    assert all(0.0 <= v <= 1.0 for v in vector)


def test_normalise_clips_values_outside_the_range():
    signal = Signal("x", "message", "a test signal", 10, lambda m: 0)
    assert signal.normalise(-5) == 0.0
    assert signal.normalise(50) == 1.0
    assert signal.normalise(5) == pytest.approx(0.5)


def test_signal_with_unknown_group_is_rejected_with_the_allowed_groups():
    with pytest.raises(ValueError, match=r"group must be one of .*got 'tenant'"):
        Signal("x", "tenant", "bad", 1, lambda m: 0)


def test_link_whose_text_shows_another_domain_is_counted():
    html = '<p>Open <a href="http://login.example.net/x">www.bank.example.com</a></p>'
    parsed = parse_message(make_message("Notice", html, html=True))
    assert raw_signals(parsed, SenderFacts())["link_text_mismatch"] == 1


def test_reply_to_on_another_domain_fires_and_same_domain_does_not():
    other = make_message("Hi", "body", extra_headers="Reply-To: x@example.net\r\n")
    same = make_message("Hi", "body", extra_headers="Reply-To: alice2@example.com\r\n")
    assert raw_signals(parse_message(other), SenderFacts())["reply_to_differs"] == 1
    assert raw_signals(parse_message(same), SenderFacts())["reply_to_differs"] == 0


def test_credential_and_urgency_wording_are_counted():
    parsed = parse_message(make_message("Urgent", "Verify your account and password immediately"))
    raw = raw_signals(parsed, SenderFacts())
    assert raw["credential_wording"] >= 2
    assert raw["urgency_wording"] >= 2


def test_sender_signals_read_the_facts():
    parsed = parse_message(make_message("Hi", "body"))
    raw = raw_signals(parsed, SenderFacts(messages_before=3, domain_messages_before=5))
    assert raw["sender_seen_before"] == 1
    assert raw["sender_message_count"] == 3
    assert raw_signals(parsed, SenderFacts())["sender_seen_before"] == 0


def test_long_dotted_anchor_text_keeps_signals_fast():
    data = (
        b"From: a@example.com\nContent-Type: text/html\n\n<a href='http://x.example.com/'>"
        + b"a1." * 10_000
        + b"1</a>"
    )
    parsed = parse_message(data)
    started = time.perf_counter()
    raw = raw_signals(parsed, SenderFacts())

    assert time.perf_counter() - started < 0.5
    assert raw["link_text_mismatch"] == 0


def test_link_to_a_host_browsers_refuse_has_no_domain_to_count():
    html = '<a href="http://bank.example.com%40evil.example.net/">bank.example.com</a>'
    parsed = parse_message(make_message("Notice", html, html=True))
    raw = raw_signals(parsed, SenderFacts())

    assert raw["link_domain_count"] == 0
    assert raw["link_obfuscated_host"] == 1
