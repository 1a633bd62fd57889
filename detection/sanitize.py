"""Remove what the receiving side added to a message, before anything reads it.

Contract: `sanitize_message(data: bytes) -> (bytes, frozenset[str])` takes a raw
RFC 5322 message and returns the message as its sender wrote it, as nearly as can be
told, with the recipient addresses it found (lower-case; `parse_for_model` replaces
them again in the parsed, decoded text). `sanitize_with_recipients` returns the same
addresses as a tuple in header order, for the behavioural baselines, which store them
only as keyed hashes. `sanitize(data) -> bytes` is the same without the addresses.
Training, the server and batch rescoring all call it, identically, before parsing.
It never raises and it fails closed: when the walk through the MIME parts fails, the
headers are still cleaned and the recipients replaced in the raw bytes (logged at
WARNING); only if the header step itself fails does the input come back unchanged.

Each corpus arrived through one pipeline, and the receiving side's marks name the
corpus, not the attack; a model that saw them would learn where mail was collected.
The rules, in order:

1. **List From-munging is undone.** A list that rewrote ``From: Name via List
   <list@...>`` for DMARC and put the poster in ``Reply-To`` gets ``From: Name
   <poster@...>`` back. The new header is built with `email.utils.formataddr` from a
   display name with every control character turned into a space, so it can never
   add a line or a header.
2. **Receiver and pipeline headers are dropped** (`STRIPPED_HEADERS`,
   `STRIPPED_PREFIXES`): trace and delivery headers (Received, Delivered-To,
   X-Original-To, X-Delivered-To, X-Rcpt-To, Authentication-Results, ARC-*,
   Received-SPF), gateway and filter verdicts (X-MS-*, X-Microsoft-Antispam*,
   X-Forefront-*, X-Spam-*, X-Virus-*), mail folder state (Status, X-UID, X-Keywords,
   X-Mozilla-*), mailing-list headers (List-*, X-Mailman-*, Precedence, Errors-To), and
   Sender / Return-Path when they name the list. DKIM-Signature is the sender's and stays.
3. **Recipient addresses are replaced** by `RECIPIENT_PLACEHOLDER` wherever they occur
   (headers, body, inside URLs as is or percent-encoded, quoted-printable ``=40``, HTML
   ``&#64;``, VERP ``local=domain@``, inside base64 and quoted-printable text parts and
   attached messages, also where a soft line break cuts the address, and in UTF-16 and
   UTF-32 text parts): the addresses of To, Cc, Bcc, Delivered-To, X-Original-To,
   Envelope-To, Resent-To and the others in `RECIPIENT_HEADERS`, the ``for <...>`` of
   Received lines, plus the placeholders the public corpora used
   (`CORPUS_RECIPIENT_PLACEHOLDERS`). At most `MAX_RECIPIENTS` addresses are taken, in
   header order, and all are replaced in one pass over the text. A recipient's local
   part that follows a salutation ("Dear jdoe,") becomes ``recipient``.
4. **List footers are removed**: a line of underscores followed by a "... mailing
   list" line and the list's address, listinfo URL or unsubscribe line, in plain,
   quoted-printable and base64 text parts.

The header block ends where the parser (`detection.parsing`) ends it: at the first line
that is neither a header field nor a continuation line. Everything after it is body,
and sanitising never makes a body line read as a header.

Limitation: footers inside HTML are only removed where they sit on lines of their own;
a footer glued into HTML markup stays (rare in the corpora, where the list adds its
footer as its own text/plain part). A recipient's display name is not replaced.
Addresses hidden in ways the byte level cannot see (an RFC 2047 base64 word, HTML
entities for every letter) are left to `parse_for_model`, which replaces them in the
decoded text.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import formataddr, getaddresses
from functools import lru_cache, partial

from detection.parsing import HEADER_BLOCK, part_spans, split_head

logger = logging.getLogger(__name__)

RECIPIENT_PLACEHOLDER = "recipient@example.invalid"
SALUTATION_PLACEHOLDER = "recipient"
CORPUS_RECIPIENT_PLACEHOLDERS = ("phishing@pot", "username@domain.com")
MAX_RECIPIENTS = 500  # addresses taken from one message's headers, in header order
MAX_DEPTH = 20  # nesting of multiparts and attached messages walked (as the parser)
MAX_PARTS = 200  # MIME entities walked (as the parser)

# Header names are matched without regard to case.
STRIPPED_HEADERS = frozenset(
    name.lower()
    for name in (
        # trace and delivery
        "Received X-Received Delivered-To X-Delivered-To X-Original-To Envelope-To "
        "X-Envelope-To X-Rcpt-To X-Envelope-From X-Apparently-To Apparently-To "
        "Delivery-Date X-Forwarded-To X-Forwarded-For "
        "X-Authentication-Warning Authentication-Results Authentication-Results-Original "
        "Received-SPF X-Originalarrivaltime X-OriginatorOrg X-Sender-IP X-SID-PRA "
        "X-SID-Result X-Message-Delivery X-Message-Info X-Account-Key Resent-From Resent-To "
        "Resent-Cc Resent-Date Resent-Message-ID Resent-Subject Resent-Sender X-Loop "
        "X-MailFrom "
        # mail folder state
        "Status X-Status X-UID X-Keywords X-IMAP X-IMAPbase Content-Length Lines "
        # mailing lists
        "Precedence Errors-To X-BeenThere Mailing-List Archived-At Message-ID-Hash "
        "X-Message-ID-Hash "
        # relay software that names the receiving domain (cPanel)
        "X-AntiAbuse X-Get-Message-Sender-Via X-Authenticated-Sender "
        # Exchange Online hops
        "X-ClientProxiedBy"
    ).split()
)
STRIPPED_PREFIXES = tuple(
    prefix.lower()
    for prefix in (
        "ARC- X-MS- X-Microsoft- X-Forefront- X-EOP X-Incoming X-Spam X-Ham- X-Virus- "
        "X-MailScanner X-Original- X-Gm- X-Google- X-Mozilla- X-Evolution- List- X-Mailman- "
        "X-Egroups- X-Proofpoint- X-Barracuda- X-IronPort- X-Mimecast- X-Sophos- X-Cloudmark- "
        "X-CTCH- X-Source"
    ).split()
)
LIST_HEADERS = ("list-id", "list-post", "x-mailman-version", "x-beenthere", "mailing-list")
# headers whose addresses are the receiving side's (Bcc is kept, its addresses replaced)
RECIPIENT_HEADERS = (
    "to",
    "cc",
    "bcc",
    "delivered-to",
    "x-delivered-to",
    "x-original-to",
    "x-original-recipient",
    "original-recipient",
    "envelope-to",
    "x-envelope-to",
    "x-rcpt-to",
    "x-apparently-to",
    "apparently-to",
    "resent-to",
    "resent-cc",
    "x-forwarded-to",
)
GENERIC_LOCAL_PARTS = frozenset(("info", "admin", "support", "all", "team", "list", "users"))

_FOLD = re.compile(r"(?:\r\n|\r|\n)[ \t]+")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_PLAIN_ADDRESS = re.compile(r"[^\s\x00-\x1f\x7f<>()\",;:\\@]+@[A-Za-z0-9.-]+")
_LIST_ROLE = re.compile(r"(?:-bounces?|-owner|-request|-admin)(?:\+[^@]*)?@|^(?:owner-|bounce)")
_RECEIVED_FOR = re.compile(rb"\bfor\s+<?([^\s<>;@]+@[^\s<>;]+?)>?\s*;", re.IGNORECASE)
_VIA_LIST = re.compile(r"^(?P<name>.*?)\s+via\s+(?P<list>[^<>]+)$", re.IGNORECASE | re.DOTALL)
# a line of underscores, perhaps quoted ("> "), after HTML tags or ending in <br>
_UNDERSCORES = re.compile(rb"^[ \t>]*(?:<[^<>]*>[ \t]*)*_{10,}[ \t]*(?:<br\s*/?>)?[ \t]*=?\r?$")
# A recipient address is found from its separator: "@" as written, percent-encoded,
# quoted-printable, an HTML entity, or VERP's "=" before a domain and the bounce
# address's own "@". The domain follows it (all of it: "example.org.uk" is not
# "example.org"); the local part is then read backwards, at most 128 bytes.
_DOMAIN = rb"[\w-]+(?:\.[\w-]+)*"
_SEPARATOR_DOMAIN = re.compile(
    rb"(@|%40|=40|&#0*64;|&#[xX]0*40;|&commat;|=(?=" + _DOMAIN + rb"@))(" + _DOMAIN + rb")"
)
_LOCAL_RUN = re.compile(rb'[^\s@<>()\[\],;:"\\\x00-\x1f\x7f]{1,128}')
_BREAKS_LOCAL = re.compile(rb"[^\w.]")  # a local part may start after one of these
_VERP_SEPARATOR = b"="
_WORD_OR_DOT = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")
_NOT_BEFORE_ADDRESS = frozenset(b"+-")  # besides word characters and dots; not for VERP
_SALUTATION = re.compile(
    rb"\b(dear|hello|hi|hey|good (?:morning|afternoon|evening))([ \t,]+)"
    rb"([a-z](?:[a-z._-]*[a-z])?)(?![\w+-]|\.\w|@|%40|=40|&#)",
    re.IGNORECASE,
)
_PLACEHOLDER_BYTES = tuple(p.lower().encode() for p in CORPUS_RECIPIENT_PLACEHOLDERS)
# matched in the lower-cased text: a case-insensitive pattern is several times slower
_CORPUS_PLACEHOLDER = re.compile(b"|".join(re.escape(p) for p in _PLACEHOLDER_BYTES))
# each local part is one scan of the text; past this many, the salutation rule just runs
_SALUTATION_PREFILTER_LIMIT = 8
_FOOTER_RULE = b"_" * 10  # every footer starts with a line holding ten underscores or more
_ASCII_INCOMPATIBLE = ("utf-16", "utf-32", "utf16", "utf32")


def sanitize(data: bytes) -> bytes:
    """The message without receiver-added marks (see the module docstring); never raises."""
    return sanitize_message(data)[0]


def sanitize_message(data: bytes) -> tuple[bytes, frozenset[str]]:
    """(the sanitized message, the recipient addresses found, lower-case); never raises."""
    data, recipients = sanitize_with_recipients(data)
    return data, frozenset(recipients)


def sanitize_with_recipients(data: bytes) -> tuple[bytes, tuple[str, ...]]:
    """`sanitize_message` with the recipient addresses in header order; never raises.

    The order is the header order of `RECIPIENT_HEADERS` fields and Received ``for``
    clauses, without repeats: the behavioural baselines key recipients by keyed hash
    from this list (and profile the first few), while the text keeps the placeholder.
    """
    try:
        return _sanitize(data)
    except Exception as exc:  # noqa: BLE001 - sanitising must never stop a message
        logger.warning("sanitize left a message unchanged: %s", type(exc).__name__)
        logger.debug("sanitize failure", exc_info=True)
        return data, ()


def _sanitize(data: bytes) -> tuple[bytes, tuple[str, ...]]:
    prefix, head, separator, body = split_head(data)
    fields = _fields(head)
    if not fields:
        return data, ()

    # the facts are read from the headers before any of them is dropped
    is_list = any(name in LIST_HEADERS for name, _ in fields)
    ordered = tuple(_recipients(fields))
    recipients = frozenset(ordered)
    fields = _unmunge_from(fields, is_list)
    kept = [(name, raw) for name, raw in fields if not _is_stripped(name, raw, is_list)]
    head = replace_recipients(b"".join(raw for _, raw in kept), recipients)

    def clean_text(text: bytes) -> bytes:
        return replace_recipients(_strip_footers(text), recipients)

    # the raw body first: what is cleaned here stays cleaned if the MIME walk fails
    body = clean_text(body)
    try:
        body = _PartRewriter(clean_text).body(head, body, 0, "text/plain")
    except Exception as exc:  # noqa: BLE001 - fail closed: headers and raw bytes are clean
        logger.warning("sanitize kept a message's parts as they were: %s", type(exc).__name__)
        logger.debug("sanitize part walk failure", exc_info=True)
    return _join(prefix, head, separator, body), ordered


# headers
def _join(prefix: bytes, head: bytes, blank: bytes, body: bytes) -> bytes:
    """The entity again; a body whose first line now reads as a header gets a blank line."""
    if not blank and body and HEADER_BLOCK.match(body).end() > 0:
        blank = b"\r\n" if head.endswith(b"\r\n") else b"\n"
    return prefix + head + blank + body


def _fields(head: bytes) -> list[tuple[str, bytes]]:
    """(lower-cased name, raw bytes with continuation lines) for each header field."""
    fields: list[tuple[str, bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line)
        elif line[:1] in (b" ", b"\t"):
            fields.append(("", line))  # continuation lines before any field: kept as they are
        else:
            name = line.split(b":", 1)[0].decode("latin-1").strip().lower()
            fields.append((name, line))
    return fields


def _value(raw: bytes) -> str:
    text = raw.decode("latin-1").split(":", 1)[1] if b":" in raw else ""
    return _FOLD.sub(" ", text).strip()


def _decoded(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # noqa: BLE001 - an undecodable header keeps its raw text
        return value


def _addresses(raw: bytes) -> list[tuple[str, str]]:
    return [(n, a.strip()) for n, a in getaddresses([_value(raw)]) if "@" in a]


def _is_stripped(name: str, raw: bytes, is_list: bool) -> bool:
    if name in STRIPPED_HEADERS or name.startswith(STRIPPED_PREFIXES):
        return True
    if is_list and name in ("sender", "return-path"):
        addresses = [a.lower() for _, a in _addresses(raw)]
        return any(_LIST_ROLE.search(a) for a in addresses) or (name == "sender" and not addresses)
    return False


def _recipients(fields: list[tuple[str, bytes]]) -> list[str]:
    """The receiving side's addresses, lower-case, in header order, at most MAX_RECIPIENTS."""
    found: dict[str, None] = {}
    for name, raw in fields:
        if name in RECIPIENT_HEADERS:
            candidates = [a for _, a in _addresses(raw)]
        elif name == "received":
            candidates = [m.decode("latin-1") for m in _RECEIVED_FOR.findall(raw)]
        else:
            continue
        for address in candidates:
            address = address.lower()
            if address.count("@") == 1 and len(address) >= 3:
                found[address] = None
            if len(found) >= MAX_RECIPIENTS:
                return list(found)
    return list(found)


