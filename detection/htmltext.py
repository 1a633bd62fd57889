"""HTML to the text a reader sees, and the text hidden from them.

Contract: `html_to_views(html: str) -> HtmlViews`; never raises. lxml's HTML parser
(libxml2, recovering from any damage) builds the tree; this module walks it once and
decides what a mail client would show.

An element is hidden when its inline style, its `hidden` attribute or a simple rule
in a `<style>` block (`.cls`, `#id`, `tag`, `tag.cls`; rules inside `@media` are
conditional and ignored) gives it `display:none`, `visibility:hidden`, a font size
of 1px or less (0.1em, 10%), zero opacity, a scale of zero, a clip to nothing, a
width or height of 1px or less with `overflow:hidden`, an off-screen position, a
transparent colour, or a text colour that matches its background. CSS comments are
removed before any of this is read. Hidden text goes to `hidden`, never to `visible`.
Inline elements join their neighbours without a space, as a browser renders them,
so `ver<span style="font-size:0">x</span>ify` reads `verify`.

Colour camouflage is only called when it is certain: the text colour must be set
explicitly (inline, a `<font color>`, a simple `<style>` rule, or a link's blue), and
the background is that of the nearest element that paints one (inline, `bgcolor` or a
simple rule), or the page's white when nothing does. A `<style>` rule this module
cannot match to elements (`div p`, `*`, `:root`) that sets a colour or a background
makes that property unknown wherever an element does not set it itself, so a
stylesheet's dark page never moves the body's light text to `hidden`.
"""

from __future__ import annotations

import colorsys
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType

import webcolors
from lxml import etree

from detection.urls import MAX_ANCHOR_CHARS

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
# inline styles and colour values up to this long are read once per distinct string:
# newsletters repeat the same few on every element
_MAX_CACHED_CHARS = 512
_CACHED_STYLES = 4096

_TAG = re.compile(r"<[^<>]*>")
_UNCLOSED_TAG = re.compile(r"<[/!?a-zA-Z][^<>]*\Z")
_NOT_TEXT_BLOCK = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_NUMBER = re.compile(r"([-+]?[\d.]+)\s*([a-z%]*)")
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)", re.DOTALL)  # an unclosed one runs to the end
_IMPORTANT = re.compile(r"!\s*important\b")
_CSS_AT_RULE = re.compile(r"@[\w-]+[^{;]*([{;])")
_CSS_BRACE = re.compile(r"[{}]")
_SIMPLE_SELECTOR = re.compile(r"([a-z][a-z0-9]*)?((?:[.#][\w-]+)*)", re.IGNORECASE)
_HEX_COLOR = re.compile(r"#([0-9a-f]{3,8})\b", re.IGNORECASE)
_COLOR_FUNCTION = re.compile(r"\b(rgba?|hsla?)\(([^()]{0,200})\)")
_COLOR_ARGUMENT = re.compile(r"[^\s,/]+")
_HUE_UNITS = {"": 1 / 360, "deg": 1 / 360, "grad": 1 / 400, "rad": 1 / math.tau, "turn": 1.0}
_CLIP_RECT = re.compile(r"rect\(([^()]*)\)")
_CLIP_PATH_EMPTY = re.compile(r"inset\(\s*(?:50|100)%|circle\(\s*0|ellipse\(\s*0")
_SCALE = re.compile(r"\bscale(x|y|3d)?\(([^()]*)\)")
_KEEPS_PARENT = frozenset(("inherit", "currentcolor", "unset", "revert"))
_NO_BACKGROUND = frozenset(("none", "initial", "unset", "revert"))
_INTERACTIVE = re.compile(r":(?:hover|active|focus)")  # rules that apply only while used
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


@dataclass(frozen=True)
class _PaintRule:
    rule: _Rule
    color: str | None  # the declared `color`, if the rule sets one
    background: str | None  # the declared background, if the rule sets one


