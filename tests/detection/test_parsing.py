"""parse_message on one small synthetic message per kind of fault."""

from __future__ import annotations

import base64
import time

import pytest

from detection import parsing
from detection.parsing import (
    DEFECT_KINDS,
    ParsedMessage,
    ParseLimits,
    parse_message,
    parse_raw,
    parse_text_record,
)
from detection.signals import SenderFacts, raw_signals


def message(*headers: str, body: bytes | str = b"Hello.\r\n", raw_headers: bytes = b"") -> bytes:
    """A message from header lines and a body; a From, Subject and Date unless given."""
    names = {h.split(":", 1)[0].lower() for h in headers}
    names |= {line.split(b":")[0].decode().lower() for line in raw_headers.splitlines()}
    defaults = {
        "from": "From: Alice Example <alice@example.com>",
        "subject": "Subject: Agenda",
        "date": "Date: Tue, 02 Jan 2024 09:30:00 +0000",
    }
    lines = [line for name, line in defaults.items() if name not in names] + list(headers)
    head = "".join(f"{line}\r\n" for line in lines).encode() + raw_headers
    return head + b"\r\n" + (body.encode() if isinstance(body, str) else body)


def multipart(parts: list[tuple[str, bytes]], kind: str = "mixed", boundary: str = "b1") -> bytes:
    """A multipart body: (part header lines, part body) pairs."""
    chunks = [f"--{boundary}\r\n{h}\r\n\r\n".encode() + b + b"\r\n" for h, b in parts]
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return message(
        "MIME-Version: 1.0", f'Content-Type: multipart/{kind}; boundary="{boundary}"', body=body
    )


def assert_safe_text(parsed: ParsedMessage) -> None:
    texts = [parsed.subject, parsed.visible_text, parsed.hidden_text, parsed.message_id]
    texts += [parsed.x_mailer, parsed.in_reply_to, *parsed.references]
    for address in (parsed.from_, parsed.reply_to, parsed.return_path, *parsed.recipients):
        if address is not None:
            texts += [address.display_name, address.address]
    texts += [u.raw for u in parsed.urls] + [u.text for u in parsed.urls]
    texts += [u.host for u in parsed.urls]
    texts += [a.filename for a in parsed.attachments] + [a.content_type for a in parsed.attachments]
    texts += [part for pair in parsed.raw_headers for part in pair]
    for text in texts:
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text), repr(text)


# 1. headers the strict parser rejects
@pytest.mark.parametrize(
    "header",
    [
        "Message-ID: <[id01].x.y_[relay7]@[gw3].example.com>",
        "To: (c):",
        "Content-Type: text/plain; name*",
    ],
)
def test_strict_rejected_header_is_kept_with_a_defect(header):
    parsed = parse_message(message(header, body="Please verify your account today."))

    assert parsed.defects.get("header_defect", 0) >= 1
    assert (header.split(":")[0], header.split(": ", 1)[1]) in parsed.raw_headers
    assert parsed.visible_text == "Please verify your account today."
    assert parsed.subject == "Agenda"


def test_rejected_message_id_is_kept_raw():
    parsed = parse_message(message("Message-ID: <[id01].x.y_[relay7]@[gw3].example.com>"))

    assert parsed.message_id == "<[id01].x.y_[relay7]@[gw3].example.com>"


def test_well_formed_headers_have_no_defect():
    parsed = parse_message(
        message("Message-ID: <abc.1@example.com>", "To: Bob <bob@example.org>, carol@example.org")
    )

    assert parsed.defects == {}
    assert [r.address for r in parsed.recipients] == ["bob@example.org", "carol@example.org"]


def test_structured_parse_failure_falls_back_to_text(monkeypatch):
    def broken(data, limits):
        raise RuntimeError("simulated parser bug")

    monkeypatch.setattr(parsing, "_parse", broken)
    parsed = parse_message(message(body="Visit http://login.example.net/ now"))

    assert parsed.defects["parse_fallback"] == 1
    assert [u.host for u in parsed.urls] == ["login.example.net"]


# 2. encoded words that decode to line breaks
def test_encoded_line_break_in_display_name_becomes_a_space():
    parsed = parse_message(message("From: =?UTF-8?Q?=0AAlice_Support?= <alice@example.com>"))

    assert parsed.from_.display_name == "Alice Support"
    assert parsed.from_.address == "alice@example.com"
    assert parsed.defects["control_char"] >= 1


