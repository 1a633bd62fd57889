"""sanitize: receiver-side marks out, the sender's message kept."""

from __future__ import annotations

import base64

import pytest

from detection.features import parse_for_model
from detection.parsing import parse_message
from detection.sanitize import RECIPIENT_PLACEHOLDER, sanitize, sanitize_message

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


def test_salutation_in_capitals_still_names_the_recipient():
    out = sanitize(_message("", "DEAR BOB,\n\nyour mailbox is full.\n"))

    assert b"DEAR recipient," in out
    assert b"BOB" not in out


def test_salutation_to_someone_who_is_not_a_recipient_is_kept():
    out = sanitize(_message("", "Dear Carol,\n\nyour mailbox is full.\n"))

    assert b"Dear Carol," in out


def test_verp_bounce_address_loses_the_recipient():
    out = sanitize(_message("Return-Path: <bounce-123-bob=example.org@mailer.example.net>\n"))

    assert b"bob=example.org" not in out
    assert b"bounce-123-recipient=example.invalid@mailer.example.net" in out


def test_corpus_placeholders_are_replaced_even_inside_words():
    out = sanitize(_message("", "Clientephishing@pot, see username@domain.com\n"))

    assert b"phishing@pot" not in out
    assert b"username@domain.com" not in out


def test_corpus_placeholders_are_replaced_in_any_case():
    out = sanitize(_message("", "Write to PHISHING@POT or UserName@Domain.COM today\n"))

    assert b"PHISHING@POT" not in out
    assert b"UserName@Domain.COM" not in out
    assert out.count(RECIPIENT_PLACEHOLDER.encode()) >= 3  # the To: header's, and these two


def test_corpus_placeholders_are_replaced_where_they_stand_and_nothing_else_moves():
    out = sanitize(_message("", "Ünïcode Phishing@Pot, then USERNAME@DOMAIN.COM.\n"))

    body = out.split(b"\n\n", 1)[1]
    assert (
        body
        == ("Ünïcode " + RECIPIENT_PLACEHOLDER + ", then " + RECIPIENT_PLACEHOLDER + ".\n").encode()
    )


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


# header injection and the end of the header block
@pytest.mark.parametrize("control", ["=0D", "=0A", "=00", "=0D=0A"])
def test_unmunged_from_cannot_add_a_header(control):
    data = (
        f'From: "=?utf-8?q?Alice{control}Subject=3A_pwned?= via List" <list@example.org>\n'
        "Reply-To: poster@example.net\nList-Id: <l.example.org>\nSubject: real\n\nhello\n"
    ).encode()

    out = sanitize(data)

    parsed = parse_message(out)
    assert [name.lower() for name, _ in parsed.raw_headers] == ["from", "reply-to", "subject"]
    assert parsed.subject == "real"
    assert parsed.from_.address == "poster@example.net"
    assert b"\r" not in out and b"\x00" not in out


def test_a_non_header_line_ends_the_header_block_as_the_parser_ends_it():
    data = (
        b"From: alice@example.net\nX-Spam-Status: No\nnot a header line\n"
        b"Subject: urgent wire transfer\nReply-To: x@example.org\n\nbody\n"
    )

    before, after = parse_message(data), parse_message(sanitize(data))

    assert [n for n, _ in after.raw_headers] == ["From"]
    assert (after.subject, after.reply_to) == (before.subject, before.reply_to) == ("", None)
    assert b"not a header line\nSubject: urgent wire transfer\n" in sanitize(data)


def test_a_footer_removed_from_a_glued_body_cannot_turn_body_lines_into_headers():
    data = b"From: alice@example.net\nX-UID: 1\n" + FOOTER.encode() + b"Subject: forged\n\nbody\n"

    parsed = parse_message(sanitize(data))

    assert [n for n, _ in parsed.raw_headers] == ["From"]
    assert parsed.subject == ""


def test_footer_directly_before_a_boundary_line_keeps_the_boundary():
    headers = 'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n'
    body = "--b\nContent-Type: text/plain\n\nSee you.\n" + FOOTER + "--b\n"
    body += "Content-Type: text/plain\n\nsecond part\n--b--\n"

    out = sanitize(_message(headers, body))

    assert out.count(b"\n--b\n") == 2 and b"\n--b--\n" in out
    assert b"mailing list" not in out
    assert "second part" in parse_message(out).visible_text


# failing closed
def _nested(depth: int, inner: bytes) -> bytes:
    for _ in range(depth):
        inner = b"Content-Type: message/rfc822\n\n" + inner
    return inner


def test_deeply_nested_message_still_loses_receiver_headers_and_recipients():
    inner = _nested(983, b"From: a@example.net\nSubject: x\n\nhi bob@example.org\n")
    data = (
        b"Received: from mx.example.net by mail.example.org for <bob@example.org>;\n"
        b"Delivered-To: bob@example.org\nTo: bob@example.org\nSubject: s\n"
        b"Content-Type: message/rfc822\n\n" + inner
    )

    out = sanitize(data)

    assert b"Received:" not in out and b"Delivered-To:" not in out
    assert b"bob@example.org" not in out


def test_a_failing_part_walk_still_strips_headers_and_replaces_recipients(monkeypatch):
    import detection.sanitize as module

    def broken(*_args):
        raise RecursionError("too deep")

    monkeypatch.setattr(module._PartRewriter, "body", broken)
    data = _message("Received: from mx.example.net\nX-Spam-Status: No\n", "Hi bob@example.org\n")

    out = sanitize(data)

    assert not {"received", "x-spam-status"} & _header_names(out)
    assert b"bob@example.org" not in out
    assert b"Hi recipient@example.invalid" in out