@dataclass(slots=True)
class _State:
    hidden: bool = False
    skip: bool = False
    color: tuple | str | None = _BLACK  # None: unknown
    background: tuple | None = _WHITE  # None: an image, a blend or unknown
    link: int = -1  # index into links while inside an anchor
    camouflaged: bool = False  # this element's own text is drawn in its background colour
    color_set: bool = False  # the colour was set explicitly, not the page default


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
    """The document's text with tags stripped, from its first `_MAX_CSS_CHARS * 5`
    characters; a tag the cut left open is dropped with the rest."""
    text = _NOT_TEXT_BLOCK.sub(" ", html[: _MAX_CSS_CHARS * 5])
    text = _UNCLOSED_TAG.sub("", _TAG.sub(" ", text))
    return HtmlViews(" ".join(text.split()), "", (), 0, 0)


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
        sheet = _style_sheet(root)
        rules, paint_rules, self.unknown_color, self.unknown_background = sheet
        self.rules = _RuleIndex(rules, lambda rule: rule)
        self.paint_rules = _RuleIndex(paint_rules, lambda paint: paint.rule)
        self.visible: list[str] = []
        self.hidden: list[str] = []
        self.links: list[tuple[str, list[str]]] = []
        self.link_chars: list[int] = []  # anchor text kept so far, per link
        self.images = 0
        self.linked_images = 0
        self.last_hidden = False

    def views(self) -> HtmlViews:
        stack = [_State(background=None if self.unknown_background else _WHITE)]
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
        state = _State(
            parent.hidden,
            parent.skip,
            None if self.unknown_color else parent.color,
            None if self.unknown_background else parent.background,
            parent.link,
            color_set=parent.color_set and not self.unknown_color,
        )
        if tag in _BLOCK:
            self._emit(" ", parent)
        if tag in _NOT_TEXT:
            state.skip = True
        if state.skip:
            return state

        declarations, style_hides = _inline_style(element.get("style", ""))
        self._paint(element, tag, declarations, state)
        if not state.hidden and (style_hides or self._hides(element, tag)):
            state.hidden = True
        state.camouflaged = _camouflaged(state)

        attribute = _LINK_TAGS.get(tag)
        if attribute and element.get(attribute):
            self.links.append((element.get(attribute), []))
            self.link_chars.append(0)
            state.link = len(self.links) - 1
        if tag == "img" and not state.hidden and not _is_pixel(element, declarations):
            self.images += 1
            self.linked_images += state.link >= 0
        return state

    def _paint(self, element, tag: str, declarations: Mapping[str, str], state: _State) -> None:
        """Update the text colour and background the element's text is drawn with:
        the browser's link blue, then simple `<style>` rules, then attributes and the
        inline style (each later one wins)."""
        if tag == "a":
            state.color, state.color_set = _LINK_BLUE, True
        color, background = self._sheet_paint(element, tag)
        if tag == "font" and element.get("color"):
            color = element.get("color")
        if element.get("bgcolor"):
            background = element.get("bgcolor")
        if element.get("background"):
            background = "url()"
        color = declarations.get("color", color)
        background = _inline_background(declarations, background)

        if color and color not in _KEEPS_PARENT:
            state.color, state.color_set = _color(color), True
        if background:
            painted = _background(background)
            if painted != _TRANSPARENT:  # a transparent background shows its parent's
                state.background = painted

    def _sheet_paint(self, element, tag: str) -> tuple[str | None, str | None]:
        """The colour and background simple `<style>` rules give this element; "unknown"
        where two matching rules disagree."""
        colors = set()
        backgrounds = set()
        for paint in self.paint_rules.matching(element, tag):
            if _matches(paint.rule, element, tag):
                if paint.color is not None:
                    colors.add(paint.color)
                if paint.background is not None:
                    backgrounds.add(paint.background)
        color = colors.pop() if len(colors) == 1 else ("unknown" if colors else None)
        background = (
            backgrounds.pop() if len(backgrounds) == 1 else ("url()" if backgrounds else None)
        )
        return color, background

    def _hides(self, element, tag: str) -> bool:
        """Whether the `hidden` attribute or a simple `<style>` rule hides the element
        (its inline style is read by `_inline_style`)."""
        if element.get("hidden") is not None:
            return True
        return any(_matches(rule, element, tag) for rule in self.rules.matching(element, tag))

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
        if state.link >= 0 and self.link_chars[state.link] < MAX_ANCHOR_CHARS:
            self.links[state.link][1].append(text[:MAX_ANCHOR_CHARS])
            self.link_chars[state.link] += len(text)


