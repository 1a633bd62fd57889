"""HTML to the text a reader sees, and the text hidden from them.

Contract: `html_to_views(html: str) -> HtmlViews`; never raises. Parsing is done by
BeautifulSoup with lxml; this module only decides what is visible.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(?![.\d]*[1-9])|"
    r"max-height\s*:\s*0(?![.\d]*[1-9])|opacity\s*:\s*0(?![.\d]*[1-9])",
    re.IGNORECASE,
)
_NOT_TEXT = ("script", "style", "head", "title", "noscript", "template")


@dataclass(frozen=True)
class HtmlViews:
    visible: str
    hidden: str
    links: tuple[tuple[str, str], ...]  # (href, anchor text)
    image_count: int
    linked_image_count: int


def html_to_views(html: str) -> HtmlViews:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(html, "lxml")
    for tag in soup(list(_NOT_TEXT)):
        tag.decompose()

    hidden_parts = []
    for tag in soup.find_all(style=_HIDDEN_STYLE):
        hidden_parts.append(tag.get_text(" ", strip=True))
        tag.decompose()

    links = tuple(
        (a.get("href", "").strip(), a.get_text(" ", strip=True))
        for a in soup.find_all("a")
        if a.get("href")
    )
    images = soup.find_all("img")
    linked = sum(1 for img in images if img.find_parent("a") is not None)
    return HtmlViews(
        visible=soup.get_text(" ", strip=True),
        hidden=" ".join(p for p in hidden_parts if p),
        links=links,
        image_count=len(images),
        linked_image_count=linked,
    )
