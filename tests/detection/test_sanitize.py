"""sanitize: receiver-side marks out, the sender's message kept."""

from __future__ import annotations

import base64

import pytest

from detection.parsing import parse_message
from detection.sanitize import RECIPIENT_PLACEHOLDER, sanitize

FOOTER = (
    "_______________________________________________\n"
    "Team-talk mailing list\n"
    "team-talk@lists.example.com\n"
    "http://lists.example.com/mailman/listinfo/team-talk\n"
)


def _message(headers: str, body: str = "Hello,\n\nthe report is attached.\n") -> bytes:
    base = (
        "From: Alice Example <alice@example.com>\n"
        "To: Bob Example <bob@example.org>\n"
        "Subject: Quarterly report\n"
        "Date: Tue, 02 Jan 2024 09:30:00 +0000\n"
        "Message-ID: <abc123@example.com>\n"
    )
    return (base + headers + "\n" + body).encode()


def _header_names(data: bytes) -> set[str]:
    head = data.split(b"\n\n", 1)[0].decode()
    return {line.split(":", 1)[0].lower() for line in head.split("\n") if line[:1].strip()}


RECEIVER_HEADERS = {
    "Received": "from mx.example.net by mail.example.org; Tue, 2 Jan 2024 09:30:01 +0000",
    "Delivered-To": "bob@example.org",
    "X-Original-To": "bob@example.org",
    "Envelope-To": "bob@example.org",
    "Authentication-Results": "mx.example.org; spf=pass smtp.mailfrom=example.com",
    "ARC-Seal": "i=1; a=rsa-sha256; d=example.org; s=arc; b=abc",
    "Received-SPF": "pass (example.org: domain of example.com designates 192.0.2.1)",
    "X-MS-Exchange-Organization-SCL": "1",
    "X-Microsoft-Antispam": "BCL:0;",
    "X-Forefront-Antispam-Report": "CIP:192.0.2.1",
    "X-Spam-Status": "No, score=-2.0",
    "X-UID": "42",
    "Status": "RO",
    "X-Status": "",
    "X-Keywords": "",
    "X-Mozilla-Status": "0001",
    "X-Virus-Scanned": "clean",
    "X-Original-Sender": "alice@example.com",
    "X-Gm-Message-State": "abc",
    "X-Google-Smtp-Source": "abc",
    "X-Received": "by 2002:a05:6512; Tue, 02 Jan 2024",
    "X-Account-Key": "account1",
    "X-Evolution-Source": "local",
}


@pytest.mark.parametrize("name,value", sorted(RECEIVER_HEADERS.items()))
def test_receiver_header_is_removed(name, value):
    out = sanitize(_message(f"{name}: {value}\n"))

    assert name.lower() not in _header_names(out)
    assert {"from", "to", "subject", "date", "message-id"} <= _header_names(out)


def test_sender_side_headers_are_kept():
    headers = (
        "DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; b=abc\n"
        "Reply-To: Alice Example <alice@example.com>\n"
        "Return-Path: <alice@example.com>\n"
        "X-Mailer: Example Mail 1.0\n"
        "MIME-Version: 1.0\n"
    )

    names = _header_names(sanitize(_message(headers)))

    assert {"dkim-signature", "reply-to", "return-path", "x-mailer", "mime-version"} <= names


def test_folded_receiver_header_goes_with_its_continuation_lines():
    received = (
        "Received: from mx.example.net\n\tby mail.example.org\n\tfor <bob@example.org>; Tue\n"
    )

    out = sanitize(_message(received))

    assert b"mx.example.net" not in out
    assert b"\tby mail" not in out


def test_recipient_address_is_replaced_in_headers_body_and_urls():
    body = (
        "Hello bob@example.org,\n"
        "log in at http://login.example.net/?user=bob@example.org&x=1\n"
        "or http://login.example.net/?u=bob%40example.org\n"
    )

    out = sanitize(_message("", body))

    assert b"bob@example.org" not in out
    assert b"bob%40example.org" not in out
    assert out.count(RECIPIENT_PLACEHOLDER.encode()) == 3  # To, body, first URL
    assert b"recipient%40example.invalid" in out
    assert parse_message(out).recipients[0].address == RECIPIENT_PLACEHOLDER


def test_recipients_from_delivery_headers_and_received_for_are_replaced():
    headers = (
        "Delivered-To: carol@example.org\n"
        "Received: from mx.example.net by mail.example.org\n\tfor <dave@example.org>; Tue\n"
    )
    body = "Copies for carol@example.org and dave@example.org.\n"

    out = sanitize(_message(headers, body))

    assert b"carol@example.org" not in out
    assert b"dave@example.org" not in out


def test_longer_addresses_containing_a_recipient_are_left_alone():
    body = "Write to jim-bob@example.org or bob@example.org.uk, not bob@example.org.\n"

    out = sanitize(_message("", body))

    assert b"jim-bob@example.org " in out
    assert b"bob@example.org.uk" in out
    assert b"not recipient@example.invalid." in out


