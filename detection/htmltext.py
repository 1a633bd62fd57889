"""HTML to the text a reader sees, and the text hidden from them.

Contract: `html_to_views(html: str) -> HtmlViews`; never raises. lxml's HTML parser
(libxml2, recovering from any damage) builds the tree; this module walks it once and
decides what a mail client would show.

An element is hidden when its inline style, its `hidden` attribute or a simple rule
in a `<style>` block (`.cls`, `#id`, `tag`, `tag.cls`; rules inside `@media` are
conditional and ignored) gives it `display:none`, `visibility:hidden`, a font size
of 1px or less, zero opacity, zero width or height with `overflow:hidden`, an
off-screen position, a transparent colour, or a text colour that matches the nearest
known background (default white). Hidden text goes to `hidden`, never to `visible`.
Inline elements join their neighbours without a space, as a browser renders them,
so `ver<span style="font-size:0">x</span>ify` reads `verify`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from lxml import etree

logger = logging.getLogger(__name__)

_NOT_TEXT = frozenset(
    ("script", "style", "head", "title", "noscript", "template", "xml", "svg", "object")
)
_BLOCK = frozenset(
    (
        "address", "article", "aside", "blockquote", "body", "br", "caption", "center",
        "dd", "details", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer",
        "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "html", "li", "main",
        "nav", "ol", "option", "p", "pre", "section", "summary", "table", "tbody", "td",
        "tfoot", "th", "thead", "tr", "ul",
    )
)  # fmt: skip
_LINK_TAGS = {"a": "href", "area": "href", "form": "action"}
_MAX_ELEMENTS = 50_000
_MAX_CSS_CHARS = 200_000
_MAX_RULES = 500

_TAG = re.compile(r"<[^<>]*>")
_NOT_TEXT_BLOCK = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_NUMBER = re.compile(r"(-?[\d.]+)\s*([a-z%]*)")
_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_CSS_AT_RULE = re.compile(r"@[\w-]+[^{;]*([{;])")
_CSS_BRACE = re.compile(r"[{}]")
_SIMPLE_SELECTOR = re.compile(r"([a-z][a-z0-9]*)?((?:[.#][\w-]+)*)", re.IGNORECASE)
_HEX_COLOR = re.compile(r"#([0-9a-f]{3}|[0-9a-f]{6})\b", re.IGNORECASE)
_RGB_COLOR = re.compile(
    r"rgba?\(\s*([\d.]+)%?\s*,\s*([\d.]+)%?\s*,\s*([\d.]+)%?\s*(?:,\s*([\d.]+))?"
)
_NAMED_COLORS = {
    "white": (255, 255, 255), "black": (0, 0, 0), "red": (255, 0, 0), "green": (0, 128, 0),
    "blue": (0, 0, 255), "yellow": (255, 255, 0), "gray": (128, 128, 128),
    "grey": (128, 128, 128), "silver": (192, 192, 192), "navy": (0, 0, 128),
    "snow": (255, 250, 250), "ivory": (255, 255, 240), "whitesmoke": (245, 245, 245),
}  # fmt: skip
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_LINK_BLUE = (0, 0, 238)
_TRANSPARENT = "transparent"


@dataclass(frozen=True)
class HtmlViews:
    visible: str
    hidden: str
    links: tuple[tuple[str, str], ...]  # (href, anchor text)
    image_count: int
    linked_image_count: int
    truncated: bool = False  # the document had more elements than were walked


@dataclass(frozen=True)
class _Rule:
    tag: str
    classes: frozenset[str]
    id_: str


@dataclass
class _State:
    hidden: bool = False
    skip: bool = False
    color: tuple | str | None = _BLACK
    background: tuple | None = _WHITE  # None: an image or unknown
    link: int = -1  # index into links while inside an anchor
    camouflaged: bool = False  # this element's own text is drawn in its background colour


def html_to_views(html: str) -> HtmlViews:
    """Visible text, hidden text, links and image counts of one HTML document.

    Never raises: a document lxml cannot read falls back to its text with tags
    stripped (all visible, no links).
    """
    parser = _parser()
    try:
        root = etree.fromstring(html.encode("utf-8", "replace"), parser)
    except (etree.LxmlError, ValueError):
        root = None
    if root is None:
        return _stripped(html)
    try:
        views = _Walk(root).views()
    except (RecursionError, ValueError, TypeError) as error:
        logger.debug("html walk failed (%s); using stripped text", type(error).__name__)
        return _stripped(html)
    if any(error.level_name == "FATAL" for error in parser.error_log):
        # libxml2 stops at its nesting limit: what it read, plus the text it dropped
        fallback = _stripped(html)
        return HtmlViews(fallback.visible, views.hidden, views.links, views.image_count,
                         views.linked_image_count, truncated=True)  # fmt: skip
    return views


def _stripped(html: str) -> HtmlViews:
    text = _NOT_TEXT_BLOCK.sub(" ", html[: _MAX_CSS_CHARS * 5])
    return HtmlViews(" ".join(_TAG.sub(" ", text).split()), "", (), 0, 0)


def _parser() -> etree.HTMLParser:
    # one parser per call: lxml parsers must not be shared between threads
    return etree.HTMLParser(
        encoding="utf-8",
        recover=True,
        remove_comments=True,
        remove_pis=True,
        no_network=True,
        huge_tree=True,  # nesting up to libxml2's hard limit instead of 256
    )


class _Walk:
    def __init__(self, root) -> None:
        self.root = root
        self.rules = _hiding_rules(root)
        self.visible: list[str] = []
        self.hidden: list[str] = []
        self.links: list[tuple[str, list[str]]] = []
        self.images = 0
        self.linked_images = 0
        self.last_hidden = False

    def views(self) -> HtmlViews:
        stack = [_State()]
        truncated = False
        elements = 0
        for event, element in etree.iterwalk(self.root, events=("start", "end")):
            tag = element.tag.lower() if isinstance(element.tag, str) else ""
            if event == "start":
                elements += 1
                if elements > _MAX_ELEMENTS:
                    truncated = True
                    break
                state = self._enter(element, tag, stack[-1])
                stack.append(state)
                if element.text:
                    self._emit(element.text, state)
            else:
                stack.pop()
                if tag in _BLOCK:
                    self._emit(" ", stack[-1])
                if element.tail:
                    self._emit(element.tail, stack[-1])
        return HtmlViews(
            visible=" ".join("".join(self.visible).split()),
            hidden=" ".join("".join(self.hidden).split()),
            links=tuple((href, " ".join("".join(text).split())) for href, text in self.links),
            image_count=self.images,
            linked_image_count=self.linked_images,
            truncated=truncated,
        )

    def _enter(self, element, tag: str, parent: _State) -> _State:
        state = _State(parent.hidden, parent.skip, parent.color, parent.background, parent.link)
        if tag in _BLOCK:
            self._emit(" ", parent)
        if tag in _NOT_TEXT:
            state.skip = True
        if state.skip:
            return state

        declarations = _declarations(element.get("style", ""))
        self._paint(element, tag, declarations, state)
        if not state.hidden and self._hides(element, tag, declarations):
            state.hidden = True
        state.camouflaged = _camouflaged(state)

        attribute = _LINK_TAGS.get(tag)
        if attribute and element.get(attribute):
            self.links.append((element.get(attribute), []))
            state.link = len(self.links) - 1
        if tag == "img" and not state.hidden and not _is_pixel(element, declarations):
            self.images += 1
            self.linked_images += state.link >= 0
        return state

    def _paint(self, element, tag: str, declarations: dict[str, str], state: _State) -> None:
        """Update the text colour and background the element's text is drawn with."""
        if tag == "a":
            state.color = _LINK_BLUE
        color = declarations.get("color") or (element.get("color") if tag == "font" else None)
        if color:
            state.color = _color(color)
        background = declarations.get("background-color") or declarations.get("background")
        if "background-image" in declarations or element.get("background"):
            state.background = None
        if background:
            state.background = None if "url(" in background else _color(background)
        elif element.get("bgcolor"):
            state.background = _color(element.get("bgcolor"))

    def _hides(self, element, tag: str, declarations: dict[str, str]) -> bool:
        if element.get("hidden") is not None or _hides(declarations):
            return True
        return any(_matches(rule, element, tag) for rule in self.rules)

    def _emit(self, text: str, state: _State) -> None:
        if state.skip:
            return
        if state.hidden or state.camouflaged:
            if not self.last_hidden:
                self.hidden.append(" ")
            self.last_hidden = True
            self.hidden.append(text)
            return
        self.last_hidden = False
        self.visible.append(text)
        if state.link >= 0:
            self.links[state.link][1].append(text)


