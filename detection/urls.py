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
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

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
_DOMAIN_IN_TEXT = re.compile(r"\b((?:[a-z0-9-]+\.)+[a-z]{2,})\b", re.IGNORECASE)
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
_DEFANGED = re.compile(r"h(?:xx|\*\*|XX|tx|xt)p(s?)", re.IGNORECASE)
_URL_CONTROL = re.compile(r"[\t\r\n\x00]")
_ENDS_IN_NUMBER = re.compile(r"(?:^|\.)(?:0x[0-9a-f]*|[0-9]+)$")
_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
_MAX_URL_CHARS = 4096


@dataclass(frozen=True)
class Url:
    raw: str  # as written in the message (tabs, newlines and NULs removed)
    host: str  # the host a browser would connect to, lower-case ASCII (punycode)
    registered_domain: str  # eTLD+1 of host ("" for an IP address or no host)
    text: str = ""  # the anchor text shown for an HTML link
    tricks: tuple[str, ...] = ()  # names from TRICKS: how the written form misleads

    @property
    def obfuscated_host(self) -> bool:
        """The host is written in a form that hides it from a reader (see TRICKS)."""
        return not OBFUSCATION_TRICKS.isdisjoint(self.tricks)

    @property
    def text_domain(self) -> str:
        """The registered domain the anchor text shows, or "" if it shows none."""
        match = _DOMAIN_IN_TEXT.search(self.text)
        return registered_domain(match.group(1)) if match else ""


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
    return _normalise_host(host, tricks)


def _normalise_host(host: str, tricks: list[str]) -> tuple[str, tuple[str, ...]]:
    if "%" in host:
        host = unquote(host, errors="replace").lower()
        tricks.append("percent_host")
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            tricks.append("bad_host")
        tricks.append("punycode")
    elif any(label.startswith("xn--") for label in host.split(".")):
        tricks.append("punycode")
    if host.endswith("."):
        host = host.rstrip(".")
        tricks.append("trailing_dot")
    if host and ":" not in host and _ENDS_IN_NUMBER.search(host):
        try:
            dotted = socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            tricks.append("bad_host")
        else:
            if dotted != host:
                tricks.append("numeric_host")
            host = dotted
    return host, tuple(dict.fromkeys(tricks))


def effective_host(raw: str) -> str:
    """The host a browser would go to for `raw` ("" if none)."""
    return browser_host(raw)[0]


def make_url(raw: str, text: str = "") -> Url:
    """A `Url` for one written link; `raw` loses tabs, newlines and NULs."""
    raw = _URL_CONTROL.sub("", raw.strip())[:_MAX_URL_CHARS]
    host, tricks = browser_host(raw)
    return Url(
        raw=raw,
        host=host,
        registered_domain=registered_domain(host) if host else "",
        text=text,
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