def test_encoded_line_break_in_subject_cannot_add_a_header():
    parsed = parse_message(
        message("Subject: Invoice=?UTF-8?Q?=0A?=Bcc: bob@example.com", "To: carol@example.org")
    )

    assert parsed.subject == "Invoice Bcc: bob@example.com"
    assert [r.address for r in parsed.recipients] == ["carol@example.org"]
    assert all(name.lower() != "bcc" for name, _ in parsed.raw_headers)
    assert parsed.defects["control_char"] == 1


def test_encoded_word_cannot_add_an_address():
    parsed = parse_message(
        message("From: =?UTF-8?Q?x=40bank.example.com_=3Cx=40bank.example.com=3E?= <a@example.net>")
    )

    assert parsed.from_.address == "a@example.net"
    assert parsed.from_.display_name == "x@bank.example.com <x@bank.example.com>"


def test_adjacent_encoded_words_join_split_characters():
    parsed = parse_message(message("Subject: =?UTF-8?B?Q2Fm?= =?UTF-8?B?w6k=?= ok"))

    assert parsed.subject == "Café ok"


# 3. unknown and bogus charsets
def test_unknown_header_charset_falls_back_to_utf8():
    parsed = parse_message(message("Subject: =?x-bogus-cs?Q?Caf=C3=A9?="))

    assert parsed.subject == "Café"
    assert parsed.defects["unknown_charset"] == 1


def test_unknown_body_charset_falls_back_to_latin1():
    body = "Caf\xe9 menu".encode("latin-1")
    parsed = parse_message(message("Content-Type: text/plain; charset=x-bogus-cs", body=body))

    assert parsed.visible_text == "Café menu"
    assert parsed.defects["unknown_charset"] == 1


def test_charset_alias_decodes_without_a_defect():
    body = "สวัสดี".encode("cp874")
    parsed = parse_message(message("Content-Type: text/plain; charset=windows-874", body=body))

    assert parsed.visible_text == "สวัสดี"
    assert "unknown_charset" not in parsed.defects


# 4. quoted-printable and NUL
def test_quoted_printable_keeps_raw_8bit_bytes():
    parsed = parse_message(
        message(
            "Content-Type: text/plain; charset=iso-8859-1",
            "Content-Transfer-Encoding: quoted-printable",
            body=b"Price:\xa0ten =3D 10 caf=E9 to=\r\nday",
        )
    )

    assert parsed.visible_text == "Price: ten = 10 café today"


def test_7bit_html_link_is_not_quoted_printable_decoded():
    link = "https://news.example.com/track?uid=5dd5&t=98e1"
    parsed = parse_message(
        message(
            "Content-Type: text/html; charset=utf-8",
            "Content-Transfer-Encoding: 7bit",
            body=f'<p><a href="{link}">Read more</a></p>',
        )
    )

    assert [u.raw for u in parsed.urls] == [link]


def test_quoted_printable_nul_becomes_a_space_and_is_counted():
    parsed = parse_message(
        message("Content-Transfer-Encoding: quoted-printable", body="Please verify=00your account")
    )

    assert parsed.visible_text == "Please verify your account"
    assert parsed.defects["nul_byte"] == 1


def test_raw_nul_in_subject_is_a_space_and_counted():
    parsed = parse_message(message(raw_headers=b"Subject: pass\x00word reset\r\n"))

    assert parsed.subject == "pass word reset"
    assert parsed.defects["nul_byte"] == 1


# 5. 8-bit bodies
def test_utf8_8bit_body_decodes_exactly():
    parsed = parse_message(
        message(
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
            body="Grüße aus Köln".encode(),
        )
    )

    assert parsed.visible_text == "Grüße aus Köln"
    assert "decode_error" not in parsed.defects


@pytest.mark.parametrize(
    "content_type", ["Content-Type: text/plain; charset=utf-8", "Content-Type: text/plain"]
)
def test_undecodable_8bit_body_is_replaced_and_counted(content_type):
    parsed = parse_message(message(content_type, body=b"caf\xe9 menu"))

    assert parsed.visible_text == "caf\ufffd menu"
    assert parsed.defects["decode_error"] == 1