def _camouflaged(state: _State) -> bool:
    """Text explicitly drawn in a transparent colour or in (nearly) its known
    background colour."""
    if not state.color_set:
        return False
    if state.color == _TRANSPARENT:
        return True
    if isinstance(state.color, tuple) and isinstance(state.background, tuple):
        return sum(abs(a - b) for a, b in zip(state.color, state.background, strict=True)) <= 30
    return False


def _cached_when_short(read):
    """`read` of a string, remembered for each distinct string of at most
    `_MAX_CACHED_CHARS` characters (its results must not be mutated)."""
    cached = lru_cache(maxsize=_CACHED_STYLES)(read)

    def lookup(value: str):
        return cached(value) if len(value) <= _MAX_CACHED_CHARS else read(value)

    return lookup


@_cached_when_short
def _inline_style(style: str) -> tuple[Mapping[str, str], bool]:
    """An inline style's declarations (read-only) and whether they hide the element."""
    declarations = _declarations(style)
    return MappingProxyType(declarations), _hides(declarations)


def _declarations(style: str) -> dict[str, str]:
    """Every declaration of a style, as a browser resolves them: the later of two for
    one property wins, unless only the earlier is `!important`. All of it is read:
    padding a style must not push a hiding declaration out of sight (the work stays
    linear in the document's size)."""
    found = {}
    important = set()
    for declaration in _CSS_COMMENT.sub("", style).split(";"):
        name, _, value = declaration.partition(":")
        if not value:
            continue
        name = name.strip().lower()
        value, marked = _IMPORTANT.subn("", value.lower())
        if marked:
            important.add(name)
        elif name in important:
            continue
        found[name] = value.strip()
    return found


def _inline_background(declarations: Mapping[str, str], background: str | None) -> str | None:
    """The background an inline style paints, else `background` as it was."""
    if "background-image" in declarations and declarations["background-image"] != "none":
        return "url()"
    return declarations.get("background-color") or declarations.get("background") or background


@_cached_when_short
def _background(value: str) -> tuple | str | None:
    """A background declaration's colour; None for an image, a gradient or a blend."""
    if "url(" in value or "gradient(" in value:
        return None
    rgba = _rgba(value)
    if rgba == _TRANSPARENT or (rgba is None and value.strip() in _NO_BACKGROUND):
        return _TRANSPARENT
    if rgba is None or rgba[3] < 0.95:
        return None
    return rgba[:3]


def _length(value: str) -> tuple[float, str] | None:
    match = _NUMBER.match(value)
    if not match:
        return None
    try:
        return float(match.group(1)), match.group(2)
    except ValueError:
        return None


def _hides(declarations: Mapping[str, str]) -> bool:
    """Whether these CSS declarations make an element's text unreadable."""
    if not declarations:
        return False
    if declarations.get("display") == "none":
        return True
    if declarations.get("visibility") in ("hidden", "collapse"):
        return True
    size = _length(declarations.get("font-size", "")) or _font_shorthand_size(
        declarations.get("font", "")
    )
    if size is not None and _tiny(size, relative=True):
        return True
    opacity = _length(declarations.get("opacity", ""))
    if opacity is not None and opacity[0] <= (5 if opacity[1] == "%" else 0.05):
        return True
    if declarations.get("overflow") in ("hidden", "clip"):
        for name in ("height", "max-height", "width", "max-width"):
            extent = _length(declarations.get(name, ""))
            if extent is not None and _tiny(extent, relative=False):
                return True
    if _clipped_away(declarations) or _scaled_away(declarations):
        return True
    for name in ("text-indent", "left", "top", "margin-left"):
        offset = _length(declarations.get(name, ""))
        if offset is not None and offset[0] <= -500:
            return True
    return False


