"""URLs found in a message, with the host a browser would actually go to.

Contract: `extract_urls(text, links) -> tuple[Url, ...]` and `browser_host(raw)` never
raise. The written form of a link is normalised the way a browser's URL parser
(WHATWG) would before `urllib.parse.urlsplit` splits it: tabs and newlines dropped,
backslashes read as slashes, any number of slashes after `http:`, the last `@` ending
the user-info, a percent-encoded host decoded, Unicode hosts converted with `idna`
(UTS 46), and IPv4 hosts written in decimal, hex, octal or short form rewritten as a
dotted quad. Each way the written form differs from that host is named in
`Url.tricks` (see `TRICKS`). Registered domains come from the public-suffix list
bundled with `tldextract` (no network).

A host a browser refuses (after percent-decoding and IDNA it holds a forbidden domain
code point such as a control character, space, "/", "@" or "%"; a port past 65535; an
`xn--` label that is not valid punycode; an IPv4-like host out of range) gets the
"bad_host" trick, an empty `registered_domain`, and as `host` its own characters with
every one outside printable ASCII or forbidden in a domain percent-encoded
(`evil%0A.example.com`), so no host ever holds a control character, whitespace, "/"
or "@". An IPv6 host is written without its brackets (`::1`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote, urlsplit

import idna
import tldextract

TRICKS = (
    "userinfo",  # text before an "@" in the authority: http://bank.example@evil.example/
    "percent_host",  # the host is percent-encoded: http://%65vil.example/
    "numeric_host",  # an IPv4 host written in decimal, hex, octal or short form
    "backslash",  # backslashes or a wrong number of slashes after the scheme
    "trailing_dot",  # a host ending in "."
    "defanged_scheme",  # hxxp:// and the like, which a reader pastes as http://
    "control_char",  # tabs, newlines or NULs inside the URL, which browsers drop
    "punycode",  # an internationalised host (written in Unicode or as xn--)
    "bad_host",  # a host no browser would accept
)
OBFUSCATION_TRICKS = frozenset(
    ("percent_host", "numeric_host", "backslash", "trailing_dot", "defanged_scheme", "control_char")
)

_URL_IN_TEXT = re.compile(
    r"(?<![\w.@/-])(?:h(?:tt|xx)ps?://|www\.)[^\s<>\"')\]]{1,2048}", re.IGNORECASE
)
# runs of host characters: no nested quantifier, so finding them is linear in the text
_HOST_RUN = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*", re.IGNORECASE)
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
_DEFANGED = re.compile(r"h(?:xx|\*\*|XX|tx|xt)p(s?)", re.IGNORECASE)
_URL_CONTROL = re.compile(r"[\t\r\n\x00]")
_ENDS_IN_NUMBER = re.compile(r"(?:^|\.)(?:0x[0-9a-f]*|[0-9]+)$")
_TEXT_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# WHATWG forbidden domain code points: C0 controls, space and #%/:<>?@[\]^| and DEL
_FORBIDDEN_IN_DOMAIN = frozenset(" #%/:<>?@[\\]^|\x7f") | frozenset(map(chr, range(32)))
_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
_MAX_URL_CHARS = 4096
MAX_ANCHOR_CHARS = 300  # anchor text kept per link: enough to show a domain, bounded work
_MAX_LABEL_CHARS = 63


@dataclass(frozen=True)
class Url:
    raw: str  # as written (tabs, newlines and NULs removed, other controls as %XX)
    host: str  # the host a browser would connect to, lower-case ASCII (punycode)
    registered_domain: str  # eTLD+1 of host ("" for an IP address, no host or a bad_host)
    text: str = ""  # the anchor text shown for an HTML link (at most MAX_ANCHOR_CHARS)
    tricks: tuple[str, ...] = ()  # names from TRICKS: how the written form misleads

    @property
    def obfuscated_host(self) -> bool:
        """The host is written in a form that hides it from a reader (see TRICKS)."""
        return not OBFUSCATION_TRICKS.isdisjoint(self.tricks)

    @property
    def text_domain(self) -> str:
        """The registered domain the anchor text shows, or "" if it shows none.

        The first run of dot-separated labels (each 1-63 letters, digits or hyphens)
        whose last label of two or more letters follows at least one other is read as
        a host; only the first MAX_ANCHOR_CHARS characters of the text are looked at.
        """
        for run in _HOST_RUN.finditer(self.text[:MAX_ANCHOR_CHARS]):
            host = _host_in_run(run.group(0).lower().split("."))
            if host:
                return registered_domain(host)
        return ""


def _host_in_run(labels: list[str]) -> str:
    """The labels up to the last alphabetic top-level label, joined; "" if none fits."""
    for end in range(len(labels) - 1, 0, -1):
        top = labels[end].partition("-")[0]  # "example.com-login" shows example.com
        if len(top) >= 2 and top.isascii() and top.isalpha():
            kept = [*labels[:end], top]
            if all(len(label) <= _MAX_LABEL_CHARS for label in kept):
                return ".".join(kept)
            return ""
    return ""


@lru_cache(maxsize=8192)
def registered_domain(host: str) -> str:
    """eTLD+1 of a host ("" when the host has no registrable domain or is an IP)."""
    parts = _EXTRACT(host.lower())
    if not parts.domain or not parts.suffix:
        return ""
    return f"{parts.domain}.{parts.suffix}"


def browser_host(raw: str) -> tuple[str, tuple[str, ...]]:
    """The http(s) host a browser would go to for `raw`, and the tricks it used.

    Returns ("", tricks) for a URL that is not http(s) or has no usable host.
    """
    tricks: list[str] = []
    candidate = raw.strip(" \x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x0f\x10\x7f")
    if _URL_CONTROL.search(candidate):
        tricks.append("control_char")
        candidate = _URL_CONTROL.sub("", candidate)

    # scheme: http, https, a defanged form, or "www." with none
    scheme_match = _SCHEME.match(candidate)
    if candidate.lower().startswith("www."):
        scheme, rest = "http", "//" + candidate
    elif scheme_match:
        scheme = scheme_match.group(1).lower()
        rest = candidate[scheme_match.end() :]
        defanged = _DEFANGED.fullmatch(scheme)
        if defanged:
            tricks.append("defanged_scheme")
            scheme = "https" if defanged.group(1) else "http"
    elif candidate.startswith(("//", "\\\\")):
        scheme, rest = "http", candidate
    else:
        return "", tuple(tricks)
    if scheme not in ("http", "https"):
        return "", tuple(tricks)

    # browsers read "\" as "/" and accept any number of slashes after the scheme
    if "\\" in rest:
        rest = rest.replace("\\", "/")
        tricks.append("backslash")
    stripped = rest.lstrip("/")
    if len(rest) - len(stripped) != 2 and "backslash" not in tricks:
        tricks.append("backslash")

    try:
        parts = urlsplit(f"{scheme}://{stripped}")
        host = parts.hostname or ""
        if "@" in parts.netloc:
            tricks.append("userinfo")
    except ValueError:
        return "", (*tricks, "bad_host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port past 65535 or not a number
    except ValueError:
        tricks.append("bad_host")
    if "[" in parts.netloc.rpartition("@")[2]:
        return _ipv6_host(host, tricks)
    return _normalise_host(host, tricks)


def _ipv6_host(host: str, tricks: list[str]) -> tuple[str, tuple[str, ...]]:
    """A bracketed host: an IPv6 address, written compressed and without brackets."""
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        address = None
    if address is None or address.scope_id or "bad_host" in tricks:  # or a zone id
        return _safe_host(host), tuple(dict.fromkeys((*tricks, "bad_host")))
    return address.compressed, tuple(dict.fromkeys(tricks))


def _normalise_host(host: str, tricks: list[str]) -> tuple[str, tuple[str, ...]]:
    if "%" in host:
        host = unquote(host, errors="replace").lower()
        tricks.append("percent_host")
    bad = "bad_host" in tricks
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            bad = True
        tricks.append("punycode")
    elif any(label.startswith("xn--") for label in host.split(".")):
        tricks.append("punycode")
    bad = bad or not _FORBIDDEN_IN_DOMAIN.isdisjoint(host) or not _valid_punycode(host)
    if host.endswith("."):
        host = host.rstrip(".")
        tricks.append("trailing_dot")
    if not bad and host and _ENDS_IN_NUMBER.search(host):
        try:
            dotted = socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            bad = True
        else:
            if dotted != host:
                tricks.append("numeric_host")
            host = dotted
    if bad:
        return _safe_host(host), tuple(dict.fromkeys((*tricks, "bad_host")))
    return host, tuple(dict.fromkeys(tricks))


def _valid_punycode(host: str) -> bool:
    """Every `xn--` label decodes as punycode to something that is not plain ASCII
    (UTS 46, as browsers apply it); `xn--evil-` and `xn--` do not."""
    for label in host.split("."):
        if label[:4].lower() != "xn--":
            continue
        try:
            decoded = label[4:].encode("ascii").decode("punycode")
        except (UnicodeError, ValueError):
            return False
        if not decoded or decoded.isascii():
            return False
    return True


def _safe_host(host: str) -> str:
    """A refused host as printable ASCII: forbidden and non-ASCII characters
    percent-encoded, so it can never carry a control character, space, "/" or "@"."""
    return "".join(
        char
        if char.isascii() and char.isprintable() and char not in _FORBIDDEN_IN_DOMAIN
        else quote(char, safe="", errors="replace")
        for char in host[:_MAX_URL_CHARS]
    )


def effective_host(raw: str) -> str:
    """The host a browser would go to for `raw` ("" if none)."""
    return browser_host(raw)[0]


def make_url(raw: str, text: str = "") -> Url:
    """A `Url` for one written link; `raw` loses tabs, newlines and NULs and has its
    other control characters percent-encoded; `text` loses its control characters and
    all past MAX_ANCHOR_CHARS."""
    raw = _URL_CONTROL.sub("", raw.strip())[:_MAX_URL_CHARS]
    host, tricks = browser_host(raw)
    known = host and "bad_host" not in tricks
    return Url(
        raw=_TEXT_CONTROL.sub(lambda match: quote(match.group(0)), raw),
        host=host,
        registered_domain=registered_domain(host) if known else "",
        text=_TEXT_CONTROL.sub(" ", text[:MAX_ANCHOR_CHARS]),
        tricks=tricks,
    )


def extract_urls(
    text: str, links: tuple[tuple[str, str], ...] | list, limit: int = 500
) -> tuple[Url, ...]:
    """Links from HTML anchors first (with their text), then bare URLs in text.

    Only links a browser would open over http(s) are kept; each written form once;
    at most `limit` URLs.
    """
    found: list[Url] = []
    seen: set[str] = set()
    for href, anchor in links:
        if len(found) >= limit:
            return tuple(found)
        url = make_url(href, anchor)
        if url.host and url.raw not in seen:
            seen.add(url.raw)
            found.append(url)
    for match in _URL_IN_TEXT.finditer(text):
        if len(found) >= limit:
            break
        raw = match.group(0).rstrip(".,;:!?")
        if raw not in seen:
            url = make_url(raw)
            seen.add(raw)
            if url.host:
                found.append(url)
    return tuple(found)
