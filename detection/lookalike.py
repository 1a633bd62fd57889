"""Lookalike domains: a registered domain made to pass for one the organisation trusts.

Contract: `find_lookalike(candidate, protected, host="") -> Lookalike | None` compares
one registered domain (ASCII or punycode, as `Url.registered_domain` gives it) with the
directory's registered domains and returns the strongest imitation found, or None.
A candidate that is itself protected is never a lookalike. Never raises.

Both sides are reduced to a *skeleton* before comparing: accents stripped, characters
that Unicode lists as confusable with a Latin letter replaced by it (the
`confusable-homoglyphs` tables: Cyrillic "а" becomes "a"), and the ASCII look-alikes
"0"/"o", "1"/"l", "rn"/"m", "vv"/"w" folded. The techniques are named in `TECHNIQUES`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import idna
import tldextract
from confusable_homoglyphs import confusables
from rapidfuzz.distance import DamerauLevenshtein

TECHNIQUES = (
    "homoglyph",  # characters from another script that look Latin: Cyrillic "а" for "a"
    "accented",  # accents added to the protected name: "exämple"
    "ascii_swap",  # ASCII look-alikes: "0" for "o", "1" for "l", "rn" for "m", "vv" for "w"
    "typo",  # one edit (two for long names): insert, delete, substitute, transpose
    "added_word",  # the protected name plus a word: "example-secure", "exampleinvoice"
    "subdomain",  # the protected domain written as labels of another: example.com.evil.net
    "tld_swap",  # the same name under another public suffix: example.co instead of .com
)
SCORES = {
    "homoglyph": 0.95,
    "ascii_swap": 0.9,
    "accented": 0.85,
    "subdomain": 0.8,
    "typo": 0.8,  # one edit; two edits score TWO_EDIT_SCORE
    "added_word": 0.75,
    "tld_swap": 0.7,
}
LURE_WORDS = frozenset(
    (
        "secure", "security", "login", "signin", "verify", "verification", "account", "accounts",
        "invoice", "invoices", "billing", "bill", "pay", "payment", "payments", "support",
        "help", "helpdesk", "mail", "webmail", "portal", "online", "service", "services",
        "team", "hr", "it", "docs", "share", "files", "office", "cloud", "web", "auth", "sso",
        "update", "access", "group", "inc", "corp", "llc", "ltd", "global", "finance", "admin",
    )
)  # fmt: skip
TWO_EDIT_SCORE = 0.65
MIN_TYPO_LENGTH = 5  # shorter names are a typo away from too many real domains
MIN_EMBEDDED_LENGTH = 5  # shorter names appear inside too many unrelated names
_ASCII_SWAPS = (("rn", "m"), ("vv", "w"), ("0", "o"), ("1", "l"))
_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


@dataclass(frozen=True)
class Lookalike:
    """One imitation: `candidate` (ASCII registered domain) imitates `target`."""

    candidate: str
    target: str
    technique: str
    score: float
    edits: int = 0  # edit distance between the skeletons, for "typo"
    host: str = ""  # the full host, for "subdomain"

    @property
    def shown(self) -> str:
        """The candidate as a reader sees it, with its punycode form when they differ."""
        unicode = to_unicode(self.candidate)
        return unicode if unicode == self.candidate else f"{unicode} ({self.candidate})"

    def describe(self, kind: str = "") -> str:
        """One phrase for a reason; `kind` ("own domain", "vendor", ...) names the target."""
        target = f"{kind} {self.target}" if kind else self.target
        if self.technique == "subdomain":
            return f"{self.host} (registered {self.candidate}) shows {target} as a subdomain"
        detail = f", {self.edits} edit{'s' if self.edits > 1 else ''}" if self.edits else ""
        return f"{self.shown} imitates {target} ({self.technique.replace('_', ' ')}{detail})"


def find_lookalike(candidate: str, protected: Iterable[str], host: str = "") -> Lookalike | None:
    """The strongest imitation of any `protected` domain by `candidate`, or None.

    `host` (optional) is the full host the candidate came from, so that a protected
    domain written as its subdomain labels is caught too.
    """
    protected = tuple(protected)
    candidate = candidate.lower()
    if not candidate or candidate in protected:
        return None

    found = [_compare(candidate, target) for target in protected]
    if host:
        found += [_as_subdomain(candidate, host.lower(), target) for target in protected]
    found = [item for item in found if item is not None]
    suffix = _split(candidate)[1]
    return max(found, key=lambda item: (item.score, _split(item.target)[1] == suffix), default=None)


def to_unicode(domain: str) -> str:
    """`domain` with its punycode labels decoded (unchanged when they do not decode)."""
    if "xn--" not in domain:
        return domain
    try:
        return idna.decode(domain)
    except (idna.IDNAError, UnicodeError, ValueError):
        return domain


def skeleton(text: str) -> str:
    """`text` as the Latin letters it looks like: see the module docstring."""
    folded = "".join(_latin_char(char) for char in unicodedata.normalize("NFC", text.lower()))
    for written, looks_like in _ASCII_SWAPS:
        folded = folded.replace(written, looks_like)
    return folded


# comparisons
def _compare(candidate: str, target: str) -> Lookalike | None:
    label, suffix = _split(candidate)
    target_label, target_suffix = _split(target)
    if not label or not target_label:
        return None
    unicode_label = to_unicode(label)
    shape, target_shape = skeleton(unicode_label), skeleton(target_label)

    if shape == target_shape and unicode_label != target_label:
        technique = _disguise(unicode_label)
        return Lookalike(candidate, target, technique, SCORES[technique])
    if label == target_label and suffix != target_suffix:
        return Lookalike(candidate, target, "tld_swap", SCORES["tld_swap"])
    edits = _typo_edits(shape, target_shape)
    if edits:
        score = SCORES["typo"] if edits == 1 else TWO_EDIT_SCORE
        return Lookalike(candidate, target, "typo", score, edits)
    if _adds_word(shape, target_shape):
        return Lookalike(candidate, target, "added_word", SCORES["added_word"])
    return None


def _as_subdomain(candidate: str, host: str, target: str) -> Lookalike | None:
    """example.com.evil.net or example-com.evil.net: the target shown inside the host."""
    prefix = host[: -len(candidate)] if host.endswith(candidate) else ""
    if not prefix:
        return None
    labels = prefix.rstrip(".").replace("-", ".")
    if f".{target}." in f".{labels}.":
        return Lookalike(candidate, target, "subdomain", SCORES["subdomain"], host=host)
    return None


def _disguise(unicode_label: str) -> str:
    if unicode_label.isascii():
        return "ascii_swap"
    stripped = "".join(
        c for c in unicodedata.normalize("NFKD", unicode_label) if not unicodedata.combining(c)
    )
    return "accented" if stripped.isascii() else "homoglyph"


def _typo_edits(shape: str, target_shape: str) -> int:
    """1 or 2 when the skeletons are that many edits apart (and names long enough)."""
    if len(target_shape) < MIN_TYPO_LENGTH:
        return 0
    limit = 1 if len(target_shape) < 9 else 2
    edits = DamerauLevenshtein.distance(shape, target_shape, score_cutoff=limit)
    return edits if 0 < edits <= limit else 0


def _adds_word(shape: str, target_shape: str) -> bool:
    """The target name as one hyphenated token, or glued to a known lure word; a short
    target name only beside lure words ("abc-secure", not "abc-news")."""
    if shape == target_shape:
        return False
    tokens = shape.split("-")
    if target_shape in tokens:
        others = [token for token in tokens if token != target_shape]
        return len(target_shape) >= MIN_EMBEDDED_LENGTH or all(t in LURE_WORDS for t in others)
    if len(target_shape) < MIN_EMBEDDED_LENGTH:
        return False
    glued = shape.replace("-", "")
    for rest in (glued.removeprefix(target_shape), glued.removesuffix(target_shape)):
        if rest != glued and rest in LURE_WORDS:
            return True
    return False


# characters
@lru_cache(maxsize=4096)
def _latin_char(char: str) -> str:
    """The ASCII letter `char` looks like, or `char` itself when it looks like none."""
    if char.isascii():
        return char
    stripped = "".join(
        c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c)
    )
    if stripped and stripped.isascii():
        return stripped.lower()
    found = confusables.is_confusable(char, preferred_aliases=["latin"]) or []
    for entry in found:
        for glyph in entry["homoglyphs"]:
            if glyph["c"].isascii() and glyph["c"].isalnum():
                return glyph["c"].lower()
    return char


@lru_cache(maxsize=4096)
def _split(domain: str) -> tuple[str, str]:
    """(name label, public suffix) of a registered domain."""
    parts = _EXTRACT(domain)
    return parts.domain, parts.suffix