def _camouflaged(state: _State) -> bool:
    """Text drawn in a transparent colour or in (nearly) its background colour."""
    if state.color == _TRANSPARENT:
        return True
    if isinstance(state.color, tuple) and isinstance(state.background, tuple):
        return sum(abs(a - b) for a, b in zip(state.color, state.background, strict=True)) <= 30
    return False


def _declarations(style: str) -> dict[str, str]:
    found = {}
    for declaration in style[:4000].split(";"):
        name, _, value = declaration.partition(":")
        if value:
            found[name.strip().lower()] = value.replace("!important", "").strip().lower()
    return found


def _length(value: str) -> tuple[float, str] | None:
    match = _NUMBER.match(value)
    if not match:
        return None
    try:
        return float(match.group(1)), match.group(2)
    except ValueError:
        return None


def _hides(declarations: dict[str, str]) -> bool:
    """Whether these CSS declarations make an element's text unreadable."""
    if declarations.get("display") == "none":
        return True
    if declarations.get("visibility") in ("hidden", "collapse"):
        return True
    size = _length(declarations.get("font-size", ""))
    if size is not None and (size[0] <= 0 or (size[1] in ("px", "pt") and size[0] <= 1)):
        return True
    opacity = _length(declarations.get("opacity", ""))
    if opacity is not None and opacity[0] <= 0.05:
        return True
    if declarations.get("overflow") == "hidden":
        for name in ("height", "max-height", "width", "max-width"):
            extent = _length(declarations.get(name, ""))
            if extent is not None and extent[0] <= 0:
                return True
    for name in ("text-indent", "left", "top", "margin-left"):
        offset = _length(declarations.get(name, ""))
        if offset is not None and offset[0] <= -500:
            return True
    return False


