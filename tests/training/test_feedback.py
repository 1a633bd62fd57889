"""Feedback entries, the ledger, and the trust policy that keeps reports from poisoning data."""

from __future__ import annotations

import base64
import json

import pytest

from serving.cli import main
from tests.synthetic_mail import make_message
from training.feedback import (
    FeedbackError,
    FeedbackPolicy,
    SourceTrust,
    append_entries,
    parse_entry,
    read_ledger,
    resolve_feedback,
)

SAFE, ATTACK = 0, 2


def _entry(message_id="m1", label="attack", source="user_report", time="2026-12-01T10:00:00Z"):
    return parse_entry(
        {"message_id": message_id, "label": label, "source": source, "time": time}, "test"
    )


def test_an_entry_needs_exactly_one_of_id_and_raw_message():
    with pytest.raises(FeedbackError, match="exactly one of message_id and raw_base64"):
        parse_entry({"label": "safe", "source": "analyst", "time": "2026-12-01T10:00:00Z"}, "x")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": "phish"}, r"label must be one of \('safe', 'spam', 'attack'\), got 'phish'"),
        ({"category": "malware", "label": "safe"}, "a category needs label 'attack'"),
        ({"time": "2026-12-01 10:00"}, "time must carry a zone"),
        ({"colour": "red"}, r"unknown fields \['colour'\]"),
    ],
)
def test_invalid_entries_name_the_rule_and_where(change, message):
    values = {
        "message_id": "m1",
        "label": "attack",
        "source": "analyst",
        "time": "2026-12-01T10:00Z",
    }
    with pytest.raises(FeedbackError, match=f"ledger line 3: {message}"):
        parse_entry(values | change, "ledger line 3")


def test_a_ledger_keeps_its_good_lines_and_reports_the_bad_ones(tmp_path):
    ledger = tmp_path / "feedback.jsonl"
    ledger.write_text(
        _entry().to_json() + "\nnot json\n" + json.dumps({"message_id": "m2", "label": "x"}) + "\n"
    )
    entries, errors = read_ledger(ledger)
    assert [e.message_id for e in entries] == ["m1"]
    assert [e.split(":")[0] for e in errors] == ["feedback.jsonl line 2", "feedback.jsonl line 3"]


def test_appending_an_entry_twice_adds_it_once(tmp_path):
    ledger = tmp_path / "feedback.jsonl"
    assert append_entries(ledger, [_entry(), _entry()]) == 1
    assert append_entries(ledger, [_entry()]) == 0


def test_one_source_changes_at_most_its_share_of_labels_and_the_rest_waits_for_review():
    labels = {f"m{i}": SAFE for i in range(1000)}
    policy = FeedbackPolicy({"user_report": SourceTrust(0.3, max_relabel_share=0.003)})
    flood = [_entry(f"m{i}", time=f"2026-12-01T10:00:{i:02d}Z") for i in range(10)]

    resolution = resolve_feedback(flood, labels, [], policy)

    assert sorted(resolution.relabels) == ["m0", "m1", "m2"]  # 0.3% of 1000, earliest first
    held = [o for o in resolution.outcomes if o["outcome"] == "held_for_review"]
    assert len(held) == 7
    assert held[0]["reason"] == "user_report reached its limit of 3 label changes without review"


def test_a_reviewed_entry_is_applied_past_the_limit():
    labels = {"m1": SAFE}
    policy = FeedbackPolicy({"user_report": SourceTrust(0.3, max_relabel_share=0.0)})
    reviewed = parse_entry(
        {"message_id": "m1", "label": "attack", "source": "user_report",
         "time": "2026-12-01T10:00:00Z", "reviewed_by": "lead"},
        "test",
    )  # fmt: skip
    assert resolve_feedback([reviewed], labels, [], policy).relabels == {"m1": ATTACK}


def test_the_more_trusted_source_wins_a_conflict():
    labels = {"m1": SAFE}
    policy = FeedbackPolicy(
        {"analyst": SourceTrust(1.0, 1.0), "user_report": SourceTrust(0.3, 1.0)}
    )
    later_report = _entry("m1", "attack", "user_report", "2026-12-02T10:00:00Z")
    analyst = _entry("m1", "spam", "analyst", "2026-12-01T10:00:00Z")

    resolution = resolve_feedback([later_report, analyst], labels, [], policy)

    assert resolution.relabels == {"m1": 1}
    assert {o["source"]: o["outcome"] for o in resolution.outcomes} == {
        "analyst": "applied",
        "user_report": "superseded",
    }


def test_golden_messages_unknown_ids_and_unknown_sources_are_refused():
    labels = {"m1": SAFE, "g1": ATTACK}
    entries = [_entry("g1", "safe"), _entry("nope"), _entry("m1", source="stranger")]

    outcomes = resolve_feedback(entries, labels, ["g1"], FeedbackPolicy()).outcomes

    reasons = [o["reason"] for o in outcomes]
    assert all(o["outcome"] == "rejected" for o in outcomes)
    assert "frozen golden set" in reasons[0] and "no message with id 'nope'" in reasons[1]
    assert reasons[2].startswith("source 'stranger' has no trust level")


def test_feedback_add_command_stores_a_raw_message_in_the_ledger(tmp_path):
    raw = tmp_path / "reported.eml"
    raw.write_bytes(make_message("Verify your mailbox", "Log in now or lose access."))
    ledger = tmp_path / "feedback.jsonl"

    status = main(
        ["feedback", "add", "--ledger", str(ledger), "--raw", str(raw), "--label", "attack",
         "--category", "credential_phishing", "--source", "user_report"]
    )  # fmt: skip

    assert status == 0
    (entry,) = read_ledger(ledger)[0]
    assert base64.b64decode(entry.raw_base64) == raw.read_bytes()
    assert entry.target.startswith("feedback:")
