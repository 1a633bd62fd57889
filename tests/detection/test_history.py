import os
from datetime import datetime, timedelta, timezone

import pytest

from detection.history import SenderHistory, observe
from detection.parsing import parse_message
from detection.signals import raw_signals
from tests.synthetic_mail import make_message

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)


def _parsed(sender="Alice Example <alice@example.com>"):
    return parse_message(make_message("Hi", "body", sender=sender))


def test_facts_count_only_mail_strictly_before_the_message_time():
    history = SenderHistory()
    message = _parsed()
    history.record("org", message, T0)
    assert history.facts_before("org", message, T0).messages_before == 0
    later = history.facts_before("org", message, T0 + timedelta(seconds=1))
    assert later.messages_before == 1
    assert later.first_seen == T0


def test_days_known_is_measured_from_first_seen_to_the_message():
    history = SenderHistory()
    message = _parsed()
    history.record("org", message, T0)
    facts = history.facts_before("org", message, T0 + timedelta(days=10))
    assert facts.days_known == 10


def test_history_of_one_organisation_is_invisible_to_another():
    history = SenderHistory()
    message = _parsed()
    history.record("org-a", message, T0)
    assert history.facts_before("org-b", message, T0 + timedelta(days=1)).messages_before == 0


def test_domain_is_known_from_a_colleague_of_the_sender():
    history = SenderHistory()
    history.record("org", _parsed("Carol <carol@example.com>"), T0)
    facts = history.facts_before("org", _parsed(), T0 + timedelta(days=1))
    assert facts.messages_before == 0
    assert facts.domain_messages_before == 1


def test_identities_are_stored_as_hashes_not_addresses(tmp_path):
    path = tmp_path / "history.sqlite"
    history = SenderHistory(str(path))
    history.record("org", _parsed(), T0)
    history.close()
    assert b"alice@example.com" not in path.read_bytes()


# the baseline store behind SenderHistory: time, safety, privacy, transactions

ATTACKER = "Payroll Desk <payroll@example.net>"


def test_mail_recorded_after_the_message_time_is_invisible():
    history = SenderHistory()
    message = _parsed()
    history.record("org", message, T0 + timedelta(days=1))
    assert history.facts_before("org", message, T0).messages_before == 0
    assert history.facts_before("org", message, T0 + timedelta(days=1)).messages_before == 0


def test_flagged_mail_never_makes_the_attacker_known():
    history = SenderHistory()
    for day in range(5):
        attack = _parsed(ATTACKER)
        when = T0 + timedelta(days=day)
        facts = history.facts_before("org", attack, when)
        assert facts.messages_before == 0 and facts.domain_messages_before == 0
        assert not observe(history, "org", attack, when, verdict="attack")
    facts = history.facts_before("org", _parsed(ATTACKER), T0 + timedelta(days=9))
    signals = raw_signals(_parsed(ATTACKER), facts)
    assert signals["first_time_sender"] == 1
    assert signals["sender_message_count"] == 0
    assert signals["recipient_safe_messages"] == 0


def test_safe_verdict_is_recorded_by_observe():
    history = SenderHistory()
    assert observe(history, "org", _parsed(), T0, verdict="safe")
    assert history.facts_before("org", _parsed(), T0 + timedelta(hours=1)).messages_before == 1


def test_reply_to_the_organisations_own_message_is_recognised():
    history = SenderHistory()
    sent = parse_message(
        make_message("Quote", "Please send a quote.", sender="Bob Example <bob@example.org>")
    )
    history.record_outbound("org", sent, T0)
    reply = parse_message(
        make_message(
            "Re: Quote", "Attached.", when=T0 + timedelta(days=1),
            extra_headers=f"In-Reply-To: {sent.message_id}\r\n",
        )
    )  # fmt: skip
    facts = history.facts_before("org", reply, T0 + timedelta(days=1))
    assert raw_signals(reply, facts)["reply_to_org_thread"] == 1
    assert raw_signals(reply, facts)["reply_to_unknown_thread"] == 0
    before = history.facts_before("org", reply, T0)
    assert raw_signals(reply, before)["reply_to_org_thread"] == 0


def test_no_identity_is_stored_in_clear(tmp_path):
    path = tmp_path / "history.sqlite"
    history = SenderHistory(str(path))
    inbound = parse_message(
        make_message("Hi", "body", extra_headers="Cc: Dee Example <dee@example.net>\r\n")
    )
    outbound = parse_message(make_message("Re", "ok", sender="Bob Example <bob@example.org>"))
    history.record("org-secret", inbound, T0)
    history.record_outbound("org-secret", outbound, T0 + timedelta(hours=1))
    history.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir()).lower()
    for clear in (
        b"alice@example.com",
        b"dee@example.net",
        b"bob@example.org",
        b"example.com",
        b"example.net",
        b"alice example",
        b"org-secret",
        inbound.message_id[1:-1].encode(),
    ):
        assert clear not in stored, clear


