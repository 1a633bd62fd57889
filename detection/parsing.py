"""Raw RFC 5322 bytes to one normalised `ParsedMessage`.

Contract: `parse_message(data: bytes) -> ParsedMessage` never raises. Whatever was
wrong is counted in `ParsedMessage.defects` (keys from `DEFECT_KINDS`) and parsing
goes on with what could be read; if the structured parse itself fails, the whole
message is read as plain text instead (`parse_fallback`).

One rule for every path (training, the server, batch rescoring), for the message and
for every MIME part alike:

- the header block ends where the email package's feed parser would end it, and is
  parsed from bytes with the compat32 policy (which accepts what the strict policy
  rejects); every field is capped in size and number first (`ParseLimits`);
- header values are decoded here, never by the policy: 8-bit bytes as UTF-8,
  RFC 2047 encoded words after addresses have been split out, so an encoded word can
  never add an address or a header; CR, LF and other controls become spaces;
- MIME bodies are split on their boundary lines here, bounded in depth, part count
  and time, and each part is decoded exactly once, by its declared transfer encoding;
- charsets fall back declared -> known alias -> UTF-8 -> Latin-1, and every
  replacement is counted.

Text fields, an attachment's content type and file name among them, never contain
CR, LF, NUL or any other control character. Zero-width and bidi control characters,
Unicode tag characters (U+E0000-U+E007F) and the variation selectors supplement
(U+E0100-U+E01EF) are stripped from the text (and counted in `invisible_char_count`);
a zero-width joiner inside an emoji sequence, a joiner in a script that needs it and
the tag characters of an emoji subdivision flag are kept and not counted.

The sender: a message with no From, with two or more From fields, with a From that is
not exactly one well-formed address, or whose address has a domain literal
(`ceo@[bank.example.com]`, not a domain that can be compared) gets `invalid_from` and
an address of "" (display name of the first From kept), so it is attributed to no one.
"""

from __future__ import annotations

import binascii
import codecs
import logging
import re
import time
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.quoprimime import header_decode
from email.utils import getaddresses, parsedate_to_datetime
from urllib.parse import unquote_to_bytes

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
    "parse_fallback",  # the structured parse failed; the message was read as plain text
)
PARSE_KINDS = ("rfc822", "text")


@dataclass(frozen=True)
class ParseLimits:
    """How much of one message is read. Past a limit, reading stops and the message is
    scored on what was read, with a `limit_hit` defect."""

    max_message_bytes: int = 10_000_000  # bytes of the raw message read at all
    max_header_fields: int = 300  # header fields per header block
    max_header_field_bytes: int = 16_384  # bytes kept of one header field
    max_addresses: int = 200  # recipients kept (To and Cc together)
    max_params: int = 50  # parameters read from one Content-Type or Content-Disposition
    max_parts: int = 200  # MIME parts walked, containers included
    max_depth: int = 20  # nesting of multiparts and attached messages
    max_part_text_bytes: int = 1_000_000  # decoded bytes kept of one text part
    max_text_chars: int = 50_000  # characters kept of visible (and of hidden) text
    max_urls: int = 500  # URLs kept
    # a backstop only: the count and size limits above bound the work deterministically,
    # so that a busy machine does not change what is read (and so a message's features)
    time_budget_s: float = 2.0  # wall time after which no further part is read

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(
                    f"ParseLimits.{spec.name} must be a positive number, got {value!r}"
                )


DEFAULT_LIMITS = ParseLimits()


@dataclass(frozen=True)
class Address:
    """One mailbox: the display name as shown and the address, lower-cased.

    `address` is "" when the header held no single well-formed address; such a
    sender has no domain and is attributed to no one.
    """

    display_name: str
    address: str

    @property
    def domain(self) -> str:
        """The domain after the "@"; "" for none or a domain literal (`[192.0.2.1]`)."""
        domain = self.address.rpartition("@")[2]
        return "" if domain.startswith("[") else domain


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int  # decoded bytes (estimated from the base64 length for base64 parts)
    inline: bool = False  # Content-Disposition inline (an embedded image, say)
    is_archive: bool = False  # zip, rar, 7z, gzip, ... by type, file name or magic bytes

    @property
    def is_document(self) -> bool:
        """A PDF or office document (the usual carrier of a lure link or macro)."""
        name = self.filename.lower()
        return self.content_type in _DOCUMENT_TYPES or name.endswith(_DOCUMENT_EXTENSIONS)


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
    invisible_char_count: int = 0  # zero-width / bidi characters stripped from the text
    raw_headers: tuple[tuple[str, str], ...] = ()  # (name, undecoded value), one line each

    @property
    def html_only(self) -> bool:
        return self.has_html_part and not self.has_plain_part


# text cleaning
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_HEADER_CONTROL = re.compile(r"[\x01-\x08\x0a-\x1f\x7f]")
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb"
    "\U000e0000-\U000e007f\U000e0100-\U000e01ef]"
)
_JOINERS = "\u200c\u200d"
_BLACK_FLAG = "\U0001f3f4"  # the base of a subdivision flag: U+1F3F4, tag letters, U+E007F
_MAX_FLAG_TAGS = 8

