from datetime import datetime, timedelta, timezone

from detection.history import SenderHistory
from detection.parsing import parse_message
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