def _color(value: str) -> tuple | str | None:
    value = value.strip().lower()
    if value.startswith(_TRANSPARENT):
        return _TRANSPARENT
    match = _HEX_COLOR.search(value)
    if match:
        digits = match.group(1)
        if len(digits) == 3:
            digits = "".join(c * 2 for c in digits)
        return tuple(int(digits[i : i + 2], 16) for i in (0, 2, 4))
    match = _RGB_COLOR.search(value)
    if match:
        if match.group(4) is not None and float(match.group(4)) <= 0.05:
            return _TRANSPARENT
        return tuple(min(255, int(float(match.group(i)))) for i in (1, 2, 3))
    first = value.split()[0] if value.split() else ""
    return _NAMED_COLORS.get(first)


def _is_pixel(element, declarations: dict[str, str]) -> bool:
    """A 0x0 or 1x1 image: a tracking pixel, not something a reader sees."""
    for name in ("width", "height"):
        size = _length(element.get(name, "") or declarations.get(name, ""))
        if size is not None and size[0] <= 1:
            return True
    return False


def _hiding_rules(root) -> tuple[_Rule, ...]:
    css = "".join(style.text or "" for style in root.iter("style"))[:_MAX_CSS_CHARS]
    if not css:
        return ()
    css = _strip_at_rules(_CSS_COMMENT.sub("", css))
    rules = []
    for chunk in css.split("}"):
        selectors, brace, body = chunk.partition("{")
        if len(rules) >= _MAX_RULES:
            break
        if not brace or not _hides(_declarations(body)):
            continue
        for selector in selectors.split(","):
            rule = _rule(selector.strip())
            if rule is not None:
                rules.append(rule)
    return tuple(rules)


def _strip_at_rules(css: str) -> str:
    """CSS with every @-rule removed (their blocks are conditional or not rules)."""
    kept = []
    position = 0
    while True:
        match = _CSS_AT_RULE.search(css, position)
        if match is None:
            kept.append(css[position:])
            return "".join(kept)
        kept.append(css[position : match.start()])
        position = match.end()
        if match.group(1) == ";":
            continue
        depth = 1
        for brace in _CSS_BRACE.finditer(css, position):
            depth += 1 if brace.group(0) == "{" else -1
            if depth == 0:
                position = brace.end()
                break
        else:
            return "".join(kept)


def _rule(selector: str) -> _Rule | None:
    match = _SIMPLE_SELECTOR.fullmatch(selector)
    if not selector or match is None:
        return None
    tag, rest = (match.group(1) or "").lower(), match.group(2) or ""
    parts = re.findall(r"([.#])([\w-]+)", rest)
    ids = [name for kind, name in parts if kind == "#"]
    return _Rule(tag, frozenset(name for kind, name in parts if kind == "."), ids[0] if ids else "")


def _matches(rule: _Rule, element, tag: str) -> bool:
    if rule.tag and rule.tag != tag:
        return False
    if rule.id_ and element.get("id") != rule.id_:
        return False
    return not rule.classes or rule.classes.issubset(element.get("class", "").split())