# headers
HEADER_BLOCK = re.compile(rb"(?:(?:[\x21-\x39\x3b-\x7e]*:|[ \t])[^\r\n]*(?:\r\n|\n|\r(?!\n)|\Z))*")
_HEADER_FIELD = re.compile(
    rb"(?:^|(?<=[\r\n]))[^ \t\r\n][^\r\n]*(?:\r\n|\n|\r)?(?:[ \t][^\r\n]*(?:\r\n|\n|\r)?)*"
)
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
# Fields that decide how a message or part is read, or who sent it: the first of each
# is kept even past the header-field cap.
_KEPT_PAST_CAP = frozenset(
    {
        b"content-type",
        b"content-transfer-encoding",
        b"content-disposition",
        b"mime-version",
        b"from",
        b"sender",
        b"reply-to",
        b"subject",
    }
)
_FOLD = re.compile(r"\r?\n(?=[ \t])|\r(?=[ \t])")
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,75})\?([bBqQ])\?([^?]*)\?=")
_MESSAGE_ID = re.compile(
    r"<[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@"
    r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*|\[[!-Z^-~]*\])>"
)
_ADDR_SPEC = re.compile(
    r"[^\s@<>()\[\],;:\\\x00-\x1f\x7f-\x9f]+@"
    r"(?:(?:[\w-]+\.)*[\w-]+|\[[^\]\s\x00-\x1f\x7f-\x9f]+\])"
)
_QUOTED_OR_COMMENT = re.compile(r'"(?:[^"\\]|\\.)*"|\((?:[^()\\]|\\.)*\)')
_ANGLE = re.compile(r"<([^<>]*)>")
_GROUP = re.compile(r"[^:]*:[^;]*;\s*")
_PARAM = re.compile(r';\s*([^\s=;"]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"?|[^;]*))?')
_SECTION = re.compile(r"(.+?)\*(\d+)(\*?)|(.+?)(\*)")

# bodies
_LOOKS_HTML = re.compile(rb"<(?:html|body|div|p|a\s|table|br|span|img|font)\b", re.IGNORECASE)
_META_CHARSET = re.compile(rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?([\w.:-]{1,40})", re.IGNORECASE)
_GUESS_BOUNDARY = re.compile(rb"^--([^\s]{1,200}?)(?:--)?[ \t]*\r?\n(?=[\w-]+:)", re.MULTILINE)
_BASE64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_WHITESPACE_BYTES = b" \t\r\n="
_TEXT_TYPES = ("text/plain", "text/html")

# charsets
_CHARSET_ALIASES = {
    "windows-874": "cp874", "x-windows-874": "cp874", "x-sjis": "shift_jis",
    "shift-jis": "shift_jis", "iso-8859-8-i": "iso8859-8", "iso-8859-6-i": "iso8859-6",
    "iso-8859-8-e": "iso8859-8", "x-mac-roman": "mac_roman", "macintosh": "mac_roman",
    "ks_c_5601": "cp949", "ks_c_5601-1987": "cp949", "x-gbk": "gb18030", "gbk": "gb18030",
    "gb2312": "gb18030", "x-euc-jp": "euc_jp", "cp-850": "cp850", "ansi": "cp1252",
    "iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "iso8859-1": "cp1252",
    "iso_8859-1": "cp1252", "windows-1252": "cp1252", "x-user-defined": "cp1252",
    "utf8": "utf-8", "unicode-1-1-utf-8": "utf-8", "x-unicode20utf8": "utf-8",
}  # fmt: skip
_ASCII_LABELS = frozenset(("ascii", "us-ascii", "ansi_x3.4-1968", "646", "us"))

# attachments
_ARCHIVE_TYPES = frozenset(
    (
        "application/zip", "application/x-zip-compressed", "application/x-zip",
        "application/x-rar-compressed", "application/vnd.rar", "application/x-rar",
        "application/x-7z-compressed", "application/gzip", "application/x-gzip",
        "application/x-tar", "application/x-bzip2", "application/x-xz",
        "application/x-compressed", "application/x-ace-compressed",
        "application/vnd.ms-cab-compressed", "application/x-iso9660-image",
        "application/x-lzh-compressed", "application/x-arj",
    )
)  # fmt: skip
_ARCHIVE_EXTENSIONS = (
    ".zip", ".rar", ".7z", ".gz", ".tgz", ".tar", ".bz2", ".xz", ".ace", ".arj", ".cab",
    ".lzh", ".z", ".iso", ".img", ".r00", ".zipx",
)  # fmt: skip
_DOCUMENT_TYPES = frozenset(
    (
        "application/pdf", "application/msword", "application/rtf", "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint", "application/vnd.oasis.opendocument.text",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    )
)  # fmt: skip
_DOCUMENT_EXTENSIONS = (
    ".pdf", ".doc", ".docx", ".docm", ".xls", ".xlsx", ".xlsm", ".ppt", ".pptx", ".rtf", ".odt",
    ".ods",
)  # fmt: skip
_ZIP_DOCUMENTS = (".docx", ".xlsx", ".pptx", ".docm", ".xlsm", ".pptm", ".odt", ".ods", ".jar")
_ARCHIVE_MAGIC = (
    (0, b"PK\x03\x04"), (0, b"Rar!\x1a\x07"), (0, b"7z\xbc\xaf\x27\x1c"), (0, b"\x1f\x8b"),
    (0, b"BZh"), (0, b"\xfd7zXZ\x00"), (0, b"MSCF"), (7, b"**ACE**"), (257, b"ustar"),
)  # fmt: skip


class _Defects:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, kind: str, count: int = 1) -> None:
        assert kind in DEFECT_KINDS, kind
        if count:
            self.counts[kind] = self.counts.get(kind, 0) + count