# recipients hidden by an encoding, and more recipient headers
def _mime(headers: str, body: bytes) -> bytes:
    return _message("MIME-Version: 1.0\n" + headers, "").rstrip(b"\n") + b"\n\n" + body


HIDDEN_RECIPIENT = {
    "quoted-printable =40": _mime(
        "Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n",
        b"write to bob=40example.org now\n",
    ),
    "HTML entity": _mime("Content-Type: text/html\n", b"<p>write to bob&#64;example.org</p>\n"),
    "base64 attached message": _mime(
        'Content-Type: multipart/mixed; boundary="b"\n',
        b"--b\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(b"From: c@example.net\nSubject: fwd\n\nwrite to bob@example.org\n")
        + b"--b--\n",
    ),
    "utf-16 base64 text": _mime(
        "Content-Type: text/plain; charset=utf-16\nContent-Transfer-Encoding: base64\n",
        base64.encodebytes("write to bob@example.org".encode("utf-16")),
    ),
    "utf-16 8-bit text": _mime(
        "Content-Type: text/plain; charset=utf-16\n", "write to bob@example.org".encode("utf-16")
    ),
}


@pytest.mark.parametrize("data", HIDDEN_RECIPIENT.values(), ids=HIDDEN_RECIPIENT.keys())
def test_recipient_hidden_by_an_encoding_is_replaced_in_what_the_parser_reads(data):
    parsed = parse_message(sanitize(data))

    assert "bob@example.org" not in parsed.visible_text
    assert "write to recipient@example.invalid" in parsed.visible_text


@pytest.mark.parametrize("name", ["Bcc", "X-Delivered-To", "X-Rcpt-To", "Apparently-To"])
def test_more_recipient_headers_name_recipients(name):
    data = (
        f"From: alice@example.com\n{name}: <carol@example.org>\nSubject: s\n\n"
        "Copy for carol@example.org\n"
    ).encode()

    out, recipients = sanitize_message(data)

    assert recipients == frozenset({"carol@example.org"})
    assert b"carol@example.org" not in out
    if name != "Bcc":
        assert name.lower() not in _header_names(out)


def test_sanitize_message_returns_the_recipients_in_lower_case():
    out, recipients = sanitize_message(_message("Cc: Dave <DAVE@Example.org>\n"))

    assert recipients == frozenset({"bob@example.org", "dave@example.org"})
    assert out == sanitize(_message("Cc: Dave <DAVE@Example.org>\n"))


def test_sanitize_with_recipients_keeps_header_order_without_repeats():
    from detection.sanitize import sanitize_with_recipients

    data = _message(
        "Cc: Dave <DAVE@Example.org>, bob@example.org\nDelivered-To: erin@example.net\n"
    )
    out, recipients = sanitize_with_recipients(data)

    assert recipients == ("bob@example.org", "dave@example.org", "erin@example.net")
    assert out == sanitize(data)


def test_parse_with_recipients_hides_them_from_the_text_but_returns_them():
    from detection.features import parse_with_recipients

    parsed, recipients = parse_with_recipients(_message("", "Hi bob@example.org, see below.\n"))

    assert recipients == ("bob@example.org",)
    assert "bob@example.org" not in parsed.visible_text
    assert RECIPIENT_PLACEHOLDER in parsed.visible_text


def test_parse_for_model_replaces_recipients_in_decoded_text():
    encoded = base64.b64encode(b"Dear bob@example.org, invoice").decode()
    headers = f"MIME-Version: 1.0\nContent-Type: text/html\nX-Note: =?utf-8?b?{encoded}?=\n"
    data = _message(headers, "").replace(
        b"Subject: Quarterly report", f"Subject: =?utf-8?b?{encoded}?=".encode()
    )
    html = (
        '<p>Hello &#98;&#111;&#98;&#64;example.org</p><a href="http://x.example.net/?u=BOB'
        '%40example.org">BOB@example.org</a><div style="display:none">bob@example.org</div>\n'
    )

    parsed = parse_for_model(data + html.encode())

    assert parsed.subject == f"Dear {RECIPIENT_PLACEHOLDER}, invoice"
    assert parsed.visible_text.startswith(f"Hello {RECIPIENT_PLACEHOLDER}")
    fields = [parsed.subject, parsed.visible_text, parsed.hidden_text]
    fields += [u.raw for u in parsed.urls] + [u.text for u in parsed.urls]
    assert not any("bob@example.org" in f.lower() or "bob%40" in f.lower() for f in fields)
    assert parsed.urls[0].raw.endswith("u=recipient%40example.invalid")


def test_salutation_never_rewrites_part_of_an_address():
    body = "Dear bob@example.net, hello bob%40example.net\n"

    out = sanitize(_message("", body))

    assert b"Dear bob@example.net, hello bob%40example.net" in out
    assert b"recipient@example.net" not in out


# cost
def test_many_recipients_and_a_long_body_are_replaced_in_one_pass():
    import time

    from detection.sanitize import MAX_RECIPIENTS

    to = ", ".join(f"user{i}@example.org" for i in range(4000))
    body = "Note for user7@example.org and user4000@example.org. " * 2000  # ~100 KB
    data = _message(f"Cc: {to}\n", body)

    started = time.perf_counter()
    out, recipients = sanitize_message(data)
    elapsed = time.perf_counter() - started

    assert len(recipients) == MAX_RECIPIENTS
    assert b"user7@example.org" not in out
    assert elapsed < 2.0, f"sanitize took {elapsed:.1f} s"
