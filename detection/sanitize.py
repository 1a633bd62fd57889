"""Remove what the receiving side added to a message, before anything reads it.

Contract: `sanitize(data: bytes) -> bytes` takes a raw RFC 5322 message and returns
the message as its sender wrote it, as nearly as can be told. Training, the server and
batch rescoring all call it, identically, before parsing. It never raises: on any
failure the input comes back unchanged (logged at DEBUG).

Each corpus arrived through one pipeline, and the receiving side's marks name the
corpus, not the attack; a model that saw them would learn where mail was collected.
The rules, in order:

1. **List From-munging is undone.** A list that rewrote ``From: Name via List
   <list@...>`` for DMARC and put the poster in ``Reply-To`` gets ``From: Name
   <poster@...>`` back.
2. **Receiver and pipeline headers are dropped** (`STRIPPED_HEADERS`,
   `STRIPPED_PREFIXES`): trace and delivery headers (Received, Delivered-To,
   X-Original-To, Authentication-Results, ARC-*, Received-SPF), gateway and filter
   verdicts (X-MS-*, X-Microsoft-Antispam*, X-Forefront-*, X-Spam-*, X-Virus-*), mail
   folder state (Status, X-UID, X-Keywords, X-Mozilla-*), mailing-list headers
   (List-*, X-Mailman-*, Precedence, Errors-To), and Sender / Return-Path when they
   name the list. DKIM-Signature is the sender's and stays.
3. **Recipient addresses are replaced** by `RECIPIENT_PLACEHOLDER` wherever they occur
   (headers, body, inside URLs as is or percent-encoded, inside base64 and
   quoted-printable text parts, also where a soft line break cuts the address):
   the addresses of To, Cc, Delivered-To, X-Original-To, Envelope-To, Resent-To and
   the ``for <...>`` of Received lines, plus the placeholders the public corpora
   used (`CORPUS_RECIPIENT_PLACEHOLDERS`). A recipient's local part that follows a
   salutation ("Dear jdoe,") becomes ``recipient``.
4. **List footers are removed**: a line of underscores followed by a "... mailing
   list" line and the list's address, listinfo URL or unsubscribe line, in plain,
   quoted-printable and base64 text parts.

Limitation: footers inside HTML are only removed where they sit on lines of their own;
a footer glued into HTML markup stays (rare in the corpora, where the list adds its
footer as its own text/plain part). A recipient's display name is not replaced.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import logging
import re
from collections.abc import Callable
from email.header import decode_header, make_header
from email.utils import formataddr, getaddresses

logger = logging.getLogger(__name__)

RECIPIENT_PLACEHOLDER = "recipient@example.invalid"
SALUTATION_PLACEHOLDER = "recipient"
CORPUS_RECIPIENT_PLACEHOLDERS = ("phishing@pot", "username@domain.com")

# Header names are matched without regard to case.
STRIPPED_HEADERS = frozenset(
    name.lower()
    for name in (
        # trace and delivery
        "Received X-Received Delivered-To X-Original-To Envelope-To X-Envelope-To "
        "X-Envelope-From X-Apparently-To Delivery-Date X-Forwarded-To X-Forwarded-For "
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
RECIPIENT_HEADERS = (
    "to",
    "cc",
    "delivered-to",
    "x-original-to",
    "envelope-to",
    "x-envelope-to",
    "x-apparently-to",
    "resent-to",
    "resent-cc",
    "x-forwarded-to",
)
_LIST_ROLE = re.compile(r"(?:-bounces?|-owner|-request|-admin)(?:\+[^@]*)?@|^(?:owner-|bounce)")
_RECEIVED_FOR = re.compile(rb"\bfor\s+<?([^\s<>;@]+@[^\s<>;]+?)>?\s*;", re.IGNORECASE)
_VIA_LIST = re.compile(r"^(?P<name>.*?)\s+via\s+(?P<list>[^<>]+)$", re.IGNORECASE)
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:")
# a line of underscores, perhaps quoted ("> "), after HTML tags or ending in <br>
_UNDERSCORES = re.compile(rb"^[ \t>]*(?:<[^<>]*>[ \t]*)*_{10,}[ \t]*(?:<br\s*/?>)?[ \t]*=?\r?$")
_BASE64_HINT = re.compile(rb"content-transfer-encoding:[ \t]*base64", re.IGNORECASE)
_QP_HINT = re.compile(rb"content-transfer-encoding:[ \t]*quoted-printable", re.IGNORECASE)
_SOFT_BREAK = re.compile(rb"=\r?\n")
_SALUTATION = rb"\b(dear|hello|hi|hey|good (?:morning|afternoon|evening))([ \t,]+)"
_WORD_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_."
_ADDRESS_CHARS = _WORD_CHARS + b"+-"
GENERIC_LOCAL_PARTS = frozenset(("info", "admin", "support", "all", "team", "list", "users"))


def sanitize(data: bytes) -> bytes:
    """The message without receiver-added marks (see the module docstring); never raises."""
    try:
        return _sanitize(data)
    except Exception as exc:  # noqa: BLE001 - sanitising must never stop a message
        logger.debug("sanitize left a message unchanged: %s: %s", type(exc).__name__, exc)
        return data


def _sanitize(data: bytes) -> bytes:
    head, newline, body = _split_head(data)
    fields = _fields(head)
    if not fields:
        return data

    # the facts are read from the headers before any of them is dropped
    is_list = any(name in LIST_HEADERS for name, _ in fields)
    addresses = _recipients(fields)
    recipients = _recipient_patterns(addresses)
    fields = _unmunge_from(fields, is_list, newline)
    kept = [(name, raw) for name, raw in fields if not _is_stripped(name, raw, is_list)]

    head = _replace_recipients(b"".join(raw for _, raw in kept), recipients)

    def clean_text(text: bytes) -> bytes:
        return _replace_recipients(_strip_footers(text), recipients)

    needles = (b"mailing list", *sorted(a.encode("latin-1") for a in addresses))
    return _rewrite_text(head + newline + body, clean_text, needles)


# headers
def _split_head(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block with its line endings, the blank line's newline, body)."""
    match = re.search(rb"\r?\n\r?\n", data)
    if match is None:
        return data if data.endswith(b"\n") else data + b"\n", b"\n", b""
    cut = match.start() + (2 if data[match.start()] == 13 else 1)
    newline = b"\r\n" if data[match.start()] == 13 else b"\n"
    return data[:cut], newline, data[match.end() :]