class _Cleaner:
    """Turns decoded text into one safe line, counting what it removed."""

    def __init__(self, defects: _Defects) -> None:
        self.defects = defects
        self.invisible = 0

    def text(self, text: str, header: bool = False, count: bool = True) -> str:
        """`text` as one line; with `count`, NULs, controls (in a header) and invisible
        characters are recorded."""
        if count and "\x00" in text:
            self.defects.add("nul_byte", text.count("\x00"))
        if count and header and _HEADER_CONTROL.search(text):
            self.defects.add("control_char")
        if _INVISIBLE.search(text):
            text = _INVISIBLE.sub(self._invisible if count else _drop_invisible, text)
        return " ".join(_CONTROL.sub(" ", text).split())

    def _invisible(self, match: re.Match) -> str:
        kept = _drop_invisible(match)
        self.invisible += not kept
        return kept


def _drop_invisible(match: re.Match) -> str:
    char = match.group(0)
    if char in _JOINERS:
        return char if _joins(match.string, match.start()) else ""
    if "\U000e0020" <= char <= "\U000e007f":
        return char if _in_flag(match.string, match.start()) else ""
    return ""


def _in_flag(text: str, index: int) -> bool:
    """A tag character that follows U+1F3F4 within a flag's run of tag characters."""
    for back in range(index - 1, max(-1, index - 1 - _MAX_FLAG_TAGS), -1):
        if text[back] == _BLACK_FLAG:
            return True
        if not "\U000e0020" <= text[back] <= "\U000e007e":
            return False
    return False


def _joins(text: str, index: int) -> bool:
    """A ZWJ/ZWNJ that belongs: inside an emoji sequence, or between letters of a
    script that uses joiners (Arabic, Indic, ...)."""
    before = text[index - 1] if index > 0 else ""
    after = text[index + 1] if index + 1 < len(text) else ""
    if text[index] == "\u200d" and (_is_emoji(before) or _is_emoji(after)):
        return True
    return bool(before) and ord(before) >= 0x0590 and before.isalpha()


def _is_emoji(char: str) -> bool:
    if not char:
        return False
    code = ord(char)
    return (
        0x1F000 <= code <= 0x1FAFF
        or 0x2600 <= code <= 0x27BF
        or 0x2B00 <= code <= 0x2BFF
        or code == 0xFE0F
    )