# 6. multipart without boundary lines
def test_multipart_without_boundary_lines_still_yields_text_and_links():
    parsed = parse_message(
        message(
            'Content-Type: multipart/alternative; boundary="never-used"',
            body='<html><body><p>Reset your password <a href="https://reset.example.net/">'
            "here</a></p></body></html>",
        )
    )

    assert parsed.defects["boundary_missing"] == 1
    assert "Reset your password" in parsed.visible_text
    assert [u.host for u in parsed.urls] == ["reset.example.net"]


def test_wrong_declared_boundary_recovers_the_parts():
    body = b"--real\r\nContent-Type: text/plain\r\n\r\nInvoice attached.\r\n--real--\r\n"
    parsed = parse_message(message('Content-Type: multipart/mixed; boundary="declared"', body=body))

    assert parsed.defects["boundary_missing"] == 1
    assert parsed.visible_text == "Invoice attached."


# 7. resource exhaustion
def test_many_parameters_hit_a_limit_quickly():
    started = time.perf_counter()
    parsed = parse_message(message("Content-Type: text/plain" + ";" * 20_000, body="Hello there."))

    assert time.perf_counter() - started < 1.0
    assert parsed.visible_text == "Hello there."


def test_deep_nesting_stops_at_the_depth_limit():
    depth = 2000
    body = b""
    for level in range(depth):
        body += (
            f"--n{level}\r\nContent-Type: multipart/mixed; boundary=n{level + 1}\r\n\r\n".encode()
        )
    body += b"--n2000\r\nContent-Type: text/plain\r\n\r\ndeep\r\n"
    started = time.perf_counter()
    parsed = parse_message(message("Content-Type: multipart/mixed; boundary=n0", body=body))

    assert time.perf_counter() - started < 2.0
    assert parsed.defects["limit_hit"] >= 1


def test_many_empty_parts_stop_at_the_part_limit():
    parts = [("Content-Type: text/plain", b"")] * 10_000
    started = time.perf_counter()
    parsed = parse_message(multipart(parts[:1] + [("", b"Verify your account")] + parts))

    assert time.perf_counter() - started < 2.0
    assert parsed.defects["limit_hit"] >= 1
    assert "Verify your account" in parsed.visible_text


def test_huge_recipient_list_is_capped():
    to = "To: " + ", ".join(f"user{i}@example.org" for i in range(50_000))
    started = time.perf_counter()
    parsed = parse_message(message(to, body="Quarterly update."))

    assert time.perf_counter() - started < 1.0
    assert 0 < len(parsed.recipients) <= ParseLimits().max_addresses
    assert parsed.defects["limit_hit"] >= 1
    assert parsed.subject == "Agenda"


def test_large_attachment_beside_phishing_text_is_scored():
    blob = base64.encodebytes(b"\x00\x01" * 1_500_000)
    parsed = parse_message(
        multipart(
            [
                (
                    "Content-Type: text/plain",
                    b"Your mailbox is full, log in to verify your account.",
                ),
                (
                    'Content-Type: application/octet-stream; name="data.bin"\r\n'
                    "Content-Transfer-Encoding: base64",
                    blob,
                ),
            ]
        )
    )

    assert "verify your account" in parsed.visible_text
    assert parsed.attachments[0].size == 3_000_000
    assert raw_signals(parsed, SenderFacts())["credential_wording"] >= 1


def test_oversized_message_is_read_up_to_the_limit():
    limits = ParseLimits(max_message_bytes=2_000)
    parsed = parse_message(message(body="Log in now. " + "x" * 10_000), limits)

    assert parsed.defects["limit_hit"] >= 1
    assert parsed.visible_text.startswith("Log in now.")


def test_padding_the_header_block_past_the_field_cap_still_reads_the_html_body():
    padding = b"".join(b"X-Pad-%d: filler\r\n" % i for i in range(400))
    raw = padding + (
        b"From: Alice Example <alice@example.com>\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n"
        b'<p>Please log in</p><p style="display:none">hidden words</p>'
    )

    parsed = parse_message(raw)

    assert parsed.defects["limit_hit"] == 1
    assert parsed.has_html_part
    assert parsed.visible_text == "Please log in"
    assert parsed.hidden_text == "hidden words"
    assert parsed.from_.address == "alice@example.com"


def test_past_the_field_cap_only_the_first_structural_field_of_a_name_is_kept():
    padding = b"".join(b"X-Pad-%d: filler\r\n" % i for i in range(300))
    raw = padding + b"Content-Type: text/html\r\nContent-Type: text/plain\r\n\r\n<b>Hi</b>"

    parsed = parse_message(raw)

    assert parsed.has_html_part
    assert parsed.visible_text == "Hi"