def test_store_written_with_another_key_is_rejected(tmp_path):
    path = str(tmp_path / "history.sqlite")
    SenderHistory(path, key=b"one-key-of-sixteen-bytes").close()
    with pytest.raises(ValueError, match="written with another key"):
        SenderHistory(path, key=b"another-key-of-sixteen")


def test_key_shorter_than_sixteen_bytes_is_rejected():
    with pytest.raises(ValueError, match="baseline key must be 16 to 64 bytes, got 5"):
        SenderHistory(key=b"short")


def test_without_autocommit_records_are_visible_to_others_only_after_commit(tmp_path):
    path = str(tmp_path / "history.sqlite")
    writer = SenderHistory(path, autocommit=False)
    reader = SenderHistory(path)
    writer.record("org", _parsed(), T0)
    later = T0 + timedelta(days=1)
    assert writer.facts_before("org", _parsed(), later).messages_before == 1
    assert reader.facts_before("org", _parsed(), later).messages_before == 0
    writer.commit()
    assert reader.facts_before("org", _parsed(), later).messages_before == 1
    writer.close()
    reader.close()


# recipients through the sanitized path, and the hashing key


def _to_bob(sender: str, when: datetime) -> bytes:
    return make_message("Status", f"Update sent {when:%d %B}.", sender=sender, when=when)


def test_sanitized_recipients_reach_the_history_but_not_the_model_text():
    from detection.features import extract_features, parse_with_recipients

    history = SenderHistory()
    for day, sender in enumerate(("Carol <carol@example.com>", "Dan <dan@example.net>")):
        when = T0 + timedelta(days=day)
        parsed, recipients = parse_with_recipients(_to_bob(sender, when))
        assert recipients == ("bob@example.org",)
        history.record("org", parsed, when, recipients)

    data = _to_bob("Carol <carol@example.com>", T0 + timedelta(days=5))
    found = extract_features(data, "rfc822", "org", history)
    assert "bob@example.org" not in found.text
    assert found.raw["recipient_safe_messages"] == 2
    assert found.raw["recipient_distinct_senders"] == 2
    assert found.raw["first_time_sender_to_recipient"] == 0  # carol wrote to bob before
    assert found.facts.recipients_with_sender_history == 1


def test_recipient_signals_stay_zero_when_only_placeholders_are_given():
    from detection.features import parse_for_model

    history = SenderHistory()
    parsed = parse_for_model(_to_bob("Carol <carol@example.com>", T0))
    history.record("org", parsed, T0)  # no recipients=: the parsed To is a placeholder
    facts = history.facts_before("org", parsed, T0 + timedelta(days=1))
    assert facts.recipient_count == 0 and facts.recipient_safe_messages == 0


def test_store_without_a_key_hashes_with_the_key_file_the_environment_names(tmp_path, monkeypatch):
    key_file = tmp_path / "tenant.key"
    key_file.write_bytes(b"a-deployment-key-of-32-bytes-xyz\n")
    monkeypatch.setenv("BULWARK_HISTORY_KEY_FILE", str(key_file))
    path = str(tmp_path / "history.sqlite")
    history = SenderHistory(path)
    assert not history.default_key
    history.close()
    SenderHistory(path, key=b"a-deployment-key-of-32-bytes-xyz").close()  # same key: opens
    monkeypatch.delenv("BULWARK_HISTORY_KEY_FILE")
    with pytest.raises(ValueError, match="written with another key"):
        SenderHistory(path)  # the default key cannot read it


def test_key_file_of_the_wrong_size_is_rejected_naming_the_file(tmp_path, monkeypatch):
    key_file = tmp_path / "short.key"
    key_file.write_bytes(b"tiny")
    monkeypatch.setenv("BULWARK_HISTORY_KEY_FILE", str(key_file))
    with pytest.raises(ValueError, match=r"short\.key' must hold a key of 16 to 64 bytes, got 4"):
        SenderHistory()


def test_score_option_history_key_file_sets_the_key_for_the_run(tmp_path, monkeypatch):
    from serving.cli import build_parser

    monkeypatch.delenv("BULWARK_HISTORY_KEY_FILE", raising=False)
    key_file = tmp_path / "tenant.key"
    key_file.write_bytes(b"0123456789abcdef0123456789abcdef")
    build_parser().parse_args(["score", "-", "--history-key-file", str(key_file)])
    assert os.environ["BULWARK_HISTORY_KEY_FILE"] == str(key_file)
    assert not SenderHistory().default_key


def test_score_option_history_key_file_refuses_a_missing_file(tmp_path, capsys):
    from serving.cli import build_parser

    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["score", "-", "--history-key-file", str(tmp_path / "none")])
    assert stopped.value.code == 2
    assert "cannot be read" in capsys.readouterr().err
