"""Property tests: mutated, real-looking synthetic messages never break the parser.

The strategies here are also what `scripts/fuzz_parse.py` runs for minutes at a time;
the tests keep `max_examples` small so the whole file runs in seconds.
"""

from __future__ import annotations

import base64
import math
import quopri

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detection.parsing import ParsedMessage, parse_message, parse_raw
from detection.signals import SenderFacts, raw_signals

SUBJECTS = st.sampled_from(
    [
        "Agenda for Thursday",
        "=?UTF-8?Q?Invoice=0A?=Bcc: bob@example.com",
        "=?utf-8?B?Q2Fmw6kgbWVudQ==?=",
        "=?x-bogus-cs?Q?Caf=E9?=",
        "Pass\u200bword re\u200dset",
        "=?UTF-8?Q?broken",
        "",
    ]
) | st.text(max_size=60)
SENDERS = st.sampled_from(
    [
        "Alice Example <alice@example.com>",
        '"support@bank.example.net" <alice@evil.example.com>',
        "alice@evil.example.com@bank.example.net",
        "=?UTF-8?Q?=0AAlice?= <alice@example.com>",
        "Example, Alice <alice@example.com>",
        "(c):",
        "<>",
    ]
)
BODIES = st.sampled_from(
    [
        "Please verify your account at http://bank.example.com@evil.example.net/login",
        "Hello team, the build passed. Notes at https://docs.example.org/n?a=1&b=2",
        "Caf\u00e9 \U0001f468\u200d\U0001f4bb www.example.com/%F0%9F%91%A8",
    ]
) | st.text(max_size=200)
HTML = st.sampled_from(
    [
        '<p>ver<span style="font-size:0">agenda</span>ify <a href="hxxp://0xC0A80101/">here</a></p>',
        '<style>.h{display:none}</style><div class="h">pre</div><a href="http://x.example.com">'
        '<img src="a.png"></a>',
        "<table bgcolor=#000><tr><td><font color=white>ok</font></td></tr></table>",
    ]
)
CHARSETS = st.sampled_from(["utf-8", "iso-8859-1", "windows-874", "x-bogus-cs", "us-ascii", ""])
ENCODINGS = st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "x-unknown", ""])
NOISE = st.sampled_from(
    [
        b"\x00", b"\r", b"\n", b"\r\n\r\n", b"--b1\r\n", b"--b1--", b"=?utf-8?q?=0a?=",
        b"\xff\xfe\xa0", b";" * 200, b"<", b"Content-Type: multipart/mixed; boundary=b1\r\n",
        b"\r\n ", b"=", b"=\r\n", b"Content-Transfer-Encoding: base64\r\n",
    ]
)  # fmt: skip


def encode_body(text: str, charset: str, encoding: str) -> bytes:
    data = text.encode(charset if charset in ("utf-8", "iso-8859-1") else "utf-8", "replace")
    if encoding == "base64":
        return base64.encodebytes(data)
    if encoding == "quoted-printable":
        return quopri.encodestring(data)
    return data


@st.composite
def leaf(draw, kind: str = "") -> bytes:
    """One part: headers and an encoded text, HTML or attachment body."""
    kind = kind or draw(st.sampled_from(["text/plain", "text/html", "application/pdf"]))
    charset, encoding = draw(CHARSETS), draw(ENCODINGS)
    text = draw(HTML) if kind == "text/html" else draw(BODIES)
    headers = f"Content-Type: {kind}" + (f"; charset={charset}" if charset else "")
    if kind == "application/pdf":
        headers += '\r\nContent-Disposition: attachment; filename="inv.pdf"'
    if encoding:
        headers += f"\r\nContent-Transfer-Encoding: {encoding}"
    return headers.encode() + b"\r\n\r\n" + encode_body(text, charset, encoding)