def test_time_budget_stops_reading_further_parts():
    limits = ParseLimits(time_budget_s=1e-9)
    parsed = parse_message(multipart([("", b"one"), ("", b"two")]), limits)

    assert parsed.defects["limit_hit"] == 1


@pytest.mark.parametrize("name", ["max_parts", "time_budget_s"])
def test_parse_limits_reject_non_positive_values(name):
    with pytest.raises(ValueError, match=f"ParseLimits.{name} must be a positive number, got 0"):
        ParseLimits(**{name: 0})


# 8. ambiguous addresses
def test_address_with_two_at_signs_is_not_attributed():
    parsed = parse_message(message("From: alice@evil.example.com@bank.example.net"))

    assert parsed.from_.address == ""
    assert parsed.from_.domain == ""
    assert parsed.defects["invalid_from"] == 1


def test_address_in_display_name_is_not_the_sender():
    parsed = parse_message(message('From: "support@bank.example.net" <alice@evil.example.com>'))

    assert parsed.from_.address == "alice@evil.example.com"
    assert parsed.from_.domain == "evil.example.com"
    assert parsed.defects["display_name_address"] == 1
    assert "invalid_from" not in parsed.defects


def test_comma_in_unquoted_display_name_keeps_the_address():
    parsed = parse_message(message("From: Example, Alice <alice@example.com>"))

    assert parsed.from_ == parsing.Address("Example, Alice", "alice@example.com")
    assert "invalid_from" not in parsed.defects


@pytest.mark.parametrize(
    "data",
    [
        b"Subject: no sender\r\n\r\nbody\r\n",
        message("From: alice@example.com, bob@example.com"),
        message("From: undisclosed"),
    ],
)
def test_missing_or_multiple_from_is_invalid(data):
    parsed = parse_message(data)

    assert parsed.defects["invalid_from"] == 1
    assert parsed.from_ is None or parsed.from_.address == ""


def test_two_from_fields_are_invalid_and_attributed_to_no_one():
    parsed = parse_message(b"From: ceo@bank.example.com\nFrom: x@evil.example.net\n\nb")

    assert parsed.from_.address == ""
    assert parsed.from_.domain == ""
    assert parsed.defects["invalid_from"] == 1


def test_domain_literal_sender_is_invalid_and_has_no_domain():
    parsed = parse_message(message("From: CEO <ceo@[bank.example.com]>"))

    assert parsed.from_ == parsing.Address("CEO", "")
    assert parsed.defects["invalid_from"] == 1
    assert parsing.Address("", "x@[192.0.2.1]").domain == ""


def test_control_characters_in_content_type_are_removed_and_counted():
    parsed = parse_message(message("Content-Type: application/x\x00y\x1b; name=a.bin", body="b"))

    assert parsed.attachments[0].content_type == "application/xy"
    assert parsed.defects["header_defect"] == 1
    assert parsed.defects["nul_byte"] == 1
    assert_safe_text(parsed)


# 12. invisible characters
def test_zero_width_characters_are_stripped_and_counted():
    parsed = parse_message(message("Subject: Pass\u200bword re\u200dset"))

    assert parsed.subject == "Password reset"
    assert parsed.invisible_char_count == 2


def test_bom_before_closing_tags_is_stripped():
    html = "<p>Verify\ufeff</p><p>your\ufeff</p><b>account\ufeff</b>"
    parsed = parse_message(message("Content-Type: text/html; charset=utf-8", body=html.encode()))

    assert parsed.visible_text == "Verify your account"
    assert parsed.invisible_char_count == 3


def test_emoji_sequences_are_not_flagged():
    text = "Team photo \U0001f468\u200d\U0001f4bb https://example.com/%F0%9F%91%A8%E2%80%8D%F0%9F%92%BB"
    parsed = parse_message(message("Content-Type: text/plain; charset=utf-8", body=text.encode()))

    assert parsed.invisible_char_count == 0
    assert "\U0001f468\u200d\U0001f4bb" in parsed.visible_text
    assert parsed.urls[0].tricks == ()
    assert parsed.urls[0].registered_domain == "example.com"