def _fields(head: bytes) -> list[tuple[str, bytes]]:
    """(lower-cased name, raw bytes with continuation lines) for each header field."""
    fields: list[tuple[str, bytes]] = []
    for line in head.splitlines(keepends=True):
        match = _FIELD.match(line)
        if match is None and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line)  # a continuation (or a broken line): keep it
        elif match is None:
            fields.append(("", line))
        else:
            fields.append((match.group(1).decode("ascii").lower(), line))
    return fields


def _value(raw: bytes) -> str:
    text = raw.decode("latin-1").split(":", 1)[1] if b":" in raw else ""
    return re.sub(r"\r?\n[ \t]+", " ", text).strip()


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
    if name in ("sender", "return-path"):
        addresses = [a.lower() for _, a in _addresses(raw)]
        return (
            is_list
            and any(_LIST_ROLE.search(a) for a in addresses)
            or (name == "sender" and is_list and not addresses)
        )
    return False


def _recipients(fields: list[tuple[str, bytes]]) -> set[str]:
    found = {
        a.lower() for name, raw in fields if name in RECIPIENT_HEADERS for _, a in _addresses(raw)
    }
    for name, raw in fields:
        if name == "received":
            found.update(m.decode("latin-1").lower() for m in _RECEIVED_FOR.findall(raw))
    found.update(CORPUS_RECIPIENT_PLACEHOLDERS)
    return {a for a in found if a.count("@") == 1 and len(a) >= 3}


def _unmunge_from(
    fields: list[tuple[str, bytes]], is_list: bool, newline: bytes
) -> list[tuple[str, bytes]]:
    """``From: Name via List <list@...>`` + ``Reply-To: poster`` -> ``From: Name <poster>``."""
    names = [name for name, _ in fields]
    if not is_list or names.count("from") != 1 or names.count("reply-to") != 1:
        return fields
    from_raw = fields[names.index("from")][1]
    reply = _addresses(fields[names.index("reply-to")][1])
    sender = _addresses(from_raw)
    if len(reply) != 1 or len(sender) != 1 or reply[0][1].lower() == sender[0][1].lower():
        return fields
    match = _VIA_LIST.match(_decoded(sender[0][0]).strip())
    if match is None:
        return fields
    display = match.group("name").strip().strip('"') or _decoded(reply[0][0])
    value = formataddr((display, reply[0][1]), charset="utf-8")
    new = b"From: " + value.encode("ascii", "replace") + newline
    return [(n, new if n == "from" else raw) for n, raw in fields]


# text: footers, recipients
def _strip_footers(text: bytes) -> bytes:
    """Drop each list footer: an underscore line, "... mailing list", then list lines."""
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
    """Index after the footer that starts at `start`, or None when it is not one."""
    block: list[bytes] = []
    for line in lines[start + 1 : start + 7]:
        if not line.strip(b" \t\r="):
            break
        block.append(line.lower())
    if not block or not any(b"mailing list" in line for line in block[:2]):
        return None
    if not any(b"listinfo" in line or b"@" in line or b"unsubscribe" in line for line in block):
        return None
    return start + 1 + len(block)


def _replace_recipients(
    data: bytes, patterns: list[tuple[bytes, re.Pattern, bytes, bytes]]
) -> bytes:
    lowered = data.lower()
    for needle, pattern, new, not_after in patterns:
        if needle not in lowered:  # a substring test first: most patterns cannot match
            continue

        # the left boundary is checked here: a pattern that starts with a look-behind
        # loses the regex engine's literal-prefix search and runs four times slower
        def replace(match: re.Match, new: bytes = new, not_after: bytes = not_after) -> bytes:
            start = match.start()
            if start and match.string[start - 1] in not_after:
                return match.group(0)
            return match.expand(new)

        data = pattern.sub(replace, data)
    return data