def _unmunge_from(fields: list[tuple[str, bytes]], is_list: bool) -> list[tuple[str, bytes]]:
    """``From: Name via List <list@...>`` + ``Reply-To: poster`` -> ``From: Name <poster>``."""
    names = [name for name, _ in fields]
    if not is_list or names.count("from") != 1 or names.count("reply-to") != 1:
        return fields
    from_raw = fields[names.index("from")][1]
    reply = _addresses(fields[names.index("reply-to")][1])
    sender = _addresses(from_raw)
    if len(reply) != 1 or len(sender) != 1 or reply[0][1].lower() == sender[0][1].lower():
        return fields
    poster = reply[0][1]
    if not _PLAIN_ADDRESS.fullmatch(poster) or not poster.isascii():
        return fields
    match = _VIA_LIST.match(_decoded(sender[0][0]).strip())
    if match is None:
        return fields

    # a decoded display name may hold CR, LF or NUL: as spaces they cannot start a line
    display = _CONTROLS.sub(" ", match.group("name")).strip().strip('"').strip()
    if not display:
        display = _CONTROLS.sub(" ", _decoded(reply[0][0])).strip()
    value = formataddr((display, poster), charset="utf-8").encode("ascii", "replace")
    if re.search(rb"[\x00-\x1f\x7f]", value):
        return fields
    ending = re.search(rb"(?:\r\n|\r|\n)?\Z", from_raw).group(0)
    new = b"From: " + value + ending
    return [(n, new if n == "from" else raw) for n, raw in fields]