def test_unicode_tags_and_variation_selectors_supplement_are_stripped_and_counted():
    hidden = "".join(chr(0xE0000 + ord(c)) for c in "wire money")
    parsed = parse_message(
        message(f"Subject: Agenda{hidden}", body="Pay\U000e0100ment \U000e0001x")
    )

    assert parsed.subject == "Agenda"
    assert parsed.visible_text == "Payment x"
    assert parsed.invisible_char_count == len(hidden) + 2


def test_emoji_flag_tags_and_variation_selector_are_kept():
    england = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
    text = f"Go {england} \u2764\ufe0f \U0001f468\u200d\U0001f469"
    parsed = parse_message(message("Content-Type: text/plain; charset=utf-8", body=text.encode()))

    assert parsed.visible_text == text
    assert parsed.invisible_char_count == 0


def test_joiner_after_a_tag_character_is_not_an_emoji_joiner():
    parsed = parse_message(message("Subject: pa\U000e0041\u200dy"))

    assert parsed.subject == "pay"
    assert parsed.invisible_char_count == 2


# 13. image-only and attachment-only lures
def test_linked_image_alone_gives_no_text_and_a_linked_image():
    html = '<a href="https://pay.example.net/"><img src="https://cdn.example.net/bill.png"></a>'
    parsed = parse_message(message("Content-Type: text/html", body=html))
    signals = raw_signals(parsed, SenderFacts())

    assert signals["no_text"] == 1
    assert signals["image_count"] == 1
    assert signals["linked_image_count"] == 1
    assert signals["html_only"] == 1


def test_empty_body_with_pdf_attachment():
    parsed = parse_message(
        multipart(
            [
                ("Content-Type: text/plain", b""),
                (
                    "Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
                    'Content-Disposition: attachment; filename="inv.pdf"',
                    base64.encodebytes(b"%PDF-1.4 fake"),
                ),
            ]
        )
    )
    signals = raw_signals(parsed, SenderFacts())

    assert parsed.attachments == (parsing.Attachment("inv.pdf", "application/pdf", 13),)
    assert signals["no_text"] == 1
    assert signals["document_attachment"] == 1


def test_inline_image_and_archive_attachments():
    zip_bytes = base64.encodebytes(b"PK\x03\x04" + b"\x00" * 40)
    parsed = parse_message(
        multipart(
            [
                ("Content-Type: text/html", b'<p>See <img src="cid:logo1"></p>'),
                (
                    "Content-Type: image/png; name=logo.png\r\nContent-ID: <logo1>\r\n"
                    "Content-Disposition: inline; filename=logo.png",
                    b"\x89PNG",
                ),
                (
                    "Content-Type: application/octet-stream; name=files.dat\r\n"
                    "Content-Transfer-Encoding: base64",
                    zip_bytes,
                ),
            ],
            kind="related",
        )
    )

    logo, archive = parsed.attachments
    assert (logo.filename, logo.content_type, logo.inline) == ("logo.png", "image/png", True)
    assert archive.is_archive and not logo.is_archive
    assert parsed.image_count == 1
    assert raw_signals(parsed, SenderFacts())["archive_attachment"] == 1


def test_rfc2231_filename_is_decoded():
    parsed = parse_message(
        multipart(
            [
                ("Content-Type: text/plain", b"see attached"),
                (
                    "Content-Type: application/pdf\r\n"
                    "Content-Disposition: attachment; filename*=utf-8''Re%C3%A7u.pdf",
                    b"%PDF",
                ),
            ]
        )
    )

    assert parsed.attachments[0].filename == "Reçu.pdf"


def test_bidi_override_in_filename_is_stripped():
    name = "=?UTF-8?Q?invoice=E2=80=AEfdp.exe?="
    parsed = parse_message(
        multipart(
            [
                ("", b"see attached"),
                (f'Content-Type: application/octet-stream; name="{name}"', b"MZ"),
            ]
        )
    )

    assert parsed.attachments[0].filename == "invoicefdp.exe"
    assert raw_signals(parsed, SenderFacts())["risky_attachment"] == 1


# 14. empty and whitespace-only messages
@pytest.mark.parametrize("data", [b"", b"\r\n", b"   \r\n\r\n  \t ", b"From: a@example.com\r\n"])
def test_empty_or_whitespace_message_gives_a_result(data):
    parsed = parse_message(data)

    assert parsed.visible_text == ""
    assert raw_signals(parsed, SenderFacts())["no_subject"] == 1