def _tiny(length: tuple[float, str], relative: bool) -> bool:
    """A CSS length of zero or at most 1px; with `relative`, also a font size of at
    most a tenth of its parent's (0.1em, 0.1rem, 10%)."""
    number, unit = length
    if number <= 0:
        return True
    if unit in ("px", "pt"):
        return number <= 1
    if relative and unit in ("em", "rem", "ex", "ch"):
        return number <= 0.1
    return relative and unit == "%" and number <= 10


def _font_shorthand_size(value: str) -> tuple[float, str] | None:
    """The size in a `font` shorthand (`font: 0/0 a`, `bold 1px Arial`), if any."""
    for token in value.split():
        size = _length(token.partition("/")[0])
        if size is not None and (size[1] or size[0] == 0) and not token[:1].isalpha():
            return size
    return None


def _clipped_away(declarations: dict[str, str]) -> bool:
    """`clip: rect(0,0,0,0)` (any rect of 1px or less) on a positioned element, or a
    clip-path that leaves nothing."""
    rect = _CLIP_RECT.search(declarations.get("clip", ""))
    if rect and declarations.get("position") in ("absolute", "fixed"):
        edges = [_length(edge) for edge in re.split(r"[\s,]+", rect.group(1).strip())]
        if len(edges) == 4 and all(edge is not None for edge in edges):
            top, right, bottom, left = (edge[0] for edge in edges)
            if bottom - top <= 1 or right - left <= 1:
                return True
    return bool(_CLIP_PATH_EMPTY.search(declarations.get("clip-path", "")))


def _scaled_away(declarations: dict[str, str]) -> bool:
    """A transform or `scale`/`zoom` that shrinks the element to nothing on an axis."""
    for match in _SCALE.finditer(declarations.get("transform", "")):
        factors = [_length(part) for part in re.split(r"[\s,]+", match.group(2).strip())]
        if match.group(1) in ("x", "y"):
            factors = factors[:1]
        elif match.group(1) == "3d":
            factors = factors[:2]
        if any(factor is not None and abs(factor[0]) <= 0.01 for factor in factors[:2]):
            return True
    for name in ("scale", "zoom"):
        factor = _length(declarations.get(name, ""))
        if factor is not None and factor[0] <= (1 if factor[1] == "%" else 0.01):
            return True
    return False


@_cached_when_short
def _color(value: str) -> tuple | str | None:
    """A text colour as (r, g, b), _TRANSPARENT, or None when it is not known."""
    rgba = _rgba(value)
    if rgba is None or rgba == _TRANSPARENT:
        return rgba
    return rgba[:3]


def _rgba(value: str) -> tuple | str | None:
    """A CSS colour (hex of 3, 4, 6 or 8 digits, rgb()/rgba()/hsl()/hsla() in comma or
    space syntax, or a CSS named colour) as (r, g, b, alpha); _TRANSPARENT when the
    alpha is at most 0.05; None when it is not a colour read here."""
    value = value.strip().lower()
    if value.startswith(_TRANSPARENT):
        return _TRANSPARENT
    match = _HEX_COLOR.search(value)
    if match and len(match.group(1)) in (3, 4, 6, 8):
        rgba = _hex(match.group(1))
    else:
        match = _COLOR_FUNCTION.search(value)
        rgba = _function_color(match.group(1), match.group(2)) if match else _named(value)
    if rgba is not None and rgba[3] <= 0.05:
        return _TRANSPARENT
    return rgba


def _hex(digits: str) -> tuple:
    if len(digits) <= 4:
        digits = "".join(c * 2 for c in digits)
    channels = [int(digits[i : i + 2], 16) for i in range(0, len(digits), 2)]
    alpha = channels[3] / 255 if len(channels) == 4 else 1.0
    return (*channels[:3], alpha)