# text: footers, recipients
def _strip_footers(text: bytes) -> bytes:
    """Drop each list footer: an underscore line, "... mailing list", then list lines."""
    if _FOOTER_RULE not in text:  # no footer can start: skip the walk over every line
        return text
    lines = text.split(b"\n")
    out: list[bytes] = []
    i = 0
    while i < len(lines):
        end = _footer_end(lines, i) if _UNDERSCORES.match(lines[i]) else None
        if end is None:
            out.append(lines[i])
            i += 1
        else:
            i = end
    return b"\n".join(out)


def _footer_end(lines: list[bytes], start: int) -> int | None:
    """Index after the footer that starts at `start`, or None when it is not one.

    The footer ends at a blank line or at a MIME boundary line ("--..."), which
    belongs to the message's structure, never to the footer.
    """
    block: list[bytes] = []
    for line in lines[start + 1 : start + 7]:
        if not line.strip(b" \t\r=") or line.startswith(b"--"):
            break
        block.append(line.lower())
    if not block or not any(b"mailing list" in line for line in block[:2]):
        return None
    if not any(b"listinfo" in line or b"@" in line or b"unsubscribe" in line for line in block):
        return None
    return start + 1 + len(block)


def replace_recipients(data: bytes, recipients: frozenset[str]) -> bytes:
    """`data` with each of `recipients` (lower-case addresses) and the corpora's
    placeholders replaced by `RECIPIENT_PLACEHOLDER`, in one pass per rule.

    Each "@" (or encoded "@") followed by a recipient's domain is looked up in the set,
    with the local part read back from it, so the cost grows with the text, not with
    the number of recipients. The separator is kept as written ("%40", "=40", "&#64;",
    VERP "="), so percent-encoded and quoted-printable text still decodes to the
    placeholder. An address that only ends or starts like a recipient ("jim-bob@...",
    "...org.uk") is left.
    """
    data = _replace_corpus_placeholders(data)
    if not recipients:
        return data
    data = _replace_addresses(data, recipients)
    locals_ = _salutation_locals(recipients)
    if locals_ and _may_hold_any(data, locals_):

        def salutation(match: re.Match) -> bytes:
            if match.group(3).lower().decode("latin-1") not in locals_:
                return match.group(0)
            return match.group(1) + match.group(2) + SALUTATION_PLACEHOLDER.encode()

        data = _SALUTATION.sub(salutation, data)
    return data