def test_recipient_local_part_after_salutation_is_replaced():
    out = sanitize(_message("", "Dear bob,\n\nyour mailbox is full.\n"))

    assert b"Dear recipient," in out


def test_verp_bounce_address_loses_the_recipient():
    out = sanitize(_message("Return-Path: <bounce-123-bob=example.org@mailer.example.net>\n"))

    assert b"bob=example.org" not in out
    assert b"bounce-123-recipient=example.invalid@mailer.example.net" in out


def test_corpus_placeholders_are_replaced_even_inside_words():
    out = sanitize(_message("", "Clientephishing@pot, see username@domain.com\n"))

    assert b"phishing@pot" not in out
    assert b"username@domain.com" not in out


def test_list_from_munging_is_undone():
    headers = (
        "Reply-To: Alice Example <alice@example.com>\nList-Id: <team-talk.lists.example.com>\n"
    )
    data = _message(headers).replace(
        b"From: Alice Example <alice@example.com>",
        b"From: Alice Example via Team-talk <team-talk@lists.example.com>",
    )

    parsed = parse_message(sanitize(data))

    assert parsed.from_.address == "alice@example.com"
    assert parsed.from_.display_name == "Alice Example"


def test_via_in_a_display_name_without_list_headers_is_kept():
    data = _message("Reply-To: <other@example.net>\n").replace(
        b"Alice Example <alice", b"Help via Phone <alice"
    )

    assert parse_message(sanitize(data)).from_.display_name == "Help via Phone"


def test_list_sender_and_return_path_are_removed_but_a_person_sender_stays():
    list_headers = (
        "List-Id: <team-talk.lists.example.com>\n"
        "Sender: Team-talk <team-talk-bounces@lists.example.com>\n"
        "Return-Path: <team-talk-bounces@lists.example.com>\n"
    )
    person = "Sender: Carol Example <carol@example.com>\n"

    assert not {"sender", "return-path", "list-id"} & _header_names(
        sanitize(_message(list_headers))
    )
    assert "sender" in _header_names(sanitize(_message(person)))


def test_list_footer_is_removed_from_plain_text():
    body = "See you on Monday.\n\n" + FOOTER

    out = sanitize(_message("List-Id: <team-talk.lists.example.com>\n", body))

    assert b"See you on Monday." in out
    assert b"mailing list" not in out
    assert b"listinfo" not in out
    assert b"_____" not in out


def test_list_footer_is_removed_from_quoted_printable_part():
    body = (
        "--b\nContent-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n\n"
        "Caf=C3=A9 at noon.\n\n" + FOOTER + "--b--\n"
    )
    headers = 'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n'

    out = sanitize(_message(headers, body))

    assert "Café at noon." in parse_message(out).visible_text
    assert b"mailing list" not in out


def test_footer_and_recipient_are_removed_inside_base64_text_part():
    text = "Hi bob@example.org, notes below.\n\n" + FOOTER
    encoded = base64.encodebytes(text.encode()).decode()
    headers = "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
    headers += "Content-Transfer-Encoding: base64\n"

    parsed = parse_message(sanitize(_message(headers, encoded)))

    assert "notes below" in parsed.visible_text
    assert "bob@example.org" not in parsed.visible_text
    assert "mailing list" not in parsed.visible_text


def test_recipient_cut_by_a_quoted_printable_soft_break_is_replaced():
    headers = "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
    headers += "Content-Transfer-Encoding: quoted-printable\n"
    body = "Dear member (bob@exa=\nmple.org), your account =3D locked.\n"

    parsed = parse_message(sanitize(_message(headers, body)))

    assert "bob@example.org" not in parsed.visible_text
    assert "(recipient@example.invalid), your account = locked." in parsed.visible_text


def test_underscore_line_without_list_words_is_kept():
    body = "Sign here:\n____________________\nName and date\n"

    assert b"____________________\nName and date" in sanitize(_message("", body))


def test_crlf_message_keeps_its_line_endings():
    data = _message("Received: from mx.example.net\nX-UID: 7\n").replace(b"\n", b"\r\n")

    out = sanitize(data)

    assert b"Received" not in out
    assert b"\n" not in out.replace(b"\r\n", b"")
    assert parse_message(out).subject == "Quarterly report"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff\xfe",
        b"no headers at all",
        b"From: \n\n",
        b"To: <<<@@@>>>\n\nbody",
        b"\n\n\n",
    ],
)
def test_garbage_never_raises(data):
    assert isinstance(sanitize(data), bytes)


def test_a_failure_inside_returns_the_input_unchanged(monkeypatch):
    import detection.sanitize as module

    def broken(_data):
        raise RuntimeError("boom")

    monkeypatch.setattr(module, "_sanitize", broken)
    data = _message("Received: from mx.example.net\n")

    assert sanitize(data) is data


def test_sanitize_is_idempotent():
    data = _message("Received: from x\nList-Id: <t.lists.example.com>\n", "Hi bob,\n\n" + FOOTER)

    once = sanitize(data)

    assert sanitize(once) == once