@st.composite
def entity(draw, depth: int = 0) -> bytes:
    """A leaf, or a multipart of 1-3 entities with its own boundary."""
    if depth >= 3 or draw(st.booleans()):
        return draw(leaf())
    subtype = draw(st.sampled_from(["mixed", "alternative", "related", "digest"]))
    boundary = f"b{depth}=_{draw(st.integers(0, 99))}"
    children = draw(st.lists(entity(depth + 1), min_size=1, max_size=3))
    body = b"".join(f"--{boundary}\r\n".encode() + child + b"\r\n" for child in children)
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"'
    return head.encode() + b"\r\n\r\n" + body + f"--{boundary}--\r\n".encode()


def fold(line: str, width: int) -> str:
    """Fold a header line at spaces past `width` characters, as mailers do."""
    if width <= 0 or len(line) <= width:
        return line
    cut = line.rfind(" ", 0, width)
    if cut <= line.find(":"):
        return line
    return line[:cut] + "\r\n\t" + fold(line[cut + 1 :], width)


@st.composite
def messages(draw) -> bytes:
    """A well-formed synthetic message: folded headers around a MIME entity."""
    width = draw(st.sampled_from([0, 20, 78]))
    headers = [
        f"From: {draw(SENDERS)}",
        f"To: {draw(SENDERS)}, bob@example.org",
        f"Subject: {draw(SUBJECTS)}",
        f"Date: {draw(st.sampled_from(['Tue, 02 Jan 2024 09:30:00 +0000', 'garbage', '']))}",
        "Message-ID: <a.1@example.com>",
        "MIME-Version: 1.0",
    ]
    head = "".join(fold(h, width) + "\r\n" for h in headers).encode("utf-8", "surrogatepass")
    return head + draw(entity())


@st.composite
def mutated(draw) -> bytes:
    """A synthetic message after up to four byte-level mutations."""
    data = draw(messages())
    for _ in range(draw(st.integers(0, 4))):
        operation = draw(st.sampled_from(["truncate", "insert", "delete", "duplicate", "newlines"]))
        at = draw(st.integers(0, len(data)))
        if operation == "truncate":
            data = data[:at]
        elif operation == "insert":
            data = data[:at] + draw(NOISE | st.binary(max_size=8)) + data[at:]
        elif operation == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 40)) :]
        elif operation == "duplicate":
            data = data[:at] + data[at : at + 200] * draw(st.integers(2, 20)) + data[at:]
        else:
            data = data.replace(b"\r\n", draw(st.sampled_from([b"\n", b"\r", b"\n\r"])))
    return data


def check_invariants(parsed: ParsedMessage) -> None:
    """The contract every parse must keep: safe text fields and finite signals."""
    assert isinstance(parsed, ParsedMessage)
    texts = [parsed.subject, parsed.visible_text, parsed.hidden_text, parsed.message_id]
    texts += [parsed.x_mailer, parsed.in_reply_to, *parsed.references]
    for address in (parsed.from_, parsed.reply_to, parsed.return_path, *parsed.recipients):
        if address is not None:
            texts += [address.display_name, address.address]
    texts += (
        [u.raw for u in parsed.urls] + [u.text for u in parsed.urls] + [u.host for u in parsed.urls]
    )
    texts += [a.filename for a in parsed.attachments]
    texts += [part for pair in parsed.raw_headers for part in pair]
    for text in texts:
        assert not set(text) & {"\r", "\n", "\x00"}, repr(text)
    for name, value in raw_signals(parsed, SenderFacts()).items():
        assert math.isfinite(value), name


QUICK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@QUICK
@given(mutated())
def test_mutated_messages_never_raise_and_stay_safe(data):
    check_invariants(parse_message(data))


@QUICK
@given(messages())
def test_well_formed_messages_have_a_sender_and_text(data):
    parsed = parse_message(data)

    check_invariants(parsed)
    assert parsed.from_ is not None


@QUICK
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(data):
    check_invariants(parse_message(data))
    check_invariants(parse_raw(data, "text"))