def _replace_corpus_placeholders(data: bytes) -> bytes:
    """The corpora's own recipient placeholders, in any case, as `RECIPIENT_PLACEHOLDER`.

    They are found in the lower-cased bytes (most messages hold none, which one look
    there tells) and replaced at the same positions in `data`."""
    lowered = data.lower()  # ASCII case only, as the pattern's: positions stay the same
    if not any(placeholder in lowered for placeholder in _PLACEHOLDER_BYTES):
        return data
    out: list[bytes] = []
    done = 0
    for match in _CORPUS_PLACEHOLDER.finditer(lowered):
        out += [data[done : match.start()], RECIPIENT_PLACEHOLDER.encode()]
        done = match.end()
    out.append(data[done:])
    return b"".join(out)


def _may_hold_any(data: bytes, locals_: frozenset[str]) -> bool:
    """False only when no local part in `locals_` appears in `data` in any case, so
    that no salutation can name one; with many local parts, True without looking."""
    if len(locals_) > _SALUTATION_PREFILTER_LIMIT:
        return True
    lowered = data.lower()
    return any(local.encode("utf-8") in lowered for local in locals_)


def replace_recipients_in_text(text: str, recipients: frozenset[str]) -> str:
    """`replace_recipients` for decoded text."""
    data = text.encode("utf-8", "surrogatepass")
    return replace_recipients(data, recipients).decode("utf-8", "surrogatepass")


