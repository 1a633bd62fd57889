"""Raw RFC 5322 bytes to one normalised `ParsedMessage`.

Contract: `parse_message(data: bytes) -> ParsedMessage` never raises for a malformed
message. Whatever was wrong is counted in `ParsedMessage.defects` (keys from
`DEFECT_KINDS`) and parsing goes on with what could be read.

One rule for every path (training, the server, batch rescoring): the message is
parsed from bytes with the compat32 policy, which accepts what the strict policy
rejects; header values are decoded by this module, not by the policy.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime

from detection.htmltext import html_to_views
from detection.urls import Url, extract_urls

logger = logging.getLogger(__name__)

DEFECT_KINDS = (
    "header_defect",  # a header the strict parser rejects, or one that failed to decode
    "control_char",  # CR, LF or another control character inside a decoded header
    "unknown_charset",  # a declared charset Python does not know
    "decode_error",  # bytes that did not decode in their charset (replaced)
    "nul_byte",  # NUL bytes in a header or body
    "boundary_missing",  # declared multipart whose boundary never appears
    "mime_defect",  # any other defect the email package reported
    "limit_hit",  # a size, count, depth or time limit stopped reading
    "invalid_from",  # From that is not exactly one well-formed address
    "display_name_address",  # a display name that itself contains an address
)


@dataclass(frozen=True)
class Address:
    """One mailbox: the display name as shown and the address, lower-cased."""

    display_name: str
    address: str

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2] if "@" in self.address else ""


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class ParsedMessage:
    """Everything downstream stages may read from a message.

    Text fields never contain CR, LF or NUL: they are safe for logs, features and
    the tokenizer. `visible_text` is what a reader sees (the model reads it);
    `hidden_text` is text a mail client would not show.
    """

    subject: str = ""
    from_: Address | None = None
    reply_to: Address | None = None
    return_path: Address | None = None
    recipients: tuple[Address, ...] = ()
    message_id: str = ""
    in_reply_to: str = ""
    references: tuple[str, ...] = ()
    date: datetime | None = None
    x_mailer: str = ""
    visible_text: str = ""
    hidden_text: str = ""
    has_plain_part: bool = False
    has_html_part: bool = False
    urls: tuple[Url, ...] = ()
    image_count: int = 0
    linked_image_count: int = 0
    attachments: tuple[Attachment, ...] = ()
    defects: dict[str, int] = field(default_factory=dict)
    headers_only: bool = False

    @property
    def html_only(self) -> bool:
        return self.has_html_part and not self.has_plain_part


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SPACES = re.compile(r"[ \t]+")


class _Defects:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, kind: str, count: int = 1) -> None:
        assert kind in DEFECT_KINDS, kind
        if count:
            self.counts[kind] = self.counts.get(kind, 0) + count


def parse_message(data: bytes) -> ParsedMessage:
    """Parse raw message bytes; never raises for malformed input."""
    defects = _Defects()
    if b"\x00" in data:
        defects.add("nul_byte", data.count(b"\x00"))
        data = data.replace(b"\x00", b" ")
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    if msg.defects:
        defects.add("mime_defect", len(msg.defects))

    from_ = _first_address(msg, "From", defects, check_from=True)
    body = _read_body(msg, defects)
    return ParsedMessage(
        subject=_header_text(msg, "Subject", defects),
        from_=from_,
        reply_to=_first_address(msg, "Reply-To", defects),
        return_path=_first_address(msg, "Return-Path", defects),
        recipients=_addresses(msg, ("To", "Cc"), defects),
        message_id=_header_text(msg, "Message-ID", defects).strip(),
        in_reply_to=_header_text(msg, "In-Reply-To", defects).strip(),
        references=tuple(_header_text(msg, "References", defects).split()),
        date=_date(msg, defects),
        x_mailer=_header_text(msg, "X-Mailer", defects),
        defects=defects.counts,
        **body,
    )


def parse_text_record(subject: str, body: str) -> ParsedMessage:
    """A text-only record (subject and body, no headers) as a ParsedMessage."""
    views = {"visible_text": _clean(body), "hidden_text": ""}
    return ParsedMessage(
        subject=_clean(subject),
        has_plain_part=True,
        urls=extract_urls(body, ()),
        headers_only=False,
        **views,
    )


def _clean(text: str) -> str:
    return _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()


def _header_text(msg: Message, name: str, defects: _Defects) -> str:
    raw = msg.get(name)
    if raw is None:
        return ""
    try:
        text = str(make_header(decode_header(str(raw))))
    except Exception:  # noqa: BLE001 - any decoding failure is a defect, not an error
        defects.add("header_defect")
        text = str(raw)
    unfolded = re.sub(r"\r?\n[ \t]", " ", text)
    if _CONTROL.search(unfolded):
        defects.add("control_char")
    return _clean(unfolded)


def _addresses(msg: Message, names: tuple[str, ...], defects: _Defects) -> tuple[Address, ...]:
    values = [_header_text(msg, name, defects) for name in names if msg.get(name) is not None]
    pairs = getaddresses(values)
    return tuple(Address(_clean(n), a.strip().lower()) for n, a in pairs if a)


def _first_address(
    msg: Message, name: str, defects: _Defects, check_from: bool = False
) -> Address | None:
    if msg.get(name) is None:
        if check_from:
            defects.add("invalid_from")
        return None
    value = _header_text(msg, name, defects)
    pairs = [(n, a) for n, a in getaddresses([value]) if a]
    if not pairs:
        if check_from:
            defects.add("invalid_from")
        return None
    display, addr = pairs[0]
    if check_from and (len(pairs) > 1 or addr.count("@") != 1):
        defects.add("invalid_from")
    if "@" in display:
        defects.add("display_name_address")
    return Address(_clean(display), addr.strip().lower())


def _date(msg: Message, defects: _Defects) -> datetime | None:
    raw = msg.get("Date")
    if raw is None:
        return None
    try:
        when = parsedate_to_datetime(str(raw))
    except (TypeError, ValueError, IndexError):
        defects.add("header_defect")
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when


def _read_body(msg: Message, defects: _Defects) -> dict:
    plain: list[str] = []
    visible_html: list[str] = []
    hidden: list[str] = []
    links: list[tuple[str, str]] = []
    attachments: list[Attachment] = []
    images = linked_images = 0
    has_plain = has_html = False

    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        filename = part.get_filename()
        if filename or part.get_content_disposition() == "attachment":
            payload = part.get_payload(decode=True) or b""
            attachments.append(Attachment(_clean(str(filename or "")), ctype, len(payload)))
            continue
        if ctype == "text/plain":
            has_plain = True
            plain.append(_part_text(part, defects))
        elif ctype == "text/html":
            has_html = True
            views = html_to_views(_part_text(part, defects))
            visible_html.append(views.visible)
            hidden.append(views.hidden)
            links.extend(views.links)
            images += views.image_count
            linked_images += views.linked_image_count
        elif ctype.startswith("image/"):
            images += 1

    visible = "\n".join(plain) if plain else "\n".join(visible_html)
    return {
        "visible_text": _clean(visible),
        "hidden_text": _clean(" ".join(hidden)),
        "has_plain_part": has_plain,
        "has_html_part": has_html,
        "urls": extract_urls(" ".join(plain + visible_html), links),
        "image_count": images,
        "linked_image_count": linked_images,
        "attachments": tuple(attachments),
    }


def _part_text(part: Message, defects: _Defects) -> str:
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset)
    except LookupError:
        defects.add("unknown_charset")
    except UnicodeDecodeError:
        defects.add("decode_error")
    return payload.decode("utf-8", errors="replace")