def _function_color(name: str, arguments: str) -> tuple | None:
    """rgb()/hsl() and their alpha forms; None when an argument does not read."""
    parts = _COLOR_ARGUMENT.findall(arguments)
    if len(parts) not in (3, 4):
        return None
    values = [_length(part) for part in parts]
    if any(value is None for value in values):
        return None
    alpha = 1.0
    if len(values) == 4:
        number, unit = values[3]
        alpha = number / 100 if unit == "%" else number
    if name.startswith("rgb"):
        channels = [n * 2.55 if unit == "%" else n for n, unit in values[:3]]
    else:
        (hue, hue_unit), (saturation, _), (lightness, _) = values[:3]
        if hue_unit not in _HUE_UNITS:
            return None
        red, green, blue = colorsys.hls_to_rgb(
            (hue * _HUE_UNITS[hue_unit]) % 1.0,
            min(max(lightness / 100, 0.0), 1.0),
            min(max(saturation / 100, 0.0), 1.0),
        )
        channels = [red * 255, green * 255, blue * 255]
    return (*(min(255, max(0, round(c))) for c in channels), min(max(alpha, 0.0), 1.0))


def _named(value: str) -> tuple | None:
    first = value.split()[0] if value.split() else ""
    try:
        return (*webcolors.name_to_rgb(first), 1.0)
    except ValueError:
        return None


def _is_pixel(element, declarations: Mapping[str, str]) -> bool:
    """A 0x0 or 1x1 image: a tracking pixel, not something a reader sees."""
    for name in ("width", "height"):
        size = _length(element.get(name, "") or declarations.get(name, ""))
        if size is not None and size[0] <= 1:
            return True
    return False


def _style_sheet(root) -> tuple[tuple[_Rule, ...], tuple[_PaintRule, ...], bool, bool]:
    """From the document's `<style>` blocks: the simple rules that hide, the simple
    rules that set a colour or background, and whether a rule this module cannot
    match sets a colour (then a background) somewhere."""
    css = "".join(style.text or "" for style in root.iter("style"))[:_MAX_CSS_CHARS]
    if not css:
        return (), (), False, False
    css = _strip_at_rules(_CSS_COMMENT.sub("", css))
    rules: list[_Rule] = []
    paints: list[_PaintRule] = []
    unknown_color = unknown_background = False
    for chunk in css.split("}"):
        selectors, brace, body = chunk.partition("{")
        if len(rules) + len(paints) >= _MAX_RULES:
            break
        if not brace:
            continue
        declarations = _declarations(body)
        hides = _hides(declarations)
        color = declarations.get("color")
        background = _inline_background(declarations, None)
        for selector in selectors.split(","):
            if _INTERACTIVE.search(selector):
                continue
            rule = _rule(selector.strip())
            if rule is None:
                unknown_color = unknown_color or color is not None
                unknown_background = unknown_background or background is not None
                continue
            if hides:
                rules.append(rule)
            if color is not None or background is not None:
                paints.append(_PaintRule(rule, color, background))
    return tuple(rules), tuple(paints), unknown_color, unknown_background


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


class _RuleIndex:
    """Rules filed under the id, else a class, else the tag they need, so that each
    element is checked against the few rules that could match it, not all of them."""

    def __init__(self, items, rule_of) -> None:
        self.by_key: dict[tuple[str, str], list] = {}
        for item in items:
            rule = rule_of(item)
            if rule.id_:
                key = ("#", rule.id_)
            elif rule.classes:
                key = (".", min(rule.classes))
            else:
                key = ("", rule.tag)
            self.by_key.setdefault(key, []).append(item)

    def matching(self, element, tag: str) -> list:
        """The rules that may match `element` (each still to be checked)."""
        if not self.by_key:
            return []
        found = list(self.by_key.get(("", tag), ()))
        if element.get("id"):
            found += self.by_key.get(("#", element.get("id")), ())
        for name in set(element.get("class", "").split()):
            found += self.by_key.get((".", name), ())
        return found


def _matches(rule: _Rule, element, tag: str) -> bool:
    if rule.tag and rule.tag != tag:
        return False
    if rule.id_ and element.get("id") != rule.id_:
        return False
    return not rule.classes or rule.classes.issubset(element.get("class", "").split())