def _replace_addresses(data: bytes, recipients: frozenset[str]) -> bytes:
    domains, longest_local = _recipient_index(recipients)
    local_placeholder, _, domain_placeholder = RECIPIENT_PLACEHOLDER.encode().partition(b"@")
    reversed_data = b""
    out: list[bytes] = []
    done = 0
    floor = 0  # a local part does not reach back past the previous separator
    for match in _SEPARATOR_DOMAIN.finditer(data):
        separator, domain = match.group(1, 2)
        at, previous_floor, floor = match.start(), floor, match.end(1)
        if domain.lower().decode("latin-1") not in domains:
            continue
        reversed_data = reversed_data or data[::-1]
        run = _LOCAL_RUN.match(reversed_data, len(data) - at)
        if run is None:
            continue
        run_start = max(at - len(run.group(0)), at - longest_local, previous_floor, done)
        start = _local_start(data, at, run_start, separator, domain, recipients)
        if start is None:
            continue
        out += [data[done:start], local_placeholder, separator, domain_placeholder]
        done = match.end()
    if not out:
        return data
    out.append(data[done:])
    return b"".join(out)


def _local_start(
    data: bytes,
    at: int,
    run_start: int,
    separator: bytes,
    domain: bytes,
    recipients: frozenset[str],
) -> int | None:
    """Where the recipient whose separator is at `at` starts, or None when none does.

    A local part starts at the start of the data or after a byte that is not a word
    character or a dot (nor "+" or "-", except before VERP's "="); the longest one that
    names a recipient wins.
    """
    local = data[run_start:at]
    starts = [run_start, *(run_start + m.end() for m in _BREAKS_LOCAL.finditer(local))]
    for start in starts:
        if start >= at:
            continue
        before = data[start - 1] if start else None
        if before in _WORD_OR_DOT:
            continue
        if separator != _VERP_SEPARATOR and before in _NOT_BEFORE_ADDRESS:
            continue
        if (data[start:at] + b"@" + domain).lower().decode("latin-1") in recipients:
            return start
    return None