def _keep_head_and_tail(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    head = limit * 4 // 5
    return f"{text[:head]} ... {text[len(text) - (limit - head) :]}", True


# charsets
def _codec(label: str) -> str | None:
    """The Python codec for a declared charset label, or None if there is none."""
    label = label.strip().strip("\"'").strip().lower()
    label = _CHARSET_ALIASES.get(label, label)
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None


def _decode(data: bytes, charset: str | None, defects: _Defects) -> str:
    """Bytes to text by the fallback chain; never raises."""
    if charset and charset.strip().strip("\"'").lower() not in _ASCII_LABELS:
        codec = _codec(charset)
        if codec is None:
            defects.add("unknown_charset")
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                return data.decode("latin-1")
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            defects.add("decode_error")
            return data.decode(codec, "replace")
        except Exception:  # noqa: BLE001 - a broken codec is a decode error, not a crash
            defects.add("decode_error")
            return data.decode("utf-8", "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        defects.add("decode_error")
        return data.decode("utf-8", "replace")


# headers
class _Headers:
    """One header block: values by lower-case name, undecoded (8-bit bytes as UTF-8)."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items
        self.by_name: dict[str, list[str]] = {}
        for name, value in items:
            self.by_name.setdefault(name.strip().lower(), []).append(value)

    def get(self, name: str) -> str | None:
        values = self.by_name.get(name)
        return values[0] if values else None


def split_head(data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(mbox ``From `` line, header block, blank line, body), split as feedparser does.

    The one rule for where headers end, shared with detection/sanitize.py: the blank
    line is b"" when a line that is neither a header field nor a continuation ended
    the header block; that line and the rest are the body.
    """
    start = 0
    if data.startswith(b"From "):
        start = data.find(b"\n") + 1 or len(data)
    end = HEADER_BLOCK.match(data, start).end()
    rest = data[end:]
    for blank in (b"\r\n", b"\n", b"\r"):
        if rest.startswith(blank):
            return data[:start], data[start:end], blank, rest[len(blank) :]
    return data[:start], data[start:end], b"", rest


def _split_head(data: bytes) -> tuple[bytes, bytes, bool]:
    """(header block, body, whether a blank line separated them)."""
    _, head, blank, body = split_head(data)
    return head, body, bool(blank) or not body


def _read_headers(block: bytes, limits: ParseLimits, defects: _Defects) -> _Headers:
    """Cap the fields, then parse them with compat32 from bytes. Past the cap only the
    first of each structural field is kept, so that padding a header block cannot
    turn an HTML body into plain text or drop the sender."""
    kept = []
    past_cap = set()
    for count, match in enumerate(_HEADER_FIELD.finditer(block)):
        raw = match.group(0)
        if count >= limits.max_header_fields:
            if count == limits.max_header_fields:
                defects.add("limit_hit")
            name = raw.partition(b":")[0].strip().lower()
            if name not in _KEPT_PAST_CAP or name in past_cap:
                continue
            past_cap.add(name)
        if len(raw) > limits.max_header_field_bytes:
            defects.add("limit_hit")
            raw = raw[: limits.max_header_field_bytes]
        kept.append(raw.rstrip(b"\r\n") + b"\n")
    message = BytesHeaderParser(policy=compat32).parsebytes(b"".join(kept) + b"\n")
    if message.defects:
        defects.add("mime_defect", len(message.defects))
    items = []
    for name, value in message.raw_items():
        raw = _FOLD.sub("", value).encode("ascii", "surrogateescape")
        items.append((name, _decode(raw, None, defects) if not raw.isascii() else raw.decode()))
    return _Headers(items)


def _decode_words(value: str, defects: _Defects) -> str:
    """Decode RFC 2047 encoded words; whitespace between two of them is dropped and
    adjacent words in one charset are joined before decoding (split characters)."""
    if "=?" not in value:
        return value
    pieces: list[str] = []
    pending: list[bytes] = []
    pending_charset = ""
    position = 0
    for match in _ENCODED_WORD.finditer(value):
        between = value[position : match.start()]
        if between.strip() or not pending:
            pieces.append(_flush(pending, pending_charset, defects) + between)
            pending = []
        charset = match.group(1).partition("*")[0]
        if pending and charset.lower() != pending_charset.lower():
            pieces.append(_flush(pending, pending_charset, defects))
            pending = []
        pending.append(_word_bytes(match.group(2), match.group(3), defects))
        pending_charset = charset
        position = match.end()
    pieces.append(_flush(pending, pending_charset, defects) + value[position:])
    return "".join(pieces)


def _word_bytes(encoding: str, text: str, defects: _Defects) -> bytes:
    if encoding in "qQ":
        return header_decode(text).encode("latin-1", "replace")
    return _base64(text.encode("ascii", "replace"), defects)


def _flush(pending: list[bytes], charset: str, defects: _Defects) -> str:
    return _decode(b"".join(pending), charset, defects) if pending else ""


def _text_header(headers: _Headers, name: str, cleaner: _Cleaner) -> str:
    value = headers.get(name)
    if value is None:
        return ""
    return cleaner.text(_decode_words(value, cleaner.defects), header=True)


def _raw_header(headers: _Headers, name: str, cleaner: _Cleaner) -> str:
    value = headers.get(name)
    return "" if value is None else cleaner.text(value, header=True)


def _message_id(headers: _Headers, name: str, cleaner: _Cleaner) -> str:
    value = _raw_header(headers, name, cleaner)
    if value and not _MESSAGE_ID.fullmatch(value):
        cleaner.defects.add("header_defect")
    return value


def _date(headers: _Headers, defects: _Defects) -> datetime | None:
    raw = headers.get("date")
    if raw is None:
        return None
    try:
        when = parsedate_to_datetime(" ".join(raw[:200].split()))
    except Exception:  # noqa: BLE001 - every malformed date is a defect, none an error
        when = None
    if when is None:
        defects.add("header_defect")
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when


def _mailboxes(value: str, cleaner: _Cleaner) -> list[tuple[str, str]]:
    """(display name, address) pairs; "" for an address that is not well formed."""
    pairs = []
    for name, address in getaddresses([" ".join(value.split())]):
        address = address.strip().lower()
        if not address:
            continue
        if not _ADDR_SPEC.fullmatch(address):
            cleaner.defects.add("header_defect")
            address = ""
        pairs.append((cleaner.text(_decode_words(name, cleaner.defects), header=True), address))
    if not pairs and value.strip() not in ("", "<>") and not _GROUP.fullmatch(value.strip()):
        cleaner.defects.add("header_defect")
    return pairs


def _angle_sender(value: str, cleaner: _Cleaner) -> tuple[str, str] | None:
    """(display name, address) when From holds exactly one <angle address>.

    What precedes the angle address is the display name, commas included, as mail
    clients show it ("Doe, Jane <jane@example.com>"); an unquoted comma or "@" there
    is a header defect. Returns None when there is not exactly one angle address.
    """
    bare = _QUOTED_OR_COMMENT.sub("", value)
    angles = _ANGLE.findall(bare)
    if len(angles) != 1:
        return None
    before = bare[: bare.rfind("<")]
    if "," in before or "@" in before:
        cleaner.defects.add("header_defect")
    display = value[: value.rfind("<")].strip()
    if len(display) > 1 and display[0] == display[-1] == '"':
        display = re.sub(r"\\(.)", r"\1", display[1:-1])
    display = cleaner.text(_decode_words(display, cleaner.defects), header=True)
    address = angles[0].strip().lower()
    if not _ADDR_SPEC.fullmatch(address):
        address = ""
    return display, address


def _first_address(headers: _Headers, name: str, cleaner: _Cleaner) -> Address | None:
    value = headers.get(name)
    if value is None:
        return None
    pairs = _mailboxes(value, cleaner)
    if not pairs:
        return None
    display, address = pairs[0]
    if "@" in display:
        cleaner.defects.add("display_name_address")
    return Address(display, address) if address else None


def _sender(headers: _Headers, cleaner: _Cleaner) -> Address | None:
    """The From mailbox; its address is "" unless the message has exactly one From
    field, holding one unambiguous address on a domain (not a domain literal)."""
    values = headers.by_name.get("from", [])
    if not values:
        cleaner.defects.add("invalid_from")
        return None
    value = values[0]
    value = " ".join(value.split())
    angle = _angle_sender(value, cleaner)
    if angle is not None:
        display, address = angle
    else:
        pairs = _mailboxes(value, cleaner)
        if not pairs:
            cleaner.defects.add("invalid_from")
            return Address(cleaner.text(_decode_words(value, cleaner.defects), header=True), "")
        display, address = pairs[0]
        if len(pairs) > 1 or _QUOTED_OR_COMMENT.sub("", value).count("@") != 1:
            address = ""
    if "@" in display:
        cleaner.defects.add("display_name_address")
    if len(values) > 1 or address.rpartition("@")[2].startswith("["):
        address = ""  # two senders, or a domain literal: no domain to attribute it to
    if not address:
        cleaner.defects.add("invalid_from")
    return Address(display, address)


def _recipients(headers: _Headers, cleaner: _Cleaner, limits: ParseLimits) -> tuple[Address, ...]:
    found = []
    for name in ("to", "cc"):
        for value in headers.by_name.get(name, ()):
            found.extend(Address(n, a) for n, a in _mailboxes(value, cleaner) if a)
    if len(found) > limits.max_addresses:
        cleaner.defects.add("limit_hit")
    return tuple(found[: limits.max_addresses])


# MIME parameters
def _params(value: str, limits: ParseLimits, defects: _Defects) -> tuple[str, dict[str, str]]:
    """(lower-case main value, parameters) of a Content-Type-like header.

    RFC 2231 continuations and charset-encoded values are joined and decoded; a
    parameter without a value (`name*`) is a header defect.
    """
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    sections: dict[str, list[tuple[int, bool, str]]] = {}
    for count, match in enumerate(_PARAM.finditer(";" + rest)):
        if count >= limits.max_params:
            defects.add("limit_hit")
            break
        name, raw = match.group(1).lower(), match.group(2)
        if raw is None:
            defects.add("header_defect")
            continue
        raw = raw.strip()
        if raw.startswith('"'):
            raw = re.sub(
                r"\\(.)", r"\1", raw[1:-1] if raw.endswith('"') and len(raw) > 1 else raw[1:]
            )
        section = _SECTION.fullmatch(name)
        if section is None:
            params.setdefault(name, raw)
        elif section.group(1):
            sections.setdefault(section.group(1), []).append(
                (int(section.group(2)[:6]), bool(section.group(3)), raw)
            )
        else:
            sections.setdefault(section.group(4), []).append((0, True, raw))
    for name, parts in sections.items():
        params[name] = _rfc2231(sorted(parts), defects)
    return main.strip().lower(), params


def _rfc2231(parts: list[tuple[int, bool, str]], defects: _Defects) -> str:
    charset = ""
    data = b""
    for index, (_, encoded, raw) in enumerate(parts):
        if encoded:
            if index == 0 and raw.count("'") >= 2:
                charset, _, raw = raw.split("'", 2)
            data += unquote_to_bytes(raw)
        else:
            data += raw.encode("utf-8", "replace")
    return _decode(data, charset or None, defects)


# transfer encodings
def _base64(data: bytes, defects: _Defects) -> bytes:
    """Lenient base64: junk dropped, padding repaired; any repair is a decode error."""
    cleaned = data.translate(None, b" \t\r\n")
    if _BASE64_JUNK.search(cleaned.rstrip(b"=")):
        defects.add("decode_error")
    cleaned = _BASE64_JUNK.sub(b"", cleaned)
    remainder = len(cleaned) % 4
    if remainder == 1:
        defects.add("decode_error")
        cleaned = cleaned[:-1]
    elif remainder:
        cleaned += b"=" * (4 - remainder)
    try:
        return binascii.a2b_base64(cleaned)
    except (binascii.Error, ValueError):
        defects.add("decode_error")
        return b""


def _transfer_decode(body: bytes, encoding: str, defects: _Defects) -> bytes:
    if encoding == "base64":
        return _base64(body, defects)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(body)
    return body


def _transfer_encoding(headers: _Headers, defects: _Defects) -> str:
    value = (headers.get("content-transfer-encoding") or "").strip().lower()
    if value.startswith("quoted"):
        return "quoted-printable"
    if value.startswith("base64"):
        return "base64"
    if value and value.split()[0] not in ("7bit", "8bit", "binary", "7-bit", "8-bit"):
        defects.add("header_defect")
    return ""


def _decoded_size(body: bytes, encoding: str, defects: _Defects) -> int:
    if encoding == "base64":
        return len(body.translate(None, _WHITESPACE_BYTES)) * 3 // 4
    if encoding == "quoted-printable":
        return len(binascii.a2b_qp(body))
    return len(body)


def _is_archive(content_type: str, filename: str, head: bytes) -> bool:
    name = filename.lower()
    if content_type in _ARCHIVE_TYPES or name.endswith(_ARCHIVE_EXTENSIONS):
        return True
    if name.endswith(_ZIP_DOCUMENTS):
        return False
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _ARCHIVE_MAGIC)


# the body walk
class _Reader:
    """Walks one message's MIME tree, collecting text, links and attachments."""

    def __init__(self, limits: ParseLimits, defects: _Defects, cleaner: _Cleaner) -> None:
        self.limits = limits
        self.defects = defects
        self.cleaner = cleaner
        self.deadline = time.perf_counter() + limits.time_budget_s
        self.parts = 0
        self.stopped = False
        self.visible: list[tuple[str, bool]] = []  # (text, from HTML)
        self.url_text: list[str] = []
        self.hidden: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.attachments: list[Attachment] = []
        self.images = 0
        self.linked_images = 0
        self.has_plain = False
        self.has_html = False

    def stop(self) -> None:
        if not self.stopped:
            self.defects.add("limit_hit")
            self.stopped = True

    def walk(self, headers: _Headers, body: bytes, depth: int, default_type: str) -> None:
        """Read one entity (a message or a part) and everything inside it."""
        self.parts += 1
        if self.parts > self.limits.max_parts or time.perf_counter() > self.deadline:
            self.stop()
        if self.stopped:
            return
        content_type, params = self._content_type(headers, default_type)
        encoding = _transfer_encoding(headers, self.defects)

        if content_type.startswith("multipart/"):
            self._multipart(content_type, params, body, depth, encoding)
        elif content_type == "message/rfc822" and not self._filename(headers, params):
            if depth >= self.limits.max_depth:
                self.stop()
                return
            inner = _transfer_decode(body, encoding, self.defects)
            block, inner_body, _ = _split_head(inner)
            inner_headers = _read_headers(block, self.limits, self.defects)
            self.walk(inner_headers, inner_body, depth + 1, "text/plain")
        else:
            self._leaf(headers, content_type, params, body, encoding)

    def _content_type(self, headers: _Headers, default_type: str) -> tuple[str, dict[str, str]]:
        value = headers.get("content-type")
        if value is None:
            return default_type, {}
        content_type, params = _params(value, self.limits, self.defects)
        if _CONTROL.search(content_type):
            self.cleaner.text(content_type, header=True)  # counts the NULs and controls
            self.defects.add("header_defect")
            content_type = _CONTROL.sub("", content_type)
        if content_type.count("/") != 1 or " " in content_type:
            self.defects.add("header_defect")
            content_type = "text/plain"
        return content_type, params

    def _filename(self, headers: _Headers, params: dict[str, str]) -> str:
        disposition = headers.get("content-disposition") or ""
        _, disposition_params = _params(disposition, self.limits, self.defects)
        name = disposition_params.get("filename") or params.get("name") or ""
        return self.cleaner.text(_decode_words(name, self.defects), header=True)

    def _multipart(
        self, content_type: str, params: dict[str, str], body: bytes, depth: int, encoding: str
    ) -> None:
        if depth >= self.limits.max_depth:
            self.stop()
            return
        parts = _split_multipart(body, params.get("boundary", ""))
        if parts is None:
            self.defects.add("boundary_missing")
            guessed = _GUESS_BOUNDARY.search(body)
            parts = _split_multipart(body, guessed.group(1).decode("latin-1")) if guessed else None
        if parts is None:
            looks_html = _LOOKS_HTML.search(body[:20_000])
            self._text(body, "text/html" if looks_html else "text/plain", None, encoding)
            return

        child_type = "message/rfc822" if content_type == "multipart/digest" else "text/plain"
        start = len(self.visible)
        choices = []
        for part in parts:
            if self.stopped:
                break
            block, part_body, _ = _split_head(part)
            part_headers = _read_headers(block, self.limits, self.defects)
            before = len(self.visible)
            self.walk(part_headers, part_body, depth + 1, child_type)
            choices.append(self.visible[before:])
        if content_type == "multipart/alternative" and len(choices) > 1:
            # a client shows one alternative: the last HTML one, else the last with text
            shown = [c for c in choices if any(html for _, html in c)] or [c for c in choices if c]
            self.visible[start:] = shown[-1] if shown else []

    def _leaf(
        self,
        headers: _Headers,
        content_type: str,
        params: dict[str, str],
        body: bytes,
        encoding: str,
    ) -> None:
        disposition = (headers.get("content-disposition") or "").partition(";")[0].strip().lower()
        filename = self._filename(headers, params)
        if content_type in _TEXT_TYPES and not filename and disposition != "attachment":
            self._text(body, content_type, params.get("charset"), encoding)
            return

        head = _transfer_decode(body[:512], encoding, _Defects())
        self.attachments.append(
            Attachment(
                filename=filename,
                content_type=content_type,
                size=_decoded_size(body, encoding, self.defects),
                inline=disposition == "inline",
                is_archive=_is_archive(content_type, filename, head),
            )
        )
        if content_type.startswith("image/") and headers.get("content-id") is None:
            self.images += 1  # an image a client shows by itself (cid: images count in HTML)

    def _text(self, body: bytes, content_type: str, charset: str | None, encoding: str) -> None:
        cap = self.limits.max_part_text_bytes
        if len(body) > 2 * cap:
            self.defects.add("limit_hit")
            body = body[: 2 * cap]
        data = _transfer_decode(body, encoding, self.defects)
        if len(data) > cap:
            self.defects.add("limit_hit")
            data = data[:cap]
        if content_type == "text/html" and not charset:
            meta = _META_CHARSET.search(data[:4096])
            charset = meta.group(1).decode("ascii") if meta else None
        text = _decode(data, charset, self.defects)

        if content_type == "text/plain":
            self.has_plain = True
            self.visible.append((text, False))
            self.url_text.append(text)
            return
        self.has_html = True
        views = html_to_views(text.replace("\x00", " "))
        self.defects.add("nul_byte", text.count("\x00"))
        if views.truncated:
            self.defects.add("limit_hit")
        self.visible.append((views.visible, True))
        self.url_text.append(views.visible)
        self.hidden.append(views.hidden)
        self.links.extend(views.links)
        self.images += views.image_count
        self.linked_images += views.linked_image_count


def part_spans(body: bytes, boundary: str) -> list[tuple[int, int]]:
    """(start, end) of each part between boundary lines: the one rule for where the
    parts of a multipart body are, shared with detection/sanitize.py. Empty when no
    boundary line is present."""
    if not boundary:
        return []
    marker = b"--" + boundary.encode("utf-8", "replace")
    delimiter = re.compile(re.escape(marker) + rb"(--)?[ \t]*\r?$", re.MULTILINE)
    spans = []
    start = None
    for match in _delimiter_lines(body, marker, delimiter):
        if start is not None:
            end = match.start()
            end -= 2 if body[end - 2 : end] == b"\r\n" else 1 if body[end - 1 : end] == b"\n" else 0
            spans.append((start, max(start, end)))
        if match.group(1):
            start = None
            break
        newline = body.find(b"\n", match.end())
        start = len(body) if newline < 0 else newline + 1
    if start is not None:
        spans.append((start, len(body)))
    return spans


def _delimiter_lines(body: bytes, marker: bytes, delimiter: re.Pattern):
    """The matches of `delimiter` that start a line, in order: each is found from an
    occurrence of `marker` (a literal search, where a pattern anchored at every line
    start costs a step per byte of a large attachment)."""
    at = body.find(marker)
    while at >= 0:
        match = delimiter.match(body, at) if at == 0 or body[at - 1] == 0x0A else None
        if match is not None:
            yield match
            at = body.find(marker, max(match.end(), at + 1))
        else:
            at = body.find(marker, at + 1)


def _split_multipart(body: bytes, boundary: str) -> list[bytes] | None:
    """The parts between boundary lines, or None if no boundary line is present."""
    return [body[start:end] for start, end in part_spans(body, boundary)] or None


# entry points
def parse_message(data: bytes, limits: ParseLimits = DEFAULT_LIMITS) -> ParsedMessage:
    """Parse raw message bytes; never raises.

    A message past `limits.max_message_bytes` is read up to the limit; whatever
    could not be read is a `limit_hit` defect, never a reason to skip the message.
    If the structured parse fails, the bytes are read as plain text
    (`parse_fallback` defect).
    """
    try:
        return _parse(bytes(data), limits)
    except Exception as error:  # noqa: BLE001 - the contract is that parsing never raises
        logger.warning("structured parse failed (%s); reading as text", type(error).__name__)
        logger.debug("structured parse failure", exc_info=True)
    try:
        text = bytes(data[: limits.max_message_bytes]).decode("utf-8", "replace")
        parsed = parse_text_record("", text, limits)
        return _with_defect(parsed, "parse_fallback")
    except Exception:  # noqa: BLE001 - last resort: an empty result that says why
        logger.warning("text fallback failed; returning an empty result")
        return ParsedMessage(defects={"parse_fallback": 1})


def parse_text_record(
    subject: str, body: str, limits: ParseLimits = DEFAULT_LIMITS
) -> ParsedMessage:
    """A text-only record (subject and body, no headers) as a ParsedMessage."""
    defects = _Defects()
    cleaner = _Cleaner(defects)
    visible, truncated = _keep_head_and_tail(
        cleaner.text(body[: 4 * limits.max_text_chars]), limits.max_text_chars
    )
    if truncated or len(body) > 4 * limits.max_text_chars:
        defects.add("limit_hit")
    return ParsedMessage(
        subject=cleaner.text(subject, header=True),
        visible_text=visible,
        has_plain_part=True,
        urls=extract_urls(visible, (), limit=limits.max_urls),
        defects=defects.counts,
        invisible_char_count=cleaner.invisible,
    )


def parse_raw(data: bytes, kind: str, limits: ParseLimits = DEFAULT_LIMITS) -> ParsedMessage:
    """Parse one stored record of the given kind.

    kind "rfc822": raw message bytes (`parse_message`); kind "text": a text-only
    record whose first line is `Subject: ...` and whose rest is the body (the
    Enron-Spam layout), decoded as UTF-8 with a Latin-1 fallback.
    Raises ValueError for any other kind.
    """
    if kind == "rfc822":
        return parse_message(data, limits)
    if kind != "text":
        raise ValueError(f"kind must be one of {PARSE_KINDS}, got {kind!r}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    first, _, rest = text.partition("\n")
    if first.lower().startswith("subject:"):
        return parse_text_record(first[len("subject:") :], rest, limits)
    return parse_text_record("", text, limits)


def _with_defect(parsed: ParsedMessage, kind: str) -> ParsedMessage:
    counts = dict(parsed.defects)
    counts[kind] = counts.get(kind, 0) + 1
    return replace(parsed, defects=counts)


def _parse(data: bytes, limits: ParseLimits) -> ParsedMessage:
    defects = _Defects()
    cleaner = _Cleaner(defects)
    if len(data) > limits.max_message_bytes:
        defects.add("limit_hit")
        data = data[: limits.max_message_bytes]

    # headers
    block, body, separated = _split_head(data)
    if not separated:
        defects.add("mime_defect")
    headers = _read_headers(block, limits, defects)
    subject = _text_header(headers, "subject", cleaner)
    from_ = _sender(headers, cleaner)

    # body
    reader = _Reader(limits, defects, cleaner)
    reader.walk(headers, body, 0, "text/plain")
    visible = cleaner.text(" ".join(text for text, _ in reader.visible))
    visible, cut = _keep_head_and_tail(visible, limits.max_text_chars)
    hidden, cut_hidden = _keep_head_and_tail(
        cleaner.text(" ".join(reader.hidden)), limits.max_text_chars
    )
    if cut or cut_hidden:
        defects.add("limit_hit")
    links = [(href, cleaner.text(text, count=False)) for href, text in reader.links]
    url_text = cleaner.text(" ".join(reader.url_text), count=False)

    return ParsedMessage(
        subject=subject,
        from_=from_,
        reply_to=_first_address(headers, "reply-to", cleaner),
        return_path=_first_address(headers, "return-path", cleaner),
        recipients=_recipients(headers, cleaner, limits),
        message_id=_message_id(headers, "message-id", cleaner),
        in_reply_to=_raw_header(headers, "in-reply-to", cleaner),
        references=tuple(_raw_header(headers, "references", cleaner).split()),
        date=_date(headers, defects),
        x_mailer=_text_header(headers, "x-mailer", cleaner),
        visible_text=visible,
        hidden_text=hidden,
        has_plain_part=reader.has_plain,
        has_html_part=reader.has_html,
        urls=extract_urls(url_text, links, limit=limits.max_urls),
        image_count=reader.images,
        linked_image_count=reader.linked_images,
        attachments=tuple(reader.attachments),
        defects=defects.counts,
        invisible_char_count=cleaner.invisible,
        raw_headers=tuple(
            (cleaner.text(n, count=False), cleaner.text(v, count=False)[:2000])
            for n, v in headers.items[: limits.max_header_fields]
        ),
    )