# 15. over-length text
def test_long_newsletter_is_capped_head_and_tail():
    words = " ".join(f"word{i}" for i in range(30_000))
    started = time.perf_counter()
    parsed = parse_message(message(body=words))

    assert time.perf_counter() - started < 1.0
    assert len(parsed.visible_text) <= ParseLimits().max_text_chars + 5
    assert parsed.visible_text.startswith("word0 word1")
    assert parsed.visible_text.endswith("word29999")
    assert parsed.defects["limit_hit"] == 1


def test_single_line_base64_blob_in_text_plain_parses_quickly():
    blob = base64.b64encode(b"\xfe" * 1_500_000)
    started = time.perf_counter()
    parsed = parse_message(message("Content-Type: text/plain", body=blob))

    assert time.perf_counter() - started < 1.0
    assert parsed.defects["limit_hit"] >= 1


# attached messages, alternatives, dates, records
def test_attached_message_text_is_read():
    inner = b"From: x@example.org\r\nSubject: fwd\r\n\r\nConfirm your password at once.\r\n"
    parsed = parse_message(multipart([("", b"FYI"), ("Content-Type: message/rfc822", inner)]))

    assert parsed.visible_text == "FYI Confirm your password at once."


def test_alternative_shows_the_html_part():
    parsed = parse_message(
        multipart(
            [
                ("Content-Type: text/plain", b"Plain version"),
                ("Content-Type: text/html", b"<p>HTML</p>"),
            ],
            kind="alternative",
        )
    )

    assert parsed.visible_text == "HTML"
    assert parsed.has_plain_part and parsed.has_html_part


@pytest.mark.parametrize(
    "value", ["garbage", "Tue, 99 Foo 99999 99:99:99 +9999", "", "Mon, 32 Jan 2024 00:00:00 +0000"]
)
def test_malformed_date_never_raises(value):
    parsed = parse_message(message(f"Date: {value}"))

    assert parsed.date is None
    assert parsed.defects["header_defect"] == 1


def test_date_without_zone_is_utc():
    parsed = parse_message(message("Date: Tue, 02 Jan 2024 09:30:00"))

    assert parsed.date.isoformat() == "2024-01-02T09:30:00+00:00"


def test_parse_raw_reads_text_records():
    parsed = parse_raw(b"Subject: cheap meds\nbuy now at www.shop.example.com\n", "text")

    assert parsed.subject == "cheap meds"
    assert parsed.visible_text == "buy now at www.shop.example.com"
    assert parsed.urls[0].host == "www.shop.example.com"


def test_parse_raw_text_falls_back_to_latin1():
    assert parse_raw(b"Subject: caf\xe9\nmenu", "text").subject == "café"


def test_parse_raw_rejects_unknown_kinds():
    with pytest.raises(ValueError, match=r"kind must be one of \('rfc822', 'text'\), got 'mbox'"):
        parse_raw(b"", "mbox")


def test_text_record_has_no_headers():
    parsed = parse_text_record("Hello\x00there", "body\r\ntext")

    assert (parsed.subject, parsed.visible_text, parsed.from_) == ("Hello there", "body text", None)


def test_defect_kinds_keep_their_names():
    assert DEFECT_KINDS[:10] == (
        "header_defect", "control_char", "unknown_charset", "decode_error", "nul_byte",
        "boundary_missing", "mime_defect", "limit_hit", "invalid_from", "display_name_address",
    )  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        message("From: =?UTF-8?Q?=0D=0AX?= <a@example.com>", "To: =?UTF-8?Q?=0A?= <b@example.com>"),
        message(raw_headers=b"X-Mailer: mail\rer\x00\r\n"),
        multipart(
            [("Content-Type: text/html", b'<a href="http://x.example.com/\na\r\nb">li\nnk</a>')]
        ),
    ],
)
def test_text_fields_never_hold_line_breaks_or_nul(data):
    assert_safe_text(parse_message(data))


def test_boundary_text_inside_a_line_does_not_start_a_part():
    body = (
        b"see --sep inline\n--sep\nfirst --sep\n--sepnot a delimiter\n"
        b"--sep \r\nsecond\n--sep--\nafter\n"
    )

    spans = parsing.part_spans(body, "sep")

    parts = [body[start:end] for start, end in spans]
    assert parts == [b"first --sep\n--sepnot a delimiter", b"second"]


def test_a_closing_boundary_at_the_very_start_ends_the_parts():
    assert parsing.part_spans(b"--sep--\n--sep\nlate\n", "sep") == []