@lru_cache(maxsize=64)
def _recipient_index(recipients: frozenset[str]) -> tuple[frozenset[str], int]:
    """(the recipients' domains, the length of their longest local part, in bytes)."""
    parts = [address.rpartition("@") for address in recipients]
    return frozenset(d for _, _, d in parts), max(len(lp.encode("utf-8")) for lp, _, _ in parts)


@lru_cache(maxsize=64)
def _salutation_locals(recipients: frozenset[str]) -> frozenset[str]:
    """Local parts that read as a name after "Dear ..." (not "info", "admin", ...)."""
    locals_ = (address.partition("@")[0] for address in recipients)
    return frozenset(
        local
        for local in locals_
        if re.fullmatch(r"[a-z][a-z._-]{1,}[a-z]", local) and local not in GENERIC_LOCAL_PARTS
    )


# the MIME walk: encoded text parts and attached messages
class _PartRewriter:
    """Walks one message's MIME tree, bounded in depth and part count like the parser,
    and cleans what the raw bytes hide: base64 and quoted-printable text parts, UTF-16
    and UTF-32 text, and encoded attached messages. A part comes back byte for byte
    unless cleaning changed its decoded content; headers are never rewritten here."""

    def __init__(self, clean: Callable[[bytes], bytes]) -> None:
        self.clean = clean
        self.parts = 0

    def entity(self, data: bytes, depth: int, default_type: str) -> bytes:
        prefix, head, blank, body = split_head(data)
        return _join(prefix, head, blank, self.body(head, body, depth, default_type))

    def body(self, head: bytes, body: bytes, depth: int, default_type: str) -> bytes:
        self.parts += 1
        if depth > MAX_DEPTH or self.parts > MAX_PARTS:
            return body  # the parser does not read this deep either
        headers = BytesHeaderParser(policy=compat32).parsebytes(head + b"\n")
        content_type = headers.get_content_type() if headers.get("content-type") else default_type
        encoding = str(headers.get("content-transfer-encoding", "")).strip().lower()
        encoding = "quoted-printable" if encoding.startswith("quoted") else encoding
        codec = _CODECS.get(encoding)

        if content_type.startswith("multipart/"):
            boundary = headers.get_param("boundary")
            if not isinstance(boundary, str) or not boundary:
                return body
            child = "message/rfc822" if content_type == "multipart/digest" else "text/plain"
            return _rewrite_multipart(body, boundary, lambda p: self.entity(p, depth + 1, child))
        if content_type == "message/rfc822":
            if codec is None:
                return self.entity(body, depth + 1, "text/plain")
            return _recode(
                body, codec, lambda m: self.entity(self.clean(m), depth + 1, "text/plain")
            )
        if not content_type.startswith("text/"):
            return body
        charset = str(headers.get_content_charset() or "")
        if charset.startswith(_ASCII_INCOMPATIBLE):
            wide = partial(self._wide, charset=charset)
            return _recode(body, codec, wide) if codec else wide(body)
        if codec is None:
            return body  # already cleaned as raw bytes
        return _recode(body, codec, self.clean)

    def _wide(self, data: bytes, charset: str) -> bytes:
        """Clean text in a charset that is not ASCII-compatible, in that charset."""
        try:
            text = data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            return data
        cleaned = self.clean(text.encode("utf-8", "surrogatepass"))
        if cleaned == text.encode("utf-8", "surrogatepass"):
            return data
        return cleaned.decode("utf-8", "surrogatepass").encode(charset)


