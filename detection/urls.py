"""URLs found in a message, with the host a browser would actually go to.

Contract: `extract_urls(text, links) -> tuple[Url, ...]`; never raises. Registered
domains come from the public-suffix list bundled with `tldextract` (no network).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import tldextract

_URL_IN_TEXT = re.compile(r"\b(?:https?://|www\.)[^\s<>\"')\]]+", re.IGNORECASE)
_DOMAIN_IN_TEXT = re.compile(r"\b((?:[a-z0-9-]+\.)+[a-z]{2,})\b", re.IGNORECASE)
_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


@dataclass(frozen=True)
class Url:
    raw: str  # as written in the message
    host: str  # the host a browser would connect to, lower-case
    registered_domain: str  # eTLD+1 of host ("" for an IP address or no host)
    text: str = ""  # the anchor text shown for an HTML link

    @property
    def text_domain(self) -> str:
        """The registered domain the anchor text shows, or "" if it shows none."""
        match = _DOMAIN_IN_TEXT.search(self.text)
        return registered_domain(match.group(1)) if match else ""


def registered_domain(host: str) -> str:
    parts = _EXTRACT(host.lower())
    if not parts.domain or not parts.suffix:
        return ""
    return f"{parts.domain}.{parts.suffix}"


def effective_host(raw: str) -> str:
    candidate = raw.strip()
    if candidate.lower().startswith("www."):
        candidate = "http://" + candidate
    try:
        host = urlsplit(candidate).hostname or ""
    except ValueError:
        return ""
    return host.lower().rstrip(".")


def make_url(raw: str, text: str = "") -> Url:
    host = effective_host(raw)
    return Url(raw=raw, host=host, registered_domain=registered_domain(host), text=text)


def extract_urls(text: str, links: tuple[tuple[str, str], ...] | list) -> tuple[Url, ...]:
    """Links from HTML anchors first (with their text), then bare URLs in text."""
    found: list[Url] = []
    seen: set[str] = set()
    for href, anchor in links:
        if href.lower().startswith(("http://", "https://", "www.")) and href not in seen:
            seen.add(href)
            found.append(make_url(href, anchor))
    for match in _URL_IN_TEXT.finditer(text):
        raw = match.group(0).rstrip(".,;:!?")
        if raw not in seen:
            seen.add(raw)
            found.append(make_url(raw))
    return tuple(found)