def _recipient_patterns(recipients: set[str]) -> list[tuple[bytes, re.Pattern, bytes, bytes]]:
    """(needle, pattern, replacement, bytes that may not precede a match) per variant.

    Each recipient is matched as is, percent-encoded and VERP-encoded, and its local
    part after a salutation. The needle is a lower-cased literal every match contains.
    The corpora's own placeholders are replaced wherever they occur, even glued to a
    word, because the corpora pasted them into words ("Dearphishing@pot").
    """
    placeholder = RECIPIENT_PLACEHOLDER.encode()
    local_placeholder, _, domain_placeholder = placeholder.partition(b"@")
    end = rb"(?![\w-]|\.[\w-])"
    patterns: list[tuple[bytes, re.Pattern, bytes, bytes]] = []
    for address in sorted(recipients, key=len, reverse=True):
        bare_local, _, bare_domain = (p.encode("latin-1") for p in address.partition("@"))
        local, domain = re.escape(bare_local), re.escape(bare_domain)
        if address in CORPUS_RECIPIENT_PLACEHOLDERS:
            patterns.append(
                (bare_domain, re.compile(local + b"@" + domain, re.I), placeholder, b"")
            )
            continue
        percent = placeholder.replace(b"@", b"%40")
        verp = local_placeholder + b"=" + domain_placeholder
        patterns += [
            (
                bare_domain,
                re.compile(local + b"@" + domain + end, re.I),
                placeholder,
                _ADDRESS_CHARS,
            ),
            (bare_domain, re.compile(local + b"%40" + domain + end, re.I), percent, _ADDRESS_CHARS),
            # VERP bounce addresses carry the recipient as local=domain before the @
            (bare_domain, re.compile(local + b"=" + domain + b"(?=@)", re.I), verp, _WORD_CHARS),
        ]
        if re.fullmatch(rb"[a-z][a-z._-]{2,}", bare_local) and (
            address.partition("@")[0] not in GENERIC_LOCAL_PARTS
        ):
            salutation = re.compile(_SALUTATION + local + rb"\b", re.I)
            new = rb"\1\2" + SALUTATION_PLACEHOLDER.encode()
            patterns.append((bare_local, salutation, new, b""))
    return patterns


def _rewrite_text(
    data: bytes, transform: Callable[[bytes], bytes], needles: tuple[bytes, ...]
) -> bytes:
    """Apply `transform` to the whole body, then inside encoded text parts that need it.

    Base64 text parts are always decoded; quoted-printable ones only when joining the
    soft line breaks brings a new occurrence of one of `needles` (lower-case literals).
    """
    head, blank, body = _split_head(data)
    data = head + blank + transform(body)
    has_base64 = _BASE64_HINT.search(data) is not None
    if not has_base64 and not _qp_hides_needle(data, needles):
        return data
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    for part in message.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if encoding in ("base64", "quoted-printable"):
            codec = _BASE64 if encoding == "base64" else _QP
            data = _rewrite_encoded(data, str(part.get_payload()), transform, codec)
    return data


def _qp_hides_needle(data: bytes, needles: tuple[bytes, ...]) -> bool:
    if not _QP_HINT.search(data):
        return False
    lowered = data.lower()
    joined = _SOFT_BREAK.sub(b"", lowered)
    return any(joined.count(n) > lowered.count(n) for n in needles)


def _qp_encode(text: bytes) -> bytes:
    lines = text.split(b"\n")
    return b"\n".join(binascii.b2a_qp(line.rstrip(b"\r")) for line in lines)


_BASE64 = (
    lambda encoded: base64.b64decode(encoded, validate=False),
    lambda text: base64.encodebytes(text).strip(),
)
_QP = (binascii.a2b_qp, _qp_encode)


def _rewrite_encoded(
    data: bytes, payload: str, transform: Callable[[bytes], bytes], codec: tuple
) -> bytes:
    """Decode one part's payload, transform it, and encode it back in place if it changed."""
    decode, encode = codec
    try:
        encoded = payload.encode("ascii", "surrogateescape").strip()
    except UnicodeEncodeError:
        return data  # the parser already decoded this payload: its bytes are not at hand
    if len(encoded) < 16 or data.count(encoded) != 1:
        return data  # not found exactly once: leave it rather than guess
    try:
        decoded = decode(encoded)
    except (binascii.Error, ValueError):
        return data
    changed = transform(decoded)
    if changed == decoded:
        return data
    newline = b"\r\n" if b"\r\n" in encoded else b"\n"
    fresh = encode(changed).replace(b"\r\n", b"\n").replace(b"\n", newline)
    return data.replace(encoded, fresh, 1)