def _rewrite_multipart(body: bytes, boundary: str, rewrite: Callable[[bytes], bytes]) -> bytes:
    """`body` with each part between boundary lines (as the parser finds them) rewritten."""
    out: list[bytes] = []
    done = 0
    for start, end in part_spans(body, boundary):
        out += [body[done:start], rewrite(body[start:end])]
        done = end
    out.append(body[done:])
    return b"".join(out)


def _qp_encode(text: bytes) -> bytes:
    lines = text.split(b"\n")
    return b"\n".join(binascii.b2a_qp(line.rstrip(b"\r")) for line in lines)


def _base64_decode(encoded: bytes) -> bytes:
    return binascii.a2b_base64(encoded.translate(None, b" \t\r\n"))


_Codec = tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]
_CODECS: dict[str, _Codec] = {
    "base64": (_base64_decode, lambda text: base64.encodebytes(text).strip()),
    "quoted-printable": (binascii.a2b_qp, _qp_encode),
}


def _recode(body: bytes, codec: _Codec, transform: Callable[[bytes], bytes]) -> bytes:
    """Decode a part's body, transform it, and encode it back if the content changed.

    The white space around the encoded text and its line endings are kept.
    """
    decode, encode = codec
    stripped = body.strip()
    if not stripped:
        return body
    try:
        decoded = decode(stripped)
    except (binascii.Error, ValueError):
        return body
    changed = transform(decoded)
    if changed == decoded:
        return body
    lead = body[: len(body) - len(body.lstrip())]
    trail = body[len(lead) + len(stripped) :]
    newline = b"\r\n" if b"\r\n" in stripped or b"\r\n" in trail else b"\n"
    fresh = encode(changed).replace(b"\r\n", b"\n").replace(b"\n", newline)
    return lead + fresh + trail
